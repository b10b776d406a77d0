#pragma once
/// \file moela/backend/cpu/x86/gemv_a8_avx2.hpp
/// Integer GEMV kernels of `quant::mode::int8_activations` (W8A8 / W4A8) for M = 1..4 activation
/// rows on AVX2 (internal; used by moela/backend/cpu/qgemm.hpp). The activations arrive quantized
/// to int8 in 1x128 groups (codes `xq`, scales `sx`); per span (the intersection of an activation
/// group and a weight scale group) the integer dot product Σ q·c is exact in int32 and is then
/// scaled once, `y += float(Σ q·c) · (s_w · s_x)`.
///
/// The products use `vpmaddubsw` (unsigned 8-bit x signed 8-bit -> pairs summed in int16) and
/// `vpmaddwd` with ones (-> int32), 32 MACs per instruction pair:
///  - int8 codes c in [-127, 127] (c = -128 also stays exact): `vpmaddubsw(|c|, sign(q, c))`;
///    pair sums are at most 2 * 128 * 127 = 32512 < 2^15, so nothing saturates.
///  - int4 codes: the nibble u in [0, 15] is the unsigned operand (signed codes are stored as
///    c = u - 8 after flipping bit 3, asymmetric ones as c = u - z), so Σ q·c = Σ q·u - z Σ q; the
///    Σ q over the 8 codes of each 32-bit lane is precomputed per call (`lane_sums`). Pair sums are
///    at most 2 * 15 * 127, and the low- and high-nibble halves add without saturating.
///
/// Roofline (M = 1, per 32 weight bytes, Zen 1 counts 256-bit ops as 2 µops): int8 5 ops (abs,
/// sign, 2 multiplies, add) vs 12 for the fp32-decode kernel of gemv_avx2.hpp; int4 (64 weights)
/// ~13 ops vs ~36. The multiplies issue on one pipe: 2 (int8) or 3 (int4; 4 with a zero point)
/// per 32 bytes bound a core at ~8 and ~5 bytes per cycle, above the DRAM share of a core; so
/// the target is the triad bandwidth. Measured: docs/performance.md.

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "moela/backend/cpu/convert.hpp"
#include "moela/backend/cpu/x86/gemv_avx2.hpp"
#include "moela/quant/qmatrix.hpp"

#ifdef MOELA_X86_AVX2_KERNELS
#include <immintrin.h>

namespace moela::detail {

inline constexpr index_t a8_group = quant::int8_activation_group;

/// Software prefetch of a weight stream, `gemv_prefetch_bytes` ahead of `p`. Rows are contiguous,
/// so near a row's end this reaches into the rows of the kernel's next pass: it starts their
/// streams before the hardware prefetcher, which re-learns each new row set, would. The kernels
/// below need fewer instructions per byte than DRAM delivers to one core. On rows of 1-2 KiB
/// (K = 2048), 4 KiB ahead took int4 from 8.6-10.5 to 12.9-14.8 GB/s and int8 from 12.1-12.7 to
/// 13-16 GB/s (2 threads); 8 KiB, the int8 kernel's whole 4-row pass at K = 2048, took int8 on to
/// 17-20 GB/s on every shape and int4 up by 5-10% (16 KiB lost again, 1-2 KiB gained less). The
/// fp32-decode kernels of gemv_avx2.hpp are bound by their decode instructions; a prefetch moved
/// them within noise, either way.
inline constexpr std::size_t gemv_prefetch_bytes = 8192;
MOELA_ALWAYS_INLINE void prefetch_ahead(const void* p) {
  // An address, not a pointer into the array: past a matrix's end it points at nothing (a
  // prefetch never faults), and integer arithmetic keeps that well defined.
  _mm_prefetch(reinterpret_cast<const char*>(reinterpret_cast<std::uintptr_t>(p) + gemv_prefetch_bytes), _MM_HINT_T0);
}

/// y[m, n] for n in [n0, n1), m < M: int8_rowwise / int8_group weights, int8 activations `xq`
/// (rows of stride ldx) with group scales `sx` (rows of stride lds, one per 128 columns).
template <class F, int M>
void gemv_a8_avx2_int8(const qmatrix<F>& w, const std::int8_t* xq, index_t ldx, const float* sx, index_t lds,
                       index_t n0, index_t n1, float* y, index_t ldy) {
  constexpr int R = M == 1 ? 4 : (M == 2 ? 2 : 1);
  const index_t K = w.cols();
  const index_t wg = F::group == 0 ? K : F::group;
  const __m256i ones = _mm256_set1_epi16(1);
  for (index_t n = n0; n < n1; n += R) {
    const int rr = static_cast<int>(std::min<index_t>(R, n1 - n));
    const std::int8_t* rows[R];
    const typename F::scale_type* srow[R];
    for (int r = 0; r < R; ++r) {
      const index_t nr = n + std::min(r, rr - 1);
      rows[r] = w.row_codes(nr);
      srow[r] = w.scale_data() + nr * w.scale_cols();
    }
    __m256 total[R][M];
    float stail[R][M] = {};
    MOELA_UNROLL for (int r = 0; r < R; ++r) MOELA_UNROLL for (int m = 0; m < M; ++m) total[r][m] = _mm256_setzero_ps();
    for (index_t a = 0; a < K;) {
      const index_t b = std::min({K, (a / wg + 1) * wg, (a / a8_group + 1) * a8_group});
      __m256i acc[R][M];
      MOELA_UNROLL for (int r = 0; r < R; ++r) MOELA_UNROLL for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_si256();
      index_t k = a;
      for (; k + 32 <= b; k += 32) {
        __m256i xv[M];
        MOELA_UNROLL for (int m = 0; m < M; ++m) xv[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xq + m * ldx + k));
        MOELA_UNROLL for (int r = 0; r < R; ++r) {
          prefetch_ahead(rows[r] + k);
          const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[r] + k));
          const __m256i u = _mm256_abs_epi8(c);
          MOELA_UNROLL for (int m = 0; m < M; ++m) {
            const __m256i p = _mm256_maddubs_epi16(u, _mm256_sign_epi8(xv[m], c));
            acc[r][m] = _mm256_add_epi32(acc[r][m], _mm256_madd_epi16(p, ones));
          }
        }
      }
      std::int32_t itail[R][M] = {};
      for (; k < b; ++k)
        for (int r = 0; r < R; ++r)
          for (int m = 0; m < M; ++m) itail[r][m] += std::int32_t(rows[r][k]) * std::int32_t(xq[m * ldx + k]);
      MOELA_UNROLL for (int r = 0; r < R; ++r) {
        const float swv = quant::detail::scale_to_float(srow[r][a / wg]);
        MOELA_UNROLL for (int m = 0; m < M; ++m) {
          const float s = swv * sx[m * lds + a / a8_group];
          total[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][m]), _mm256_set1_ps(s), total[r][m]);
          stail[r][m] += static_cast<float>(itail[r][m]) * s;
        }
      }
      a = b;
    }
    for (int r = 0; r < rr; ++r)
      for (int m = 0; m < M; ++m) y[m * ldy + n + r] = hsum_ps(total[r][m]) + stail[r][m];
  }
}

/// Activation layout of the int4 kernel: within each 64-wide chunk, xp[c + i] = xq[c + 2i] and
/// xp[c + 32 + i] = xq[c + 2i + 1] (i < 32), the order of the low and high nibbles of a 32-byte
/// load; `lane_sums[c / 8 + j]` = `mul` · Σ xq[c + 8j .. c + 8j + 7], the activations that 32-bit
/// lane j of a chunk's products covers (`mul` = 8, the offset of signed codes, for symmetric
/// formats, so the kernel subtracts it without a multiply; 1 with a zero point per group). A
/// last partial chunk is left to the scalar tail.
inline void a8_int4_prepare(const std::int8_t* xq, index_t K, std::int32_t mul, std::int8_t* xp, std::int32_t* lane_sums) {
  for (index_t c = 0; c + 64 <= K; c += 64) {
    for (index_t i = 0; i < 32; ++i) {
      xp[c + i] = xq[c + 2 * i];
      xp[c + 32 + i] = xq[c + 2 * i + 1];
    }
    for (index_t j = 0; j < 8; ++j) {
      std::int32_t s = 0;
      for (index_t t = 0; t < 8; ++t) s += xq[c + 8 * j + t];
      lane_sums[c / 8 + j] = mul * s;
    }
  }
}

/// The `mul` argument of a8_int4_prepare for format F.
template <class F>
inline constexpr std::int32_t a8_int4_lane_mul = F::has_zero ? 1 : 8;

/// y[m, n] for n in [n0, n1), int4_group weights. `xp`/`lane_sums`: a8_int4_prepare'd rows
/// (strides ldx and ldx / 8, `mul` = a8_int4_lane_mul<F>); `xq`: the unpermuted codes (for the
/// tail); `sx`: group scales.
template <class F, int M>
void gemv_a8_avx2_int4(const qmatrix<F>& w, const std::int8_t* xp, const std::int32_t* lane_sums, const std::int8_t* xq,
                       index_t ldx, const float* sx, index_t lds, index_t n0, index_t n1, float* y, index_t ldy) {
  constexpr index_t G = F::group;
  constexpr int R = M == 1 ? 2 : 1;
  const index_t K = w.cols(), ng = K / G, kfull = K / 64 * 64;
  const __m256i mask = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const __m256i flip = _mm256_set1_epi8(F::has_zero ? 0 : static_cast<char>(0x88));
  for (index_t n = n0; n < n1; n += R) {
    const int rr = static_cast<int>(std::min<index_t>(R, n1 - n));
    const std::uint8_t* rows[R];
    const typename F::scale_type* srow[R];
    const std::uint8_t* zrow[R];
    for (int r = 0; r < R; ++r) {
      const index_t nr = n + std::min(r, rr - 1);
      rows[r] = w.row_codes(nr);
      srow[r] = w.scale_data() + nr * ng;
      zrow[r] = F::has_zero ? w.zero_data() + nr * ng : nullptr;
    }
    __m256 total[R][M];
    MOELA_UNROLL for (int r = 0; r < R; ++r) MOELA_UNROLL for (int m = 0; m < M; ++m) total[r][m] = _mm256_setzero_ps();
    for (index_t c = 0; c < kfull; c += 64) {
      __m256i xlo[M], xhi[M], xs[M];
      MOELA_UNROLL for (int m = 0; m < M; ++m) {
        xlo[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + m * ldx + c));
        xhi[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + m * ldx + c + 32));
        xs[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(lane_sums + m * (ldx / 8) + c / 8));
      }
      MOELA_UNROLL for (int r = 0; r < R; ++r) {
        prefetch_ahead(rows[r] + c / 2);
        const __m256i v = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[r] + c / 2)), flip);
        const __m256i lo = _mm256_and_si256(v, mask), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
        // Lane j covers codes c + 8j .. c + 8j + 7, i.e. weight group (c + 8j) / G.
        __m256 sw;
        [[maybe_unused]] __m256i z;
        if constexpr (G == 32) {
          const float s0 = quant::detail::scale_to_float(srow[r][c / G]);
          const float s1 = quant::detail::scale_to_float(srow[r][c / G + 1]);
          // Two broadcasts and an insert: a setr of 8 lanes compiles to narrow stack stores
          // and a wide reload, a store-forwarding stall per chunk that tripled the time.
          sw = _mm256_set_m128(_mm_set1_ps(s1), _mm_set1_ps(s0));
          if constexpr (F::has_zero)
            z = _mm256_set_m128i(_mm_set1_epi32(zrow[r][c / G + 1]), _mm_set1_epi32(zrow[r][c / G]));
        } else {
          sw = _mm256_set1_ps(quant::detail::scale_to_float(srow[r][c / G]));
          if constexpr (F::has_zero) z = _mm256_set1_epi32(zrow[r][c / G]);
        }
        MOELA_UNROLL for (int m = 0; m < M; ++m) {
          const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo[m]), _mm256_maddubs_epi16(hi, xhi[m]));
          // Σ u q - z Σ q per lane: z Σ q is precomputed for symmetric codes (z = 8); a zero point
          // multiplies Σ q here (|Σ q| <= 8 * 127 and z <= 15 fit vpmaddwd's 16-bit operands).
          __m256i zq = xs[m];
          if constexpr (F::has_zero) zq = _mm256_madd_epi16(xs[m], z);
          const __m256i d = _mm256_sub_epi32(_mm256_madd_epi16(p, ones), zq);
          const __m256 s = _mm256_mul_ps(sw, _mm256_set1_ps(sx[m * lds + c / a8_group]));
          total[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(d), s, total[r][m]);
        }
      }
    }
    for (int r = 0; r < rr; ++r) {
      const index_t nr = n + r;
      for (int m = 0; m < M; ++m) {
        float sum = hsum_ps(total[r][m]);
        for (index_t g0 = kfull; g0 < K; g0 += G) {  // tail groups (K % 64 == 32, G == 32)
          std::int32_t acc = 0;
          for (index_t k = g0; k < g0 + G; ++k) {
            const int nib = (rows[r][k / 2] >> (4 * (k & 1))) & 0xF;
            const int code = F::has_zero ? nib - int(zrow[r][g0 / G]) : (nib ^ 8) - 8;
            acc += code * std::int32_t(xq[m * ldx + k]);
          }
          sum += static_cast<float>(acc) * (quant::detail::scale_to_float(srow[r][g0 / G]) * sx[m * lds + g0 / a8_group]);
        }
        y[m * ldy + nr] = sum;
      }
    }
  }
}

}  // namespace moela::detail

#endif  // MOELA_X86_AVX2_KERNELS
