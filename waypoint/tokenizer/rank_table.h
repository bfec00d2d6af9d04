#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace sluice::waypoint::tokenizer {

using Rank = std::uint32_t;

// Byte string → BPE rank, the "mergeable ranks" of one encoding. Lookups are the tokenizer's
// inner loop and the table does not fit in cache (200k entries), so each lookup should cost one
// cache miss: tokens of up to 8 bytes — nearly every lookup a merge makes — are keyed by their
// bytes packed into a uint64 stored in the slot itself; longer ones live in a second table whose
// slots point into a byte arena.
class RankTable {
  public:
    void reserve(std::size_t entries);
    // Returns false when `bytes` is empty or already present, or the rank is above 2^28 - 1 (a
    // malformed rank file).
    bool insert(std::string_view bytes, Rank rank);
    std::optional<Rank> find(std::string_view bytes) const {
        // Two-byte strings are the first lookups of every merge: answer them from a flat
        // 256 KiB array that stays in cache.
        if (bytes.size() == 2) {
            const Rank r = two_byte_[std::uint8_t(bytes[0]) << 8 | std::uint8_t(bytes[1])];
            return r == kNone ? std::nullopt : std::optional<Rank>(r);
        }
        return findSlow(bytes);
    }
    // The bytes of a rank, for decoding; empty when the rank is unknown.
    std::string_view bytesOf(Rank rank) const;
    std::size_t size() const { return count_; }

  private:
    // 12 bytes, unaligned: the two short tables are most of the waypoint's memory (they are
    // sized for ≤ 50 % load), and five slots per cache line beat four.
    struct __attribute__((packed)) ShortSlot {
        std::uint64_t key = 0;
        Rank rank : 28 = 0;
        std::uint32_t length : 4 = 0;  // 0 = empty
    };
    static_assert(sizeof(ShortSlot) == 12);
    static constexpr Rank kMaxRank = (Rank{1} << 28) - 1;
    struct LongSlot {
        std::uint32_t hash = 0;
        std::uint32_t offset = 0;  // into arena_
        std::uint32_t length = 0;  // 0 = empty
        Rank rank = 0;
    };
    static constexpr std::size_t kShortMax = 8;
    static constexpr Rank kNone = ~Rank{0};

    std::optional<Rank> findSlow(std::string_view bytes) const;
    std::optional<Rank> findShort(std::string_view bytes) const;
    std::optional<Rank> findLong(std::string_view bytes) const;
    void growShort();
    void growLong();

    std::vector<Rank> two_byte_ = std::vector<Rank>(65536, kNone);
    std::string arena_;  // every token's bytes, for long-token compares and decoding
    std::vector<ShortSlot> short_;
    std::vector<LongSlot> long_;
    std::size_t short_count_ = 0;
    std::size_t long_count_ = 0;
    std::vector<std::pair<std::uint32_t, std::uint32_t>> arena_span_of_rank_;
    std::size_t count_ = 0;
};

}  // namespace sluice::waypoint::tokenizer
