#pragma once
/// \file moela/backend/cpu/prefetch.hpp
/// Software prefetch of the weight rows a GEMM worker packs next (internal; used by the packed
/// GEMMs of moela/backend/cpu/qgemm.hpp, x86/gemm_a8_avx512.hpp and x86/gemm_bf16_avx512.hpp,
/// and by the buffer path of the first for the next decode piece, into L1).
///
/// A packed GEMM reads its weights a panel at a time: 16-192 rows side by side, each row a
/// stream of its own. That is more streams than the hardware prefetchers follow, so without help
/// every pack waits on DRAM for its first touch of each line, while the tiles that follow
/// compute on data already in cache. `row_prefetcher` enumerates the lines of the next pack
/// (codes of a column range of a row range, and the group scales and zero points of those
/// columns) and issues them into L2 a few at a time, spread over the current pack's tiles, so the
/// next pack finds them there. Measured: docs/performance.md, eleventh pass.

#include <algorithm>
#include <cstdint>

#include "moela/core/config.hpp"
#include "moela/quant/qmatrix.hpp"

namespace moela::detail {

/// The 64-byte lines of columns [a, b) of weight rows [n0, n1): per row its codes, then (formats
/// with per-row group scales: int8_group, int4_group) its scales and zero points of those
/// columns. `step()` prefetches the next 1/`steps` of them (all of them for steps = 1) with
/// `__builtin_prefetch` locality `Locality` (2: L2, prefetcht1 on x86; 3: L1). Default-
/// constructed: no lines.
template <class F, int Locality = 2>
class row_prefetcher {
 public:
  row_prefetcher() = default;
  row_prefetcher(const qmatrix<F>& w, index_t n0, index_t n1, index_t a, index_t b, index_t steps = 1)
      : w_(&w), n0_(n0), a_(a) {
    if (n1 <= n0 || b <= a) return;
    // +1 line: a row need not start on a line boundary.
    code_lines_ = (at(b) - at(a) + 63) / 64 + 1;
    if constexpr (grouped) {
      scale_lines_ = ((b - 1) / F::group - a / F::group + 1) * index_t{sizeof(typename F::scale_type)} / 64 + 2;
      zero_lines_ = F::has_zero ? ((b - 1) / F::group - a / F::group + 1) / 64 + 2 : 0;
    }
    per_row_ = code_lines_ + scale_lines_ + zero_lines_;
    lines_ = (n1 - n0) * per_row_;
    per_step_ = (lines_ + std::max<index_t>(steps, 1) - 1) / std::max<index_t>(steps, 1);
  }
  /// Prefetches the next lines (fewer at the end, none after it).
  void step() {
    for (const index_t end = std::min(lines_, next_ + per_step_); next_ < end; ++next_) {
      const index_t n = n0_ + next_ / per_row_, j = next_ % per_row_;
      // Addresses as integers: the slack lines may lie past the matrix (a prefetch never faults).
      std::uintptr_t p;
      if (j < code_lines_)
        p = address(w_->row_codes(n)) + static_cast<std::uintptr_t>(at(a_) + 64 * j);
      else if (j < code_lines_ + scale_lines_)
        p = address(w_->scale_data() + n * w_->scale_cols() + a_ / group_or_1()) +
            static_cast<std::uintptr_t>(64 * (j - code_lines_));
      else
        p = address(w_->zero_data() + n * w_->scale_cols() + a_ / group_or_1()) +
            static_cast<std::uintptr_t>(64 * (j - code_lines_ - scale_lines_));
      __builtin_prefetch(reinterpret_cast<const void*>(p), 0, Locality);
    }
  }

 private:
  static constexpr bool grouped =
      F::kind == quant::format_kind::int8_group || F::kind == quant::format_kind::int4_group;
  static constexpr index_t group_or_1() {
    if constexpr (grouped) return F::group;
    else return 1;
  }
  static std::uintptr_t address(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }
  /// Byte offset of column k in a row of codes.
  static index_t at(index_t k) {
    return F::packed4 ? k / 2 : k * static_cast<index_t>(sizeof(typename F::code_type));
  }

  const qmatrix<F>* w_ = nullptr;
  index_t n0_ = 0, a_ = 0;
  index_t code_lines_ = 0, scale_lines_ = 0, zero_lines_ = 0, per_row_ = 1, lines_ = 0, per_step_ = 0, next_ = 0;
};

}  // namespace moela::detail
