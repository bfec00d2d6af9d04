// Tokenizer unit tests: hand-checked splits and ids, plus exactness against the npm tiktoken
// package on a large generated corpus (the package is what the build fetched the ranks from).
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "common/process.h"
#include "waypoint/tokenizer/encoding.h"
#include "waypoint/tokenizer/pretokenize.h"
#include "waypoint/tokenizer/rank_table.h"
#include "waypoint/tokenizer/unicode_classes.h"

namespace tk = sluice::waypoint::tokenizer;

namespace {

std::shared_ptr<const tk::Encoding> load(tk::EncodingName name) {
    auto e = tk::Encoding::load(name, SLUICE_TEST_TOKENIZER_DIR);
    if (!e)
        throw std::runtime_error(std::string(tk::toString(e.error())));
    return *e;
}

std::vector<std::string> split(tk::Pattern p, std::string_view text) {
    std::vector<std::string> out;
    tk::splitPieces(p, text, [&](std::string_view piece) { out.emplace_back(piece); });
    return out;
}

void appendUtf8(std::string& s, char32_t cp) {
    if (cp < 0x80) {
        s += char(cp);
    } else if (cp < 0x800) {
        s += char(0xC0 | (cp >> 6));
        s += char(0x80 | (cp & 0x3F));
    } else if (cp < 0x10000) {
        s += char(0xE0 | (cp >> 12));
        s += char(0x80 | ((cp >> 6) & 0x3F));
        s += char(0x80 | (cp & 0x3F));
    } else {
        s += char(0xF0 | (cp >> 18));
        s += char(0x80 | ((cp >> 12) & 0x3F));
        s += char(0x80 | ((cp >> 6) & 0x3F));
        s += char(0x80 | (cp & 0x3F));
    }
}

// A deterministic corpus that exercises every alternative of both patterns.
std::vector<std::string> buildCorpus() {
    std::vector<std::string> docs;
    // Real code and prose: this repository's own sources and docs.
    for (const char* dir : {"waypoint", "common", "agent", "docs", "tests/testbed"}) {
        const auto root = std::filesystem::path(SLUICE_SOURCE_DIR) / dir;
        if (!std::filesystem::exists(root))
            continue;
        for (const auto& entry : std::filesystem::recursive_directory_iterator(root)) {
            if (!entry.is_regular_file() || entry.file_size() > 200'000)
                continue;
            std::ifstream in(entry.path());
            docs.emplace_back(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
        }
    }
    docs.push_back(
        "I'm sure they'll say it's fine, we'd've THOUGHT SO. DON'T, WON'T, 'S 'T 'RE 'VE 'M 'LL "
        "'D 'ſ 'Re 'vE can'tſ HTTPServer helloWorld getHTTPResponse ÉCOLE Ǆemal ǅemal");
    docs.push_back(
        "  leading\t\ttabs\n\n\n  \r\n\r\n   trailing   \n \u00a0\u3000x\u2028y\u0085z  ");
    docs.push_back("1234567890 12 345 6789 ١٢٣٤٥ ½ ⅓ Ⅻ 3.14159 1e-9 0xFFu 1,000,000");
    docs.push_back("e\u0301 a\u0308\u0301 !\u0301x \u0301\u0301 1\u0301 \u20dd\u20dd word\u0301s");
    // Emoji with ZWJ sequences, flags, skin tones and variation selectors (escaped: clang-format
    // does not measure these consistently).
    docs.push_back(
        "\U0001F600\U0001F603 \U0001F469\u200D\U0001F4BB "
        "\U0001F468\u200D\U0001F469\u200D\U0001F467\u200D\U0001F466 \U0001F1E9\U0001F1EA\U0001F1EF"
        "\U0001F1F5 \U0001F44D\U0001F3FD \u2764\uFE0F \u2708\uFE0E "
        "\U0001F3F3\uFE0F\u200D\U0001F308 a\U0001F600b \U0001F600123 ...\U0001F600!!");
    docs.push_back("日本語のテキストと漢字、カタカナ。中文：你好，世界！한국어 텍스트입니다.");
    docs.push_back("Русский текст, ελληνικά με τόνους, עברית, العربية مع التشكيل: مُحَمَّد");
    docs.push_back("हिन्दी पाठ, தமிழ், ภาษาไทย ไม่มีช่องว่าง, ཀཁག, ᠮᠣᠩᠭᠣᠯ");
    docs.push_back(std::string(5000, 'a'));
    docs.push_back(std::string(3001, '7') + " " + std::string(2000, ' ') + "x");
    docs.push_back(std::string(1000, '!') + "\n\n/" + std::string(500, '/') + "\r\n");
    docs.push_back("https://example.com/a/b?c=d&e=f#g /usr/bin/env //comment\n/*x*/ a//b ./x/");
    docs.push_back("{\"model\": \"gpt-4o\", \"messages\": [{\"role\": \"user\"}]}\n<|endoftext|>");

    std::mt19937 rng(20261126);
    auto pick = [&](std::initializer_list<std::pair<char32_t, char32_t>> ranges) {
        std::vector<std::pair<char32_t, char32_t>> r(ranges);
        const auto& [lo, hi] = r[rng() % r.size()];
        return char32_t(lo + rng() % (hi - lo + 1));
    };
    // Long random words and runs from many scripts, letters mixed with marks and digits.
    for (int d = 0; d < 300; ++d) {
        std::string s;
        const int len = 50 + int(rng() % 3000);
        for (int i = 0; i < len; ++i) {
            const int kind = int(rng() % 12);
            char32_t cp;
            switch (kind) {
                case 0:
                    cp = pick({{'a', 'z'}, {'A', 'Z'}});
                    break;
                case 1:
                    cp = pick({{0x4E00, 0x9FFF}, {0x3040, 0x30FF}, {0xAC00, 0xD7A3}});
                    break;
                case 2:
                    cp = pick({{0x1F300, 0x1F64F}, {0x1F900, 0x1F9FF}, {0x1F1E6, 0x1F1FF}});
                    break;
                case 3:
                    cp = pick({{' ', ' '},
                               {'\t', '\n'},
                               {'\r', '\r'},
                               {0xA0, 0xA0},
                               {0x2000, 0x200A},
                               {0x3000, 0x3000}});
                    break;
                case 4:
                    cp = pick({{'0', '9'}, {0x660, 0x669}, {0xBC, 0xBE}, {0x2160, 0x216F}});
                    break;
                case 5:
                    cp = pick({{0x300, 0x36F},
                               {0x900, 0x903},
                               {0x93E, 0x94D},
                               {0x200D, 0x200D},
                               {0xFE0F, 0xFE0F}});
                    break;
                case 6:
                    cp = pick({{'!', '/'},
                               {':', '@'},
                               {'[', '`'},
                               {'{', '~'},
                               {0x2010, 0x2027},
                               {0x3001, 0x3003}});
                    break;
                case 7:
                    cp = pick({{0x400, 0x4FF}, {0x370, 0x3FF}, {0x5D0, 0x5EA}, {0x620, 0x64A}});
                    break;
                case 8:
                    cp = pick({{0xC0, 0x24F}, {0x1E00, 0x1EFF}, {0x1C4, 0x1CC}, {0x2B0, 0x2FF}});
                    break;
                case 9:
                    cp = pick({{'\'', '\''}, {'s', 's'}, {'L', 'L'}, {0x17F, 0x17F}});
                    break;
                case 10:
                    cp = pick({{0x20, 0x7E}});
                    break;
                default:
                    cp = pick({{0xA0, 0xD7FF}, {0xF900, 0xFFFD}});
                    break;
            }
            appendUtf8(s, cp);
        }
        docs.push_back(std::move(s));
    }
    return docs;
}

}  // namespace

// Short tokens (≤ 8 bytes) live in packed 12-byte slots: every length 1..8 and the largest rank
// the slot holds come back as inserted; a rank beyond it is refused, not truncated.
TEST(RankTable, ShortAndLongTokensRoundTripAndRanksAreBounded) {
    tk::RankTable t;
    const std::string bytes = "abcdefghijklmnop";
    for (std::size_t n = 1; n <= bytes.size(); ++n)
        ASSERT_TRUE(t.insert(std::string_view(bytes).substr(0, n), tk::Rank(1000 + n)));
    ASSERT_TRUE(t.insert(std::string_view("\xff\x00zz", 4), (tk::Rank{1} << 28) - 1));
    EXPECT_FALSE(t.insert("toolarge", tk::Rank{1} << 28));
    EXPECT_FALSE(t.insert("abc", 7)) << "already present";
    for (std::size_t n = 1; n <= bytes.size(); ++n) {
        const auto r = t.find(std::string_view(bytes).substr(0, n));
        ASSERT_TRUE(r) << n;
        EXPECT_EQ(*r, tk::Rank(1000 + n));
        EXPECT_EQ(t.bytesOf(*r), bytes.substr(0, n));
    }
    EXPECT_EQ(t.find(std::string_view("\xff\x00zz", 4)), (tk::Rank{1} << 28) - 1);
    EXPECT_FALSE(t.find("toolarge"));
    EXPECT_FALSE(t.find("abcdefgX"));
    EXPECT_EQ(t.size(), bytes.size() + 1);
}

TEST(UnicodeClasses, KnownCodePoints) {
    EXPECT_EQ(tk::classOf('A'), tk::CharClass::kUpper);
    EXPECT_EQ(tk::classOf(0x01C5), tk::CharClass::kUpper);  // ǅ is Lt
    EXPECT_EQ(tk::classOf(0x00DF), tk::CharClass::kLower);
    EXPECT_EQ(tk::classOf(0x4E2D), tk::CharClass::kLetterOther);
    EXPECT_EQ(tk::classOf(0x02B0), tk::CharClass::kLetterOther);  // Lm
    EXPECT_EQ(tk::classOf(0x0301), tk::CharClass::kMark);
    EXPECT_EQ(tk::classOf(0x0663), tk::CharClass::kNumber);
    EXPECT_EQ(tk::classOf(0x3000), tk::CharClass::kSpace);
    EXPECT_EQ(tk::classOf(0x0085), tk::CharClass::kSpace);
    EXPECT_EQ(tk::classOf(0x001C), tk::CharClass::kOther);  // isspace() in C, not White_Space
    EXPECT_EQ(tk::classOf(0xFEFF), tk::CharClass::kOther);  // \s in JS, not White_Space
    EXPECT_EQ(tk::classOf(0x1F600), tk::CharClass::kOther);
}

TEST(Pretokenize, Cl100kAlternatives) {
    using V = std::vector<std::string>;
    EXPECT_EQ(split(tk::Pattern::kCl100k, "I'm here"), (V{"I", "'m", " here"}));
    EXPECT_EQ(split(tk::Pattern::kCl100k, "hello   world\n\n x"),
              (V{"hello", "  ", " world", "\n\n", " x"}));
    EXPECT_EQ(split(tk::Pattern::kCl100k, "12345 !!?\n\n"), (V{"123", "45", " !!?\n\n"}));
    EXPECT_EQ(split(tk::Pattern::kCl100k, "a  "), (V{"a", "  "}));
}

TEST(Pretokenize, O200kAlternatives) {
    using V = std::vector<std::string>;
    EXPECT_EQ(split(tk::Pattern::kO200k, "HTTPServer helloWorld"),
              (V{"HTTPServer", " hello", "World"}));
    EXPECT_EQ(split(tk::Pattern::kO200k, "DON'T they're"), (V{"DON'T", " they're"}));
    EXPECT_EQ(split(tk::Pattern::kO200k, "a/b//\n"), (V{"a", "/b", "//\n"}));
}

TEST(Encoding, KnownIds) {
    auto cl = load(tk::EncodingName::kCl100kBase);
    auto o2 = load(tk::EncodingName::kO200kBase);
    EXPECT_EQ(cl->encode("hello world"), (std::vector<tk::Rank>{15339, 1917}));
    EXPECT_EQ(o2->encode("hello world"), (std::vector<tk::Rank>{24912, 2375}));
    EXPECT_EQ(cl->count(""), 0u);
    const std::string text = "Ünïcödé 😀 round trip\n\t";
    EXPECT_EQ(o2->decode(o2->encode(text)), text);
    EXPECT_EQ(cl->decode(cl->encode(text)), text);
}

TEST(Encoding, InvalidUtf8IsCoveredByteForByte) {
    auto o2 = load(tk::EncodingName::kO200kBase);
    const std::string bad = "ok\xff\xfe\xc3(x\xe2\x82";
    EXPECT_EQ(o2->decode(o2->encode(bad)), bad);
    EXPECT_EQ(o2->count(bad), o2->encode(bad).size());
}

TEST(Encoding, MissingRankFileIsAnError) {
    auto e = tk::Encoding::load(tk::EncodingName::kCl100kBase, "/nonexistent-sluice-dir");
    ASSERT_FALSE(e);
    EXPECT_EQ(e.error(), tk::Error::RankFileMissing);
}

TEST(Encoding, ModelTable) {
    EXPECT_EQ(tk::encodingForModel("gpt-4o-mini", tk::EncodingName::kCl100kBase),
              tk::EncodingName::kO200kBase);
    EXPECT_EQ(tk::encodingForModel("gpt-4-turbo", tk::EncodingName::kO200kBase),
              tk::EncodingName::kCl100kBase);
    EXPECT_EQ(tk::encodingForModel("text-embedding-3-small", tk::EncodingName::kO200kBase),
              tk::EncodingName::kCl100kBase);
    EXPECT_EQ(tk::encodingForModel("llama-3", tk::EncodingName::kO200kBase),
              tk::EncodingName::kO200kBase);
}

class Exactness : public ::testing::TestWithParam<tk::EncodingName> {};

TEST_P(Exactness, SameIdsAsNpmTiktoken) {
    const auto corpus = buildCorpus();
    std::size_t bytes = 0;
    for (const auto& d : corpus)
        bytes += d.size();
    ASSERT_GT(bytes, 500'000u);

    const auto dir =
        std::filesystem::temp_directory_path() /
        ("sluice-tok-" + std::to_string(::getpid()) + "-" + std::to_string(int(GetParam())));
    std::filesystem::create_directories(dir);
    struct Cleanup {
        std::filesystem::path p;
        ~Cleanup() { std::filesystem::remove_all(p); }
    } cleanup{dir};
    { std::ofstream(dir / "corpus.json") << nlohmann::json(corpus).dump(); }
    const auto ref = sluice::run_process(
        {.argv = {"node", SLUICE_TEST_SOURCE_DIR "/tiktoken_reference.js",
                  SLUICE_TEST_TOKENIZER_DIR "/npm/node_modules/tiktoken",
                  std::string(tk::toString(GetParam())), (dir / "corpus.json").string()}},
        std::chrono::seconds(120));
    ASSERT_EQ(ref.exit_code, 0) << ref.err;
    const auto expected = nlohmann::json::parse(ref.out);
    ASSERT_EQ(expected.size(), corpus.size());

    auto enc = load(GetParam());
    std::size_t tokens = 0;
    int mismatches = 0;
    for (std::size_t i = 0; i < corpus.size() && mismatches < 5; ++i) {
        const auto want = expected[i].get<std::vector<tk::Rank>>();
        const auto got = enc->encode(corpus[i]);
        tokens += want.size();
        if (got != want) {
            ++mismatches;
            std::size_t at = 0;
            while (at < got.size() && at < want.size() && got[at] == want[at])
                ++at;
            ADD_FAILURE() << "document " << i << " differs at token " << at << " (ours "
                          << (at < got.size() ? int64_t(got[at]) : -1) << ", tiktoken "
                          << (at < want.size() ? int64_t(want[at]) : -1) << ") near \""
                          << enc->decode(std::span(want).subspan(
                                 at > 3 ? at - 3 : 0,
                                 std::min<std::size_t>(8, want.size() - (at > 3 ? at - 3 : 0))))
                          << "\"";
        }
        EXPECT_EQ(enc->count(corpus[i]), want.size());
    }
    EXPECT_EQ(mismatches, 0);
    RecordProperty("bytes", int(bytes));
    RecordProperty("tokens", int(tokens));
}

INSTANTIATE_TEST_SUITE_P(Encodings, Exactness,
                         ::testing::Values(tk::EncodingName::kCl100kBase,
                                           tk::EncodingName::kO200kBase),
                         [](const auto& info) { return std::string(tk::toString(info.param)); });
