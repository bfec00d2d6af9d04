#include "waypoint/tokenizer/encoding.h"

#include <algorithm>
#include <array>
#include <cstdlib>
#include <fstream>
#include <limits>

#include "common/base64.h"

namespace sluice::waypoint::tokenizer {
namespace {

constexpr Rank kNoRank = std::numeric_limits<Rank>::max();

// BPE over one piece exactly as tiktoken merges: repeatedly merge the adjacent pair whose
// concatenation has the lowest rank, the leftmost one on ties, until no pair is a token.
// Short pieces use a flat array (what tiktoken itself does); long ones a heap with lazy
// deletion, which picks the same pair each step but keeps very long words O(n log n).
class Merger {
  public:
    Merger(const RankTable& ranks, const std::array<Rank, 256>& byte_ranks)
        : ranks_(ranks), byte_ranks_(byte_ranks) {}

    void run(std::string_view piece, std::vector<Rank>& out) {
        if (piece.size() <= kFlatLimit) {
            flat(piece, out);
        } else {
            heap(piece, out);
        }
    }

  private:
    // Above this many bytes the flat array's O(n) scan per merge costs more than the heap.
    static constexpr std::size_t kFlatLimit = 24;

    Rank rankOf(std::string_view piece, std::size_t begin, std::size_t end) const {
        return ranks_.find(piece.substr(begin, end - begin)).value_or(kNoRank);
    }

    void flat(std::string_view piece, std::vector<Rank>& out) {
        // starts[i] begins part i; pair_rank[i] ranks parts i and i+1 together.
        std::array<std::uint32_t, kFlatLimit + 1> starts;
        std::array<Rank, kFlatLimit> pair_rank;
        std::array<Rank, kFlatLimit> part_rank;  // the token each part already is
        std::size_t parts = piece.size();
        for (std::size_t i = 0; i <= parts; ++i)
            starts[i] = std::uint32_t(i);
        for (std::size_t i = 0; i < parts; ++i)
            part_rank[i] = byte_ranks_[std::uint8_t(piece[i])];
        for (std::size_t i = 0; i + 1 < parts; ++i)
            pair_rank[i] = rankOf(piece, i, i + 2);
        while (parts > 1) {
            std::size_t best = 0;
            Rank best_rank = kNoRank;
            for (std::size_t i = 0; i + 1 < parts; ++i) {
                if (pair_rank[i] < best_rank) {
                    best_rank = pair_rank[i];
                    best = i;
                }
            }
            if (best_rank == kNoRank)
                break;
            // Part best absorbs part best+1.
            part_rank[best] = best_rank;
            for (std::size_t i = best + 1; i < parts; ++i) {
                starts[i] = starts[i + 1];
                if (i + 1 < parts)
                    part_rank[i] = part_rank[i + 1];
            }
            for (std::size_t i = best + 1; i + 1 < parts - 1; ++i)
                pair_rank[i] = pair_rank[i + 1];
            --parts;
            if (best + 1 < parts)
                pair_rank[best] = rankOf(piece, starts[best], starts[best + 2]);
            if (best > 0)
                pair_rank[best - 1] = rankOf(piece, starts[best - 1], starts[best + 1]);
        }
        out.insert(out.end(), part_rank.begin(), part_rank.begin() + std::ptrdiff_t(parts));
    }

    void heap(std::string_view piece, std::vector<Rank>& out) {
        const std::size_t n = piece.size();
        // A doubly linked list of parts, indexed by their first byte. The buffers are reused
        // per thread: long pieces are common in CJK text and allocations would dominate.
        thread_local std::vector<std::uint32_t> next, prev;
        thread_local std::vector<Rank> pair_rank, part_rank;
        thread_local std::vector<std::pair<Rank, std::uint32_t>> heap_storage;
        next.resize(n);
        prev.resize(n);
        pair_rank.assign(n, kNoRank);
        part_rank.resize(n);
        for (std::size_t i = 0; i < n; ++i)
            part_rank[i] = byte_ranks_[std::uint8_t(piece[i])];
        for (std::size_t i = 0; i < n; ++i) {
            next[i] = std::uint32_t(i + 1);
            prev[i] = std::uint32_t(i == 0 ? n : i - 1);  // n = none
        }
        auto end_of = [&](std::uint32_t part) -> std::size_t { return next[part]; };
        // A min-heap on (rank, first byte): the lowest rank wins, the leftmost on ties.
        using Entry = std::pair<Rank, std::uint32_t>;
        auto& queue = heap_storage;
        queue.clear();
        auto push = [&](Rank rank, std::uint32_t part) {
            queue.emplace_back(rank, part);
            std::push_heap(queue.begin(), queue.end(), std::greater<Entry>{});
        };
        auto rerank = [&](std::uint32_t part) {
            const std::size_t second = end_of(part);
            pair_rank[part] =
                second < n ? rankOf(piece, part, end_of(std::uint32_t(second))) : kNoRank;
            if (pair_rank[part] != kNoRank)
                push(pair_rank[part], part);
        };
        for (std::uint32_t i = 0; i + 1 < n; ++i)
            rerank(i);
        while (!queue.empty()) {
            std::pop_heap(queue.begin(), queue.end(), std::greater<Entry>{});
            const auto [rank, part] = queue.back();
            queue.pop_back();
            // Entries of merged-away parts or with a rank that changed since are stale.
            if (pair_rank[part] != rank || rank == kNoRank)
                continue;
            const std::uint32_t absorbed = std::uint32_t(end_of(part));
            next[part] = next[absorbed];
            if (next[part] < n)
                prev[next[part]] = part;
            pair_rank[absorbed] = kNoRank;
            part_rank[part] = rank;
            rerank(part);
            if (prev[part] < n)
                rerank(prev[part]);
        }
        for (std::size_t p = 0; p < n; p = next[p])
            out.push_back(part_rank[p]);
    }

    const RankTable& ranks_;
    const std::array<Rank, 256>& byte_ranks_;
};

}  // namespace

std::string_view toString(EncodingName name) {
    return name == EncodingName::kCl100kBase ? "cl100k_base" : "o200k_base";
}

std::string_view toString(Error error) {
    switch (error) {
        case Error::UnknownEncoding:
            return "unknown encoding (expected cl100k_base or o200k_base)";
        case Error::RankFileMissing:
            return "rank file missing (run scripts/fetch-tokenizer-data.sh)";
        case Error::RankFileMalformed:
            return "rank file malformed";
    }
    return "unknown error";
}

std::expected<EncodingName, Error> parseEncodingName(std::string_view name) {
    if (name == "cl100k_base")
        return EncodingName::kCl100kBase;
    if (name == "o200k_base")
        return EncodingName::kO200kBase;
    return std::unexpected(Error::UnknownEncoding);
}

EncodingName encodingForModel(std::string_view model, EncodingName fallback) {
    // Prefixes from tiktoken's model table; the longer, more specific prefixes come first.
    static constexpr std::pair<std::string_view, EncodingName> kPrefixes[] = {
        {"gpt-4o", EncodingName::kO200kBase},
        {"gpt-4.1", EncodingName::kO200kBase},
        {"gpt-4.5", EncodingName::kO200kBase},
        {"gpt-5", EncodingName::kO200kBase},
        {"chatgpt-4o", EncodingName::kO200kBase},
        {"o1", EncodingName::kO200kBase},
        {"o3", EncodingName::kO200kBase},
        {"o4", EncodingName::kO200kBase},
        {"gpt-oss", EncodingName::kO200kBase},
        {"gpt-4", EncodingName::kCl100kBase},
        {"gpt-3.5", EncodingName::kCl100kBase},
        {"gpt-35", EncodingName::kCl100kBase},
        {"text-embedding-3", EncodingName::kCl100kBase},
        {"text-embedding-ada-002", EncodingName::kCl100kBase},
        {"davinci-002", EncodingName::kCl100kBase},
        {"babbage-002", EncodingName::kCl100kBase},
    };
    for (const auto& [prefix, name] : kPrefixes) {
        if (model.starts_with(prefix))
            return name;
    }
    return fallback;
}

std::filesystem::path defaultTokenizerDir() {
    if (const char* env = std::getenv(kTokenizerDirEnv); env && *env)
        return env;
    return SLUICE_TOKENIZER_DEFAULT_DIR;
}

Encoding::Encoding(EncodingName name, RankTable ranks, const std::array<Rank, 256>& byte_ranks)
    : name_(name),
      pattern_(name == EncodingName::kCl100kBase ? Pattern::kCl100k : Pattern::kO200k),
      ranks_(std::move(ranks)),
      byte_ranks_(byte_ranks) {}

std::expected<std::shared_ptr<const Encoding>, Error> Encoding::load(
    EncodingName name, const std::filesystem::path& dir) {
    std::ifstream in(dir / (std::string(toString(name)) + ".tiktoken"));
    if (!in)
        return std::unexpected(Error::RankFileMissing);
    RankTable ranks;
    ranks.reserve(name == EncodingName::kCl100kBase ? 100'256 : 199'998);
    std::string line;
    while (std::getline(in, line)) {
        if (line.empty())
            continue;
        const auto space = line.find(' ');
        if (space == std::string::npos)
            return std::unexpected(Error::RankFileMalformed);
        auto bytes = decodeBase64(std::string_view(line).substr(0, space));
        if (!bytes)
            return std::unexpected(Error::RankFileMalformed);
        char* end = nullptr;
        const unsigned long rank = std::strtoul(line.c_str() + space + 1, &end, 10);
        if (*end != '\0' || rank >= kNoRank || !ranks.insert(*bytes, Rank(rank))) {
            return std::unexpected(Error::RankFileMalformed);
        }
    }
    // Byte-level BPE needs every single byte to be a token, or a piece could not be encoded.
    std::array<Rank, 256> byte_ranks;
    for (int b = 0; b < 256; ++b) {
        const char c = char(b);
        auto rank = ranks.find(std::string_view(&c, 1));
        if (!rank)
            return std::unexpected(Error::RankFileMalformed);
        byte_ranks[b] = *rank;
    }
    return std::shared_ptr<const Encoding>(new Encoding(name, std::move(ranks), byte_ranks));
}

void Encoding::encodePiece(std::string_view piece, std::vector<Rank>& out) const {
    if (auto whole = ranks_.find(piece)) {
        out.push_back(*whole);
        return;
    }
    Merger(ranks_, byte_ranks_).run(piece, out);
}

std::vector<Rank> Encoding::encode(std::string_view text) const {
    std::vector<Rank> out;
    out.reserve(text.size() / 3 + 1);
    splitPieces(pattern_, text, [&](std::string_view piece) { encodePiece(piece, out); });
    return out;
}

std::size_t Encoding::count(std::string_view text) const {
    std::size_t n = 0;
    std::vector<Rank> scratch;
    splitPieces(pattern_, text, [&](std::string_view piece) {
        if (ranks_.find(piece)) {
            ++n;
            return;
        }
        scratch.clear();
        Merger(ranks_, byte_ranks_).run(piece, scratch);
        n += scratch.size();
    });
    return n;
}

std::string Encoding::decode(std::span<const Rank> tokens) const {
    std::string out;
    for (Rank r : tokens)
        out.append(ranks_.bytesOf(r));
    return out;
}

}  // namespace sluice::waypoint::tokenizer
