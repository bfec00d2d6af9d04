#pragma once

#include <cstddef>
#include <string_view>

namespace sluice::waypoint::tokenizer {

// The two pre-tokenization patterns (tiktoken's `pat_str`), implemented by hand over UTF-8 with
// the same leftmost-first, backtracking semantics the regex engine gives them:
//   cl100k: (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
//           ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+
//   o200k:  [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:…)?|
//           [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:…)?|
//           \p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
enum class Pattern { kCl100k, kO200k };

// Length in bytes of the piece that starts at `pos` (pos < text.size()). Every pattern above
// matches any non-empty input at any position, so the result is always ≥ 1 and pieces tile
// the text exactly.
std::size_t nextPiece(Pattern pattern, std::string_view text, std::size_t pos);

// Calls `sink(std::string_view piece)` for each piece of `text`, in order.
template <typename Sink>
void splitPieces(Pattern pattern, std::string_view text, Sink&& sink) {
    std::size_t pos = 0;
    while (pos < text.size()) {
        const std::size_t len = nextPiece(pattern, text, pos);
        sink(text.substr(pos, len));
        pos += len;
    }
}

}  // namespace sluice::waypoint::tokenizer
