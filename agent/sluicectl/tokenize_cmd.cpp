// sluicectl tokenize: the waypoint's prompt-token estimate, for operators to check by hand.
#include <iostream>
#include <iterator>
#include <memory>
#include <string>

#include "agent/sluicectl/commands.h"
#include "waypoint/tokenizer/encoding.h"

namespace sluice::ctl {

void add_tokenize_commands(CLI::App& app, Context& ctx) {
    namespace tk = sluice::waypoint::tokenizer;
    struct Options {
        std::string encoding = "o200k_base";
        std::string dir;
        bool count_only = false;
    };
    auto opts = std::make_shared<Options>();
    auto* cmd = app.add_subcommand(
        "tokenize", "Tokenize stdin as the waypoint does: token ids on one line, then the count");
    cmd->add_option("--encoding", opts->encoding, "cl100k_base or o200k_base")
        ->check(CLI::IsMember({"cl100k_base", "o200k_base"}))
        ->capture_default_str();
    cmd->add_option("--data-dir", opts->dir,
                    "Directory of <encoding>.tiktoken rank files (default: $SLUICE_TOKENIZER_DIR "
                    "or the build's)");
    cmd->add_flag("--count", opts->count_only, "Print only the count");
    cmd->callback([opts, &ctx] {
        auto name = tk::parseEncodingName(opts->encoding);
        auto encoding =
            tk::Encoding::load(*name, opts->dir.empty() ? tk::defaultTokenizerDir()
                                                        : std::filesystem::path(opts->dir));
        if (!encoding) {
            std::cerr << "sluicectl tokenize: " << tk::toString(encoding.error()) << "\n";
            ctx.exit_code = 1;
            return;
        }
        const std::string text{std::istreambuf_iterator<char>(std::cin), {}};
        const auto tokens = (*encoding)->encode(text);
        if (!opts->count_only) {
            std::string line;
            for (std::size_t i = 0; i < tokens.size(); ++i) {
                if (i)
                    line += ' ';
                line += std::to_string(tokens[i]);
            }
            std::cout << line << "\n";
        }
        std::cout << tokens.size() << "\n";
    });
}

}  // namespace sluice::ctl
