#include "waypoint/tokenizer/rank_table.h"

#include <bit>
#include <cstring>

namespace sluice::waypoint::tokenizer {
namespace {

constexpr std::uint64_t kMul = 0x9E3779B97F4A7C15ull;

std::uint64_t packShort(std::string_view bytes) {
    std::uint64_t key = 0;
    std::memcpy(&key, bytes.data(), bytes.size());
    return key;
}

// Slot indexes take the hash's top bits (Fibonacci hashing): after a multiply those depend on
// every input bit, where the low bits would depend only on the first bytes of the token.
std::size_t slotIndex(std::uint64_t hash, std::size_t slots) {
    return std::size_t(hash >> (64 - std::countr_zero(slots)));
}

std::uint64_t hashShort(std::uint64_t key, std::size_t length) {
    const std::uint64_t h = (key ^ (key >> 29) ^ (length << 56)) * kMul;
    return h ^ (h >> 47);
}

std::uint64_t hashLong(std::string_view bytes) {
    std::uint64_t h = bytes.size() * kMul;
    const char* p = bytes.data();
    std::size_t n = bytes.size();
    while (n > 0) {
        std::uint64_t w = 0;
        const std::size_t take = n < 8 ? n : 8;
        std::memcpy(&w, p, take);
        h = (h ^ w) * kMul;
        h ^= h >> 29;
        p += take;
        n -= take;
    }
    return (h ^ (h >> 32)) * kMul;
}

// Open addressing with linear probing at load factor ≤ 1/2.
template <typename Slot>
std::vector<Slot> rehashed(const std::vector<Slot>& old, std::size_t min_slots, auto&& hash_of) {
    std::vector<Slot> slots(std::bit_ceil(min_slots), Slot{});
    const std::size_t mask = slots.size() - 1;
    for (const Slot& s : old) {
        if (!s.length)
            continue;
        std::size_t i = slotIndex(hash_of(s), slots.size());
        while (slots[i].length)
            i = (i + 1) & mask;
        slots[i] = s;
    }
    return slots;
}

}  // namespace

void RankTable::reserve(std::size_t entries) {
    // Nearly all tokens are short; size both tables for all entries only once, up front.
    if (short_.size() < entries * 2) {
        short_ = rehashed(short_, entries * 2,
                          [](const ShortSlot& s) { return hashShort(s.key, s.length); });
    }
    arena_.reserve(entries * 7);
    arena_span_of_rank_.reserve(entries);
}

void RankTable::growShort() {
    short_ = rehashed(short_, short_.empty() ? 1024 : short_.size() * 2,
                      [](const ShortSlot& s) { return hashShort(s.key, s.length); });
}

void RankTable::growLong() {
    long_ = rehashed(long_, long_.empty() ? 1024 : long_.size() * 2,
                     [](const LongSlot& s) { return std::uint64_t(s.hash) << 32; });
}

bool RankTable::insert(std::string_view bytes, Rank rank) {
    if (bytes.empty() || rank > kMaxRank || find(bytes))
        return false;
    const auto offset = std::uint32_t(arena_.size());
    arena_.append(bytes);
    if (rank >= arena_span_of_rank_.size())
        arena_span_of_rank_.resize(rank + 1, {0, 0});
    arena_span_of_rank_[rank] = {offset, std::uint32_t(bytes.size())};
    ++count_;
    if (bytes.size() == 2)
        two_byte_[std::uint8_t(bytes[0]) << 8 | std::uint8_t(bytes[1])] = rank;
    if (bytes.size() <= kShortMax) {
        if ((short_count_ + 1) * 2 > short_.size())
            growShort();
        const std::uint64_t key = packShort(bytes);
        const std::size_t mask = short_.size() - 1;
        std::size_t i = slotIndex(hashShort(key, bytes.size()), short_.size());
        while (short_[i].length)
            i = (i + 1) & mask;
        short_[i] = ShortSlot{key, rank, std::uint32_t(bytes.size()) & 0xf};
        ++short_count_;
    } else {
        if ((long_count_ + 1) * 2 > long_.size())
            growLong();
        const auto h = std::uint32_t(hashLong(bytes) >> 32);
        const std::size_t mask = long_.size() - 1;
        std::size_t i = slotIndex(std::uint64_t(h) << 32, long_.size());
        while (long_[i].length)
            i = (i + 1) & mask;
        long_[i] = LongSlot{h, offset, std::uint32_t(bytes.size()), rank};
        ++long_count_;
    }
    return true;
}

std::optional<Rank> RankTable::findShort(std::string_view bytes) const {
    if (short_.empty())
        return std::nullopt;
    const std::uint64_t key = packShort(bytes);
    const std::size_t mask = short_.size() - 1;
    for (std::size_t i = slotIndex(hashShort(key, bytes.size()), short_.size()); short_[i].length;
         i = (i + 1) & mask) {
        if (short_[i].key == key && short_[i].length == bytes.size())
            return short_[i].rank;
    }
    return std::nullopt;
}

std::optional<Rank> RankTable::findLong(std::string_view bytes) const {
    if (long_.empty())
        return std::nullopt;
    const auto h = std::uint32_t(hashLong(bytes) >> 32);
    const std::size_t mask = long_.size() - 1;
    for (std::size_t i = slotIndex(std::uint64_t(h) << 32, long_.size()); long_[i].length;
         i = (i + 1) & mask) {
        const LongSlot& s = long_[i];
        if (s.hash == h && s.length == bytes.size() &&
            std::memcmp(arena_.data() + s.offset, bytes.data(), bytes.size()) == 0) {
            return s.rank;
        }
    }
    return std::nullopt;
}

std::optional<Rank> RankTable::findSlow(std::string_view bytes) const {
    if (bytes.empty())
        return std::nullopt;
    return bytes.size() <= kShortMax ? findShort(bytes) : findLong(bytes);
}

std::string_view RankTable::bytesOf(Rank rank) const {
    if (rank >= arena_span_of_rank_.size())
        return {};
    const auto [offset, length] = arena_span_of_rank_[rank];
    return std::string_view(arena_).substr(offset, length);
}

}  // namespace sluice::waypoint::tokenizer
