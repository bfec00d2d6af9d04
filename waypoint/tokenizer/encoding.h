#pragma once

#include <array>
#include <cstdint>
#include <expected>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "waypoint/tokenizer/pretokenize.h"
#include "waypoint/tokenizer/rank_table.h"

namespace sluice::waypoint::tokenizer {

enum class EncodingName { kCl100kBase, kO200kBase };

enum class Error {
    UnknownEncoding,   // a name other than cl100k_base / o200k_base
    RankFileMissing,   // <dir>/<name>.tiktoken cannot be opened
    RankFileMalformed  // a line is not "<base64> <rank>", or a token repeats
};

std::string_view toString(EncodingName name);
std::string_view toString(Error error);
std::expected<EncodingName, Error> parseEncodingName(std::string_view name);

// Which encoding OpenAI's models use (tiktoken's model table, by prefix); `fallback` otherwise.
EncodingName encodingForModel(std::string_view model, EncodingName fallback);

// Where rank files are looked up when the caller names no directory: $SLUICE_TOKENIZER_DIR,
// else the directory the build fetched them into.
inline constexpr const char* kTokenizerDirEnv = "SLUICE_TOKENIZER_DIR";
std::filesystem::path defaultTokenizerDir();

// One byte-level BPE encoding, immutable after load, so one instance serves every thread.
// Special tokens (<|endoftext|>, …) are encoded as ordinary text, which is what an estimate of
// untrusted prompt text needs (tiktoken's encode_ordinary).
class Encoding {
  public:
    static std::expected<std::shared_ptr<const Encoding>, Error> load(
        EncodingName name, const std::filesystem::path& dir = defaultTokenizerDir());

    EncodingName name() const { return name_; }
    std::size_t vocabularySize() const { return ranks_.size(); }

    std::vector<Rank> encode(std::string_view text) const;
    std::size_t count(std::string_view text) const;
    // Concatenated bytes of `tokens`; unknown ids are skipped.
    std::string decode(std::span<const Rank> tokens) const;

  private:
    Encoding(EncodingName name, RankTable ranks, const std::array<Rank, 256>& byte_ranks);
    // Appends the tokens of one pre-tokenized piece.
    void encodePiece(std::string_view piece, std::vector<Rank>& out) const;

    EncodingName name_;
    Pattern pattern_;
    RankTable ranks_;
    std::array<Rank, 256> byte_ranks_;  // every single byte is a token in byte-level BPE
};

}  // namespace sluice::waypoint::tokenizer
