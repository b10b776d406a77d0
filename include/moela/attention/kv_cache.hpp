#pragma once
/// \file moela/attention/kv_cache.hpp
/// KV caches for many sequences: `contiguous_cache<Format>` (one fixed-capacity slab per
/// sequence) and `paged_cache<Format>` (one shared pool of fixed-size pages, 64 tokens by
/// default, with a page table per sequence, as paged-attention engines do).
///
/// What is stored: per token and per layer, one record of `a + b` values in `Format`
/// (cache_format.hpp). For MLA, `a = kv_rank` (the normalised latent `ckv`) and `b = rope_dim`
/// (the rotated shared key `kpe`): `mla_cache_layout(cfg, layers)`. For standard attention,
/// `a = 2 x kv_heads x head_dim` (K then V), `b = 0`. Nothing else is stored per token: the
/// pool is exactly `pages x page_size x layers x record_bytes()` bytes (contiguous:
/// `sequences x capacity x layers x record_bytes()`), plus the page tables.
///
/// Step protocol (one forward pass of a model over a batch):
///  1. `prepare(chunks)`: for every `seq_chunk{seq, tokens}` reserve room for `tokens` new
///     tokens at positions `[length(seq), length(seq) + tokens)`. All checks run before any
///     change: unknown or repeated sequence, `tokens < 1`, a length that would pass the
///     sequence's capacity or `max_positions`, not enough free pages. On error a
///     `moela::error` is thrown and no sequence's state changes.
///  2. every layer writes the new records and attends over `[0, pending_length(seq))`.
///  3. `commit()` makes the new tokens part of the sequences (or `rollback()` forgets them and
///     returns the pages reserved for them).
/// Records beyond a sequence's committed length are never visible to other sequences.
///
/// Thread safety: the step calls are not thread-safe; during step 2 distinct (layer, seq,
/// position) records may be written concurrently.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <span>
#include <vector>

#include "moela/attention/cache_format.hpp"
#include "moela/attention/config.hpp"
#include "moela/core/tensor.hpp"

namespace moela::attn {

/// `tokens` new tokens for sequence `seq` in one step.
struct seq_chunk {
  index_t seq = 0;
  index_t tokens = 0;
};

/// Widths of one record and the number of layers a cache holds.
struct cache_layout {
  index_t a = 0;       ///< part A values per token (MLA: kv_rank)
  index_t b = 0;       ///< part B values per token (MLA: rope_dim)
  index_t layers = 1;  ///< layers stored per token
  index_t width() const { return a + b; }
  void validate(const char* who) const {
    check(a > 0 && b >= 0 && layers > 0, who, ": layout needs a > 0, b >= 0, layers > 0 (got a=", a, " b=", b,
          " layers=", layers, ")");
    check(a % 2 == 0 && b % 2 == 0, who, ": layout widths must be even (got a=", a, " b=", b, ")");
  }
};

/// The MLA latent layout: a = kv_rank, b = rope_dim.
inline cache_layout mla_cache_layout(const mla_config& c, index_t layers = 1) {
  return {c.kv_rank, c.rope_dim, layers};
}

namespace detail {

/// Bookkeeping shared by both caches: lengths, pending chunk sizes, live flags.
class seq_table {
 public:
  /// Committed tokens of live sequence `s`; throws moela::error for a sequence that does not exist.
  index_t length(index_t s) const {
    check_live("cache::length", s);
    return len_[static_cast<std::size_t>(s)];
  }
  /// Tokens reserved for `s` by the step in progress (0 outside a step); checked as length().
  index_t pending(index_t s) const {
    check_live("cache::pending", s);
    return pend_[static_cast<std::size_t>(s)];
  }
  bool live(index_t s) const { return s >= 0 && s < static_cast<index_t>(live_.size()) && live_[static_cast<std::size_t>(s)]; }
  index_t slots() const { return static_cast<index_t>(live_.size()); }
  index_t live_count() const { return static_cast<index_t>(std::count(live_.begin(), live_.end(), true)); }
  bool in_step() const { return !step_.empty(); }

 protected:
  void check_live(const char* who, index_t s) const {
    check(live(s), who, ": sequence ", s, " does not exist");
  }
  std::vector<index_t> len_, pend_;
  std::vector<bool> live_;
  std::vector<index_t> step_;  // sequences reserved in the current step
};

}  // namespace detail

/// One fixed-capacity slab per sequence (`max_sequences` slots of `capacity` tokens each).
template <cache_format Format>
class contiguous_cache : public detail::seq_table {
 public:
  using format = Format;
  /// `max_sequences` slots of `capacity` tokens, each holding `layout.layers` records per
  /// token; a sequence may not reach position `max_positions` (the model's RoPE limit).
  /// Allocates the whole slab. Errors (moela::error): an invalid layout, a count < 1, a slab
  /// whose size overflows.
  contiguous_cache(cache_layout layout, index_t max_sequences, index_t capacity,
                   index_t max_positions = std::numeric_limits<index_t>::max())
      : layout_(layout), capacity_(capacity), max_positions_(max_positions) {
    layout.validate("contiguous_cache");
    check(max_sequences > 0 && capacity > 0 && max_positions > 0,
          "contiguous_cache: max_sequences, capacity and max_positions must be positive (got ", max_sequences, ", ",
          capacity, ", ", max_positions, ")");
    rec_ = Format::record_bytes(layout.a, layout.b);
    pool_ = tensor<std::byte, 1>({checked_product<index_t>("contiguous_cache", max_sequences, capacity, layout.layers, rec_)});
    len_.assign(static_cast<std::size_t>(max_sequences), 0);
    pend_.assign(static_cast<std::size_t>(max_sequences), 0);
    live_.assign(static_cast<std::size_t>(max_sequences), false);
    step_.reserve(static_cast<std::size_t>(max_sequences));
  }

  const cache_layout& layout() const { return layout_; }
  std::size_t record_bytes() const { return rec_; }
  /// Bytes per token per layer: exactly the record size.
  std::size_t bytes_per_token() const { return rec_; }
  index_t capacity() const { return capacity_; }
  index_t max_positions() const { return max_positions_; }
  /// Bytes of the whole slab (allocated up front).
  std::size_t memory_bytes() const { return pool_.bytes(); }
  /// Bytes holding committed tokens.
  std::size_t used_bytes() const {
    std::size_t t = 0;
    for (index_t s = 0; s < slots(); ++s)
      if (live(s)) t += static_cast<std::size_t>(length(s)) * rec_ * static_cast<std::size_t>(layout_.layers);
    return t;
  }

  /// Claims a free slot; throws when all `max_sequences` are in use.
  index_t add_sequence() {
    check(!in_step(), "contiguous_cache::add_sequence: a step is in progress (commit or rollback first)");
    for (index_t s = 0; s < slots(); ++s)
      if (!live(s)) {
        live_[static_cast<std::size_t>(s)] = true;
        len_[static_cast<std::size_t>(s)] = 0;
        return s;
      }
    fail("contiguous_cache::add_sequence: all ", slots(), " sequence slots are in use");
  }
  void remove_sequence(index_t s) {
    check(!in_step(), "contiguous_cache::remove_sequence: a step is in progress");
    check_live("contiguous_cache::remove_sequence", s);
    live_[static_cast<std::size_t>(s)] = false;
    len_[static_cast<std::size_t>(s)] = 0;
  }

  void prepare(std::span<const seq_chunk> chunks) {
    const char* who = "contiguous_cache::prepare";
    check(!in_step(), who, ": a step is already in progress (commit or rollback first)");
    for (std::size_t i = 0; i < chunks.size(); ++i) {
      const auto& c = chunks[i];
      check_live(who, c.seq);
      check(c.tokens >= 1, who, ": sequence ", c.seq, " asks for ", c.tokens, " tokens (must be >= 1)");
      for (std::size_t j = 0; j < i; ++j)
        check(chunks[j].seq != c.seq, who, ": sequence ", c.seq, " appears twice in one step");
      const index_t need = length(c.seq) + c.tokens;
      check(need <= capacity_, who, ": sequence ", c.seq, " would hold ", need, " tokens but its capacity is ",
            capacity_, " (length ", length(c.seq), " + ", c.tokens, " new)");
      check(need <= max_positions_, who, ": sequence ", c.seq, " would reach position ", need - 1,
            " but max_positions is ", max_positions_);
    }
    for (const auto& c : chunks) {
      pend_[static_cast<std::size_t>(c.seq)] = c.tokens;
      step_.push_back(c.seq);
    }
  }
  void commit() {
    for (index_t s : step_) {
      len_[static_cast<std::size_t>(s)] += pend_[static_cast<std::size_t>(s)];
      pend_[static_cast<std::size_t>(s)] = 0;
    }
    step_.clear();
  }
  void rollback() {
    for (index_t s : step_) pend_[static_cast<std::size_t>(s)] = 0;
    step_.clear();
  }
  /// Committed plus reserved tokens of `s`.
  index_t pending_length(index_t s) const { return length(s) + pending(s); }

  /// Record of (layer, sequence, position); unchecked.
  std::byte* record(index_t layer, index_t s, index_t pos) {
    return pool_.data() + ((s * layout_.layers + layer) * capacity_ + pos) * static_cast<index_t>(rec_);
  }
  const std::byte* record(index_t layer, index_t s, index_t pos) const {
    return pool_.data() + ((s * layout_.layers + layer) * capacity_ + pos) * static_cast<index_t>(rec_);
  }

 private:
  cache_layout layout_;
  index_t capacity_, max_positions_;
  std::size_t rec_ = 0;
  tensor<std::byte, 1> pool_;
};

/// A shared pool of `pages` pages of `page_size` tokens (all layers of a token in the same page).
template <cache_format Format>
class paged_cache : public detail::seq_table {
 public:
  using format = Format;
  static constexpr index_t default_page_size = 64;

  /// A pool of `pages` pages of `page_size` tokens (each token `layout.layers` records); a
  /// sequence may not reach position `max_positions` (the model's RoPE limit). Allocates the
  /// whole pool. Errors (moela::error): an invalid layout, a count < 1, more than 2^31 - 1
  /// pages, a pool whose size overflows.
  paged_cache(cache_layout layout, index_t pages, index_t page_size = default_page_size,
              index_t max_positions = std::numeric_limits<index_t>::max())
      : layout_(layout), pages_(pages), page_size_(page_size), max_positions_(max_positions) {
    layout.validate("paged_cache");
    check(pages > 0 && page_size > 0 && max_positions > 0,
          "paged_cache: pages, page_size and max_positions must be positive (got ", pages, ", ", page_size, ", ",
          max_positions, ")");
    check(pages <= std::numeric_limits<std::int32_t>::max(), "paged_cache: too many pages (", pages, ")");
    rec_ = Format::record_bytes(layout.a, layout.b);
    page_bytes_ = checked_product<std::size_t>("paged_cache", page_size, layout.layers, rec_);
    pool_ = tensor<std::byte, 1>({checked_product<index_t>("paged_cache", pages, page_size, layout.layers, rec_)});
    free_.reserve(static_cast<std::size_t>(pages));
    for (index_t p = pages; p-- > 0;) free_.push_back(static_cast<std::int32_t>(p));
  }

  const cache_layout& layout() const { return layout_; }
  std::size_t record_bytes() const { return rec_; }
  std::size_t bytes_per_token() const { return rec_; }
  index_t page_size() const { return page_size_; }
  index_t pages() const { return pages_; }
  index_t free_pages() const { return static_cast<index_t>(free_.size()); }
  index_t max_positions() const { return max_positions_; }
  /// Bytes of the pool (allocated up front).
  std::size_t memory_bytes() const { return pool_.bytes(); }
  /// Bytes of the pages in use plus the page-table entries pointing at them.
  std::size_t used_bytes() const {
    const auto used = static_cast<std::size_t>(pages_ - free_pages());
    return used * page_bytes_ + used * sizeof(std::int32_t);
  }
  /// Pages held by live sequence `s` (checked as length()).
  index_t pages_of(index_t s) const {
    check_live("paged_cache::pages_of", s);
    return static_cast<index_t>(tables_[static_cast<std::size_t>(s)].size());
  }

  index_t add_sequence() {
    check(!in_step(), "paged_cache::add_sequence: a step is in progress (commit or rollback first)");
    index_t s = 0;
    while (s < slots() && live(s)) ++s;
    if (s == slots()) {
      len_.push_back(0);
      pend_.push_back(0);
      live_.push_back(false);
      tables_.emplace_back();
      step_.reserve(live_.size());
    }
    live_[static_cast<std::size_t>(s)] = true;
    len_[static_cast<std::size_t>(s)] = 0;
    auto& t = tables_[static_cast<std::size_t>(s)];
    t.clear();
    const index_t most = std::min(pages_, max_positions_ / page_size_ + 1);
    t.reserve(static_cast<std::size_t>(most));
    return s;
  }
  /// Removes `s` and returns its pages to the pool.
  void remove_sequence(index_t s) {
    check(!in_step(), "paged_cache::remove_sequence: a step is in progress");
    check_live("paged_cache::remove_sequence", s);
    auto& t = tables_[static_cast<std::size_t>(s)];
    for (auto p = t.rbegin(); p != t.rend(); ++p) free_.push_back(*p);
    t.clear();
    live_[static_cast<std::size_t>(s)] = false;
    len_[static_cast<std::size_t>(s)] = 0;
  }

  void prepare(std::span<const seq_chunk> chunks) {
    const char* who = "paged_cache::prepare";
    check(!in_step(), who, ": a step is already in progress (commit or rollback first)");
    index_t new_pages = 0;
    for (std::size_t i = 0; i < chunks.size(); ++i) {
      const auto& c = chunks[i];
      check_live(who, c.seq);
      check(c.tokens >= 1, who, ": sequence ", c.seq, " asks for ", c.tokens, " tokens (must be >= 1)");
      for (std::size_t j = 0; j < i; ++j)
        check(chunks[j].seq != c.seq, who, ": sequence ", c.seq, " appears twice in one step");
      const index_t need = length(c.seq) + c.tokens;
      check(need <= max_positions_, who, ": sequence ", c.seq, " would reach position ", need - 1,
            " but max_positions is ", max_positions_);
      new_pages += std::max<index_t>(0, (need + page_size_ - 1) / page_size_ - pages_of(c.seq));
    }
    check(new_pages <= free_pages(), who, ": the step needs ", new_pages, " new pages of ", page_size_,
          " tokens but only ", free_pages(), " of ", pages_, " are free");
    for (const auto& c : chunks) {
      auto& t = tables_[static_cast<std::size_t>(c.seq)];
      const index_t need_pages = (length(c.seq) + c.tokens + page_size_ - 1) / page_size_;
      while (static_cast<index_t>(t.size()) < need_pages) {
        t.push_back(free_.back());
        free_.pop_back();
      }
      pend_[static_cast<std::size_t>(c.seq)] = c.tokens;
      step_.push_back(c.seq);
    }
  }
  void commit() {
    for (index_t s : step_) {
      len_[static_cast<std::size_t>(s)] += pend_[static_cast<std::size_t>(s)];
      pend_[static_cast<std::size_t>(s)] = 0;
    }
    step_.clear();
  }
  void rollback() {
    for (index_t s : step_) {
      pend_[static_cast<std::size_t>(s)] = 0;
      auto& t = tables_[static_cast<std::size_t>(s)];
      const index_t keep = (length(s) + page_size_ - 1) / page_size_;
      while (static_cast<index_t>(t.size()) > keep) {
        free_.push_back(t.back());
        t.pop_back();
      }
    }
    step_.clear();
  }
  index_t pending_length(index_t s) const { return length(s) + pending(s); }

  /// Record of (layer, sequence, position), for a position below pending_length(s); unchecked.
  std::byte* record(index_t layer, index_t s, index_t pos) {
    const auto page = tables_[static_cast<std::size_t>(s)][static_cast<std::size_t>(pos / page_size_)];
    return pool_.data() + static_cast<std::size_t>(page) * page_bytes_ +
           static_cast<std::size_t>(layer * page_size_ + pos % page_size_) * rec_;
  }
  const std::byte* record(index_t layer, index_t s, index_t pos) const {
    return const_cast<paged_cache*>(this)->record(layer, s, pos);
  }

 private:
  cache_layout layout_;
  index_t pages_, page_size_, max_positions_;
  std::size_t rec_ = 0, page_bytes_ = 0;
  tensor<std::byte, 1> pool_;
  std::vector<std::int32_t> free_;
  std::vector<std::vector<std::int32_t>> tables_;
};

/// What a layer needs from a cache (both classes above model it).
template <class C>
concept kv_cache = requires(C& c, const C& cc, index_t i) {
  typename C::format;
  { cc.layout() } -> std::convertible_to<const cache_layout&>;
  { c.record(i, i, i) } -> std::same_as<std::byte*>;
  { cc.record(i, i, i) } -> std::same_as<const std::byte*>;
  { cc.length(i) } -> std::convertible_to<index_t>;
  { cc.pending(i) } -> std::convertible_to<index_t>;
  { cc.max_positions() } -> std::convertible_to<index_t>;
  c.prepare(std::span<const seq_chunk>{});
  c.commit();
  c.rollback();
};

/// Writes one token record (encodes A and B). Unchecked.
template <kv_cache Cache>
void write_record(Cache& c, index_t layer, index_t seq, index_t pos, const float* a, const float* b) {
  Cache::format::encode(a, c.layout().a, b, c.layout().b, c.record(layer, seq, pos));
}
/// Reads one token record as `a + b` floats into `out`. Checked (sequence and position).
template <class Arch = xsimd::default_arch, kv_cache Cache>
void read_record(const Cache& c, index_t layer, index_t seq, index_t pos, std::span<float> out) {
  check(c.live(seq), "read_record: sequence ", seq, " does not exist");
  check(layer >= 0 && layer < c.layout().layers, "read_record: layer ", layer, " outside [0, ", c.layout().layers, ")");
  check(pos >= 0 && pos < c.length(seq) + c.pending(seq), "read_record: position ", pos, " outside [0, ",
        c.length(seq) + c.pending(seq), ") of sequence ", seq);
  check(static_cast<index_t>(out.size()) == c.layout().width(), "read_record: out has ", out.size(),
        " floats, the record has ", c.layout().width());
  Cache::format::template decode<Arch>(c.record(layer, seq, pos), c.layout().a, c.layout().b, out.data());
}

}  // namespace moela::attn
