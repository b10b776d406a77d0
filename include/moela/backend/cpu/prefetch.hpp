#pragma once
/// \file moela/backend/cpu/prefetch.hpp
/// Software prefetch of the weights a kernel reads next (internal):
///
/// - `row_prefetcher`: the weight rows a GEMM worker packs next (used by the packed GEMMs of
///   moela/backend/cpu/qgemm.hpp, x86/gemm_a8_avx512.hpp and x86/gemm_bf16_avx512.hpp, and by the
///   buffer path of the first for the next decode piece, into L1);
/// - `param_prefetcher`: the group scales and zero points of the rows a GEMV reaches next (used
///   by the GEMV kernels of x86/, next to their prefetch of the codes, `prefetch_ahead`).
///
/// A packed GEMM reads its weights a panel at a time: 16-192 rows side by side, each row a
/// stream of its own. That is more streams than the hardware prefetchers follow, so without help
/// every pack waits on DRAM for its first touch of each line, while the tiles that follow
/// compute on data already in cache. `row_prefetcher` enumerates the lines of the next pack
/// (codes of a column range of a row range, and the group scales and zero points of those
/// columns) and issues them into L2 a few at a time, spread over the current pack's tiles, so the
/// next pack finds them there. Measured: docs/performance.md, eleventh pass.

#include <algorithm>
#include <cstddef>
#include <cstdint>

#include "moela/core/config.hpp"
#include "moela/quant/qmatrix.hpp"

namespace moela::detail {

/// Formats with per-row group parameters: int8_group and int4_group (FP8 blocks have one scale
/// row per 128 weight rows, row-wise INT8 one scale per row).
template <class F>
inline constexpr bool has_row_groups =
    F::kind == quant::format_kind::int8_group || F::kind == quant::format_kind::int4_group;

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
  static constexpr bool grouped = has_row_groups<F>;
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

/// The group scales (and zero points) of the weight rows a GEMV reaches `ahead` bytes of codes
/// from now: a GEMV kernel prefetches its code stream `ahead` bytes ahead (`prefetch_ahead`,
/// x86/gemv_avx2.hpp), and the rows' parameters are a second stream (int4 with G = 32 and fp32
/// scales: a quarter of the code bytes, plus an eighth for zero points) that the hardware
/// prefetchers left to DRAM latency: a memory-bound W4A8 GEMV streamed 1.06-1.36x faster with
/// it (docs/performance.md, twelfth pass). `rows(n, count)` prefetches the parameters of rows
/// `[n + d, n + d + count)`, `d = ceil(ahead / bytes between code rows)`, with
/// `__builtin_prefetch` locality `Locality` (the kernels pass their codes' `_MM_HINT_*`: T0 = 3,
/// T1 = 2). For formats without per-row groups it does nothing. Past the matrix it prefetches
/// addresses that hold nothing of it (a prefetch never faults).
template <class F, int Locality>
class param_prefetcher {
 public:
  param_prefetcher(const qmatrix<F>& w, std::size_t ahead) {
    if constexpr (has_row_groups<F>) {
      const index_t row_bytes =
          std::max<index_t>(1, w.code_stride() * static_cast<index_t>(sizeof(typename F::code_type)));
      const index_t d = (static_cast<index_t>(ahead) + row_bytes - 1) / row_bytes;
      scale_row_ = w.scale_cols() * static_cast<index_t>(sizeof(typename F::scale_type));
      scales_ = address(w.scale_data()) + static_cast<std::uintptr_t>(d * scale_row_);
      if constexpr (F::has_zero) {
        zero_row_ = w.scale_cols();
        zeros_ = address(w.zero_data()) + static_cast<std::uintptr_t>(d * zero_row_);
      }
    }
  }
  /// Prefetches the parameters of rows [n + d, n + d + count) (a kernel calls it once per pass
  /// over `count` rows starting at row n).
  MOELA_ALWAYS_INLINE void rows([[maybe_unused]] index_t n, [[maybe_unused]] index_t count) const {
    if constexpr (has_row_groups<F>) {
      lines(scales_ + static_cast<std::uintptr_t>(n * scale_row_), count * scale_row_);
      if constexpr (F::has_zero) lines(zeros_ + static_cast<std::uintptr_t>(n * zero_row_), count * zero_row_);
    }
  }

 private:
  static std::uintptr_t address(const void* p) { return reinterpret_cast<std::uintptr_t>(p); }
  // Every 64-byte line that holds a byte of [p, p + bytes).
  static MOELA_ALWAYS_INLINE void lines(std::uintptr_t p, index_t bytes) {
    for (std::uintptr_t a = p & ~std::uintptr_t{63}, e = p + static_cast<std::uintptr_t>(bytes); a < e; a += 64)
      __builtin_prefetch(reinterpret_cast<const void*>(a), 0, Locality);
  }

  std::uintptr_t scales_ = 0, zeros_ = 0;
  index_t scale_row_ = 0, zero_row_ = 0;
};

}  // namespace moela::detail
