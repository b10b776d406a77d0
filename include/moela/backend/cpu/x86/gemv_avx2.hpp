#pragma once
/// \file moela/backend/cpu/x86/gemv_avx2.hpp
/// Fused decode-and-multiply GEMV kernels for M = 1..4 activation rows on AVX2 + FMA + F16C
/// (internal; used by moela/backend/cpu/qgemm.hpp when compiled for AVX2 and not
/// MOELA_FORCE_GENERIC). Weights are decoded in registers and multiplied immediately (no
/// buffer round trip), scales are applied once per scale group to the partial sums.
///
/// Roofline (per call): bytes = w.bytes() + 4*M*K; FLOPs = 2*M*N*K. At M <= 4 the arithmetic
/// intensity is <= 8 FLOP per weight byte for int4 and <= 2 for f32, far below the machine's
/// FLOP/byte balance, so the target is streaming the weights at DRAM speed. Per 8 weights the
/// inner loops issue: f32 1 FMA (load folded); bf16 1 unpack + FMA; fp16 1 convert + FMA;
/// int8 3 + FMA; fp8 E4M3 4 (unpack, shift, mask, F16C convert, and NaN tracking once per 16)
/// + FMA; int4 3 + FMA
/// (64 codes per 32-byte load, x pre-permuted so that nibble order needs no shuffles; the zero
/// point / sign offset is removed per group with precomputed group sums of x).
/// Measured ratios to the triad bandwidth: docs/performance.md, "Idle re-measurement".

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "moela/backend/cpu/convert.hpp"
#include "moela/backend/cpu/prefetch.hpp"
#include "moela/quant/qmatrix.hpp"

#ifdef MOELA_X86_AVX2_KERNELS
#include <immintrin.h>

namespace moela::detail {

MOELA_ALWAYS_INLINE float hsum_ps(__m256 v) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_movehdup_ps(t)));
}

/// NaN bookkeeping of the E4M3 kernels: the running byte-wise maximum of the codes' magnitudes
/// (code & 0x7F), which reaches 0x7F exactly when a NaN code was seen. Two ops per load of up
/// to 16 codes; load8/load16 decode NaN codes to finite values, so the kernel needs this.
MOELA_ALWAYS_INLINE __m128i e4m3_track_nan(__m128i seen, __m128i codes) {
  return _mm_max_epu8(seen, _mm_and_si128(codes, _mm_set1_epi8(0x7F)));
}
MOELA_ALWAYS_INLINE bool e4m3_nan_seen(__m128i seen) {
  return _mm_movemask_epi8(_mm_cmpeq_epi8(seen, _mm_set1_epi8(0x7F))) != 0;
}

/// 8 consecutive weights of a non-int4 format starting at code pointer `p`, unscaled
/// (fp8 E4M3: value / 256, the factor is folded into the scale; NaN codes come out finite and
/// are recorded in `nan`, see e4m3_track_nan).
template <class F>
MOELA_ALWAYS_INLINE __m256 load8(const typename F::code_type* p, [[maybe_unused]] __m128i& nan) {
  using C = typename F::code_type;
  if constexpr (std::is_same_v<C, float>) {
    return _mm256_loadu_ps(p);
  } else if constexpr (std::is_same_v<C, moela::bf16>) {
    return bf16x8_to_ps(p);
  } else if constexpr (std::is_same_v<C, moela::fp16>) {
    return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  } else if constexpr (std::is_same_v<C, std::int8_t>) {
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  } else if constexpr (std::is_same_v<C, fp8_e5m2>) {  // E5M2 is fp16 with the low byte cleared
    const __m128i c = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p)));
    return _mm256_cvtph_ps(_mm_slli_epi16(c, 8));
  } else {  // fp8_e4m3
    const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
    nan = e4m3_track_nan(nan, c);  // the upper 8 bytes are zero
    return _mm256_cvtph_ps(e4m3x8_to_fp16_bits(c));
  }
}

/// Whether the M-row kernel reads F's rows 16 weights at a time (load16): formats that widen
/// their codes with a shift or a sign extension per 8 weights, which an unpack against zero
/// does for 8 weights in one op. bf16 pairs its lanes with x in a shuffled order that costs an
/// insert per 4 x values; shared by R = 4 (M = 1) or 2 (M = 2) rows that is cheap, but at
/// M >= 3 (one row per pass) it costs more than it saves (measured: M = 4 ran at 0.7x).
template <class F, int M>
inline constexpr bool use_load16 =
    (std::is_same_v<typename F::code_type, moela::bf16> && M <= 2) ||
    std::is_same_v<typename F::code_type, fp8_e4m3> || std::is_same_v<typename F::code_type, fp8_e5m2>;

/// 16 consecutive weights at `p` as two vectors `a`, `b`, unscaled like load8. Their lane order
/// is the one x16 gives x: bf16 a = weights 0-3 and 8-11, b = 4-7 and 12-15 (the 256-bit
/// unpack works within 128-bit halves; 16-bit codes unpacked against zero are floats); fp8
/// a = 0-7, b = 8-15. Per 16 weights: bf16 2 ops (was 4), fp8 4 + 2 converts (was 6 + 2).
template <class F>
MOELA_ALWAYS_INLINE void load16(const typename F::code_type* p, __m256& a, __m256& b, [[maybe_unused]] __m128i& nan) {
  using C = typename F::code_type;
  if constexpr (std::is_same_v<C, moela::bf16>) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    a = _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), v));
    b = _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), v));
  } else {
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    if constexpr (std::is_same_v<C, fp8_e5m2>) {
      a = _mm256_cvtph_ps(_mm_unpacklo_epi8(_mm_setzero_si128(), c));
      b = _mm256_cvtph_ps(_mm_unpackhi_epi8(_mm_setzero_si128(), c));
    } else {
      nan = e4m3_track_nan(nan, c);
      a = _mm256_cvtph_ps(e4m3x16_to_fp16_bits<false>(c));
      b = _mm256_cvtph_ps(e4m3x16_to_fp16_bits<true>(c));
    }
  }
}

/// x[0..16) in the lane order of load16<F>'s two vectors.
template <class F>
MOELA_ALWAYS_INLINE void x16(const float* x, __m256& a, __m256& b) {
  if constexpr (std::is_same_v<typename F::code_type, moela::bf16>) {
    a = _mm256_loadu2_m128(x + 8, x);
    b = _mm256_loadu2_m128(x + 12, x + 4);
  } else {
    a = _mm256_loadu_ps(x);
    b = _mm256_loadu_ps(x + 8);
  }
}

/// Software prefetch of a weight stream, `Bytes` ahead of `p` into the cache level `Hint`
/// (_MM_HINT_T0: L1, T1: L2), nothing for Bytes = 0; every GEMV kernel's prefetch. Rows are
/// contiguous, so near a row's end this reaches into the rows of the kernel's next pass and
/// starts their streams before the hardware prefetcher, which re-learns each new row set, would.
template <std::size_t Bytes, int Hint>
MOELA_ALWAYS_INLINE void prefetch_ahead(const void* p) {
  // An address, not a pointer into the array: past a matrix's end it points at nothing (a
  // prefetch never faults), and integer arithmetic keeps that well defined. The builtin rather
  // than _mm_prefetch, whose hint is an enum in GCC and an int macro argument in Clang; the
  // _MM_HINT_T0/T1/T2/NTA values are the builtin's localities 3/2/1/0 in both.
  static_assert(Hint >= 0 && Hint <= 3, "prefetch_ahead: a read hint, _MM_HINT_T0 .. _MM_HINT_NTA");
  if constexpr (Bytes > 0)
    __builtin_prefetch(reinterpret_cast<const void*>(reinterpret_cast<std::uintptr_t>(p) + Bytes), 0, Hint);
}

/// The fast-mode kernels below prefetch each row stream 16 KiB ahead into L2, the distance and
/// level the integer GEMV measured best on the AVX-512 host (gemv_a8_avx512.hpp); on that host it
/// took bf16 from 0.67 / 0.73 to 0.92 / 0.87 of the triad bandwidth (K x N = 2048 x 10944 /
/// 7168 x 2048, docs/performance.md, seventh pass).
inline constexpr std::size_t gemv_fast_prefetch_bytes = 16384;

/// Factor that turns load8's value into the code value: FP8 goes through fp16 patterns
/// (fp8_fp16_rescale: 256 for E4M3), the other formats are exact.
template <class F>
inline constexpr float load8_rescale =
    F::kind == quant::format_kind::fp8_block ? fp8_fp16_rescale<typename F::code_type> : 1.0f;

/// y[m, n] for n in [n0, n1), m < M, fast mode, formats other than int4. `x` rows have stride ldx.
/// Roofline: streams (n1 - n0) * K code bytes (+ scales) once; 2 * M FLOPs per weight; x (4*M*K
/// bytes) stays in L1/L2. R rows at a time share each x load (R*M independent FMA chains).
template <class F, int M>
void gemv_avx2(const qmatrix<F>& w, const float* x, index_t ldx, index_t n0, index_t n1, float* y, index_t ldy) {
  using namespace quant;
  constexpr int R = M == 1 ? 4 : (M == 2 ? 2 : 1);
  const index_t K = w.cols();
  // Scale span along K: one scale per `span` weights (dense and rowwise: the whole row).
  index_t span = K;
  if constexpr (F::kind == format_kind::fp8_block || F::kind == format_kind::int8_group) span = F::group;
  const param_prefetcher<F, _MM_HINT_T1> params(w, gemv_fast_prefetch_bytes);
  for (index_t n = n0; n < n1; n += R) {
    const int rr = static_cast<int>(std::min<index_t>(R, n1 - n));
    params.rows(n, R);
    const typename F::code_type* rows[R];
    for (int r = 0; r < R; ++r) rows[r] = w.row_codes(n + std::min(r, rr - 1));
    __m256 total[R][M];
    float stail[R][M] = {};
    __m128i nan[R];
    for (int r = 0; r < R; ++r) {
      nan[r] = _mm_setzero_si128();
      for (int m = 0; m < M; ++m) total[r][m] = _mm256_setzero_ps();
    }
    for (index_t g0 = 0; g0 < K; g0 += span) {
      const index_t g1 = std::min(K, g0 + span);
      __m256 acc[R][M];
      float tail[R][M] = {};
      MOELA_UNROLL for (int r = 0; r < R; ++r) MOELA_UNROLL for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
      index_t k = g0;
      if constexpr (use_load16<F, M>) {
        __m256 acc2[R][M];  // a second chain per output: two dependent FMAs per step would wait on each other
        MOELA_UNROLL for (int r = 0; r < R; ++r) MOELA_UNROLL for (int m = 0; m < M; ++m) acc2[r][m] = _mm256_setzero_ps();
        for (; k + 16 <= g1; k += 16) {
          __m256 xa[M], xb[M];
          MOELA_UNROLL for (int m = 0; m < M; ++m) x16<F>(x + m * ldx + k, xa[m], xb[m]);
          MOELA_UNROLL for (int r = 0; r < R; ++r) {
            __m256 wa, wb;
            prefetch_ahead<gemv_fast_prefetch_bytes, _MM_HINT_T1>(rows[r] + k);
            load16<F>(rows[r] + k, wa, wb, nan[r]);
            MOELA_UNROLL for (int m = 0; m < M; ++m) {
              acc[r][m] = _mm256_fmadd_ps(wa, xa[m], acc[r][m]);
              acc2[r][m] = _mm256_fmadd_ps(wb, xb[m], acc2[r][m]);
            }
          }
        }
        MOELA_UNROLL for (int r = 0; r < R; ++r) MOELA_UNROLL for (int m = 0; m < M; ++m) acc[r][m] = _mm256_add_ps(acc[r][m], acc2[r][m]);
      }
      for (; k + 8 <= g1; k += 8) {
        __m256 xv[M];
        MOELA_UNROLL for (int m = 0; m < M; ++m) xv[m] = _mm256_loadu_ps(x + m * ldx + k);
        MOELA_UNROLL for (int r = 0; r < R; ++r) {
          prefetch_ahead<gemv_fast_prefetch_bytes, _MM_HINT_T1>(rows[r] + k);
          const __m256 wv = load8<F>(rows[r] + k, nan[r]);
          MOELA_UNROLL for (int m = 0; m < M; ++m) acc[r][m] = _mm256_fmadd_ps(wv, xv[m], acc[r][m]);
        }
      }
      for (; k < g1; ++k)
        for (int r = 0; r < R; ++r) {
          const float wv = w.code_at(n + std::min(r, rr - 1), k) / load8_rescale<F>;
          for (int m = 0; m < M; ++m) tail[r][m] += wv * x[m * ldx + k];
        }
      if constexpr (F::has_scales) {
        MOELA_UNROLL for (int r = 0; r < R; ++r) {
          const float s = w.scale_at(n + std::min(r, rr - 1), g0) * load8_rescale<F>;
          const __m256 sv = _mm256_set1_ps(s);
          MOELA_UNROLL for (int m = 0; m < M; ++m) {
            total[r][m] = _mm256_fmadd_ps(acc[r][m], sv, total[r][m]);
            stail[r][m] += tail[r][m] * s;
          }
        }
      } else {
        MOELA_UNROLL for (int r = 0; r < R; ++r) MOELA_UNROLL for (int m = 0; m < M; ++m) {
          total[r][m] = _mm256_add_ps(total[r][m], acc[r][m]);
          stail[r][m] += tail[r][m];
        }
      }
    }
    for (int r = 0; r < rr; ++r) {
      // A NaN weight makes every product of its row NaN (IEEE: NaN * x = NaN for every x), so
      // the row's outputs are NaN, as dequantize-then-multiply gives (E4M3 only: load8 decodes
      // its NaN codes to finite values; the scalar tail above already produced NaN via code_at).
      bool row_nan = false;
      if constexpr (std::is_same_v<typename F::code_type, fp8_e4m3>)
        row_nan = e4m3_nan_seen(nan[r]);
      for (int m = 0; m < M; ++m)
        y[m * ldy + n + r] = row_nan ? std::numeric_limits<float>::quiet_NaN() : hsum_ps(total[r][m]) + stail[r][m];
    }
  }
}

/// xsum[g] = Σ x over group g (G wide) for g < K / G: what the int4 GEMV kernels (AVX2 and
/// AVX-512) take the code offset off with.
inline void int4_group_sums(const float* x, index_t K, index_t G, float* xsum) {
  for (index_t g = 0; g < K / G; ++g) {
    float s = 0;
    for (index_t k = g * G; k < (g + 1) * G; ++k) s += x[k];
    xsum[g] = s;
  }
}

/// Permutes x for the int4 kernel: within each 64-wide chunk, xp[c*64 + s*8 + L] = x[c*64 + 8L + s]
/// (the order in which nibble s of 32-bit lane L comes out of a 32-byte load); a last partial
/// chunk (K % 64 == 32) is copied unpermuted. Also writes the group sums xsum[g] = Σ x over
/// group g (G wide), used to remove the code offset (8 for signed codes, the zero point).
inline void int4_prepare_x(const float* x, index_t K, index_t G, float* xp, float* xsum) {
  index_t c = 0;
  for (; c + 64 <= K; c += 64)
    for (int s = 0; s < 8; ++s)
      for (int L = 0; L < 8; ++L) xp[c + s * 8 + L] = x[c + 8 * L + s];
  for (; c < K; ++c) xp[c] = x[c];
  int4_group_sums(x, K, G, xsum);
}

/// Roofline: streams K/2 code bytes + K/G scales (+ zeros) per row; 2 * M FLOPs per weight plus
/// one FMA per 64 weights for the scales and K/G scalar FMAs per row for the offsets.
/// y[m, n] for n in [n0, n1), int4 formats. `xp` = int4_prepare_x'd rows (stride ldx), `xsum`
/// rows of K/G group sums (stride K/G). Codes are taken as unsigned u (signed codes: u = c + 8,
/// by flipping bit 3 of every nibble), so w = (u - z) * s with z = 8 or the zero point, and
/// Σ w x = Σ_g s_g (Σ_{k in g} u_k x_k - z_g xsum_g).
template <class F, int M>
void gemv_avx2_int4(const qmatrix<F>& w, const float* xp, index_t ldx, const float* xsum, index_t n0, index_t n1,
                    float* y, index_t ldy) {
  constexpr index_t G = F::group;
  constexpr int R = M == 1 ? 2 : 1;
  const index_t K = w.cols(), ng = K / G, kfull = K / 64 * 64;
  const __m256i mask = _mm256_set1_epi32(0x0F0F0F0F);
  const __m256i flip = _mm256_set1_epi8(F::has_zero ? 0 : static_cast<char>(0x88));
  const param_prefetcher<F, _MM_HINT_T1> params(w, gemv_fast_prefetch_bytes);
  for (index_t n = n0; n < n1; n += R) {
    const int rr = static_cast<int>(std::min<index_t>(R, n1 - n));
    params.rows(n, R);
    const std::uint8_t* rows[R];
    const typename F::scale_type* srow[R];
    for (int r = 0; r < R; ++r) {
      const index_t nr = n + std::min(r, rr - 1);
      rows[r] = w.row_codes(nr);
      srow[r] = w.scale_data() + nr * ng;
    }
    __m256 total[R][M];
    for (int r = 0; r < R; ++r)
      for (int m = 0; m < M; ++m) total[r][m] = _mm256_setzero_ps();
    for (index_t c = 0; c < kfull; c += 64) {
      __m256 acc[R][M];
      MOELA_UNROLL for (int r = 0; r < R; ++r) MOELA_UNROLL for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
      __m256i v[R];
      MOELA_UNROLL for (int r = 0; r < R; ++r) {
        prefetch_ahead<gemv_fast_prefetch_bytes, _MM_HINT_T1>(rows[r] + c / 2);
        v[r] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[r] + c / 2)), flip);
      }
      // Nibble s of each 32-bit lane: even s from the low nibbles, odd s from the high ones.
      MOELA_UNROLL for (int r = 0; r < R; ++r) {
        const __m256i lo = _mm256_and_si256(v[r], mask), hi = _mm256_and_si256(_mm256_srli_epi32(v[r], 4), mask);
        MOELA_UNROLL for (int s = 0; s < 8; ++s) {
          const __m256i src = (s & 1) ? hi : lo;
          const __m256i q = _mm256_and_si256(_mm256_srli_epi32(src, 8 * (s / 2)), _mm256_set1_epi32(0xFF));
          const __m256 wv = _mm256_cvtepi32_ps(q);
          MOELA_UNROLL for (int m = 0; m < M; ++m)
            acc[r][m] = _mm256_fmadd_ps(wv, _mm256_loadu_ps(xp + m * ldx + c + 8 * s), acc[r][m]);
        }
      }
      // Scales: lane L covers k = c + 8L .. c + 8L + 7, i.e. group (c + 8L) / G.
      MOELA_UNROLL for (int r = 0; r < R; ++r) {
        __m256 sv;
        if constexpr (G == 32) {
          const float s0 = quant::detail::scale_to_float(srow[r][c / G]);
          const float s1 = quant::detail::scale_to_float(srow[r][c / G + 1]);
          sv = _mm256_set_m128(_mm_set1_ps(s1), _mm_set1_ps(s0));  // (not setr: see gemv_a8_avx2.hpp)
        } else {
          sv = _mm256_set1_ps(quant::detail::scale_to_float(srow[r][c / G]));
        }
        MOELA_UNROLL for (int m = 0; m < M; ++m) total[r][m] = _mm256_fmadd_ps(acc[r][m], sv, total[r][m]);
      }
    }
    for (int r = 0; r < rr; ++r) {
      const index_t nr = n + r;
      for (int m = 0; m < M; ++m) {
        float sum = hsum_ps(total[r][m]);
        // Tail (K % 64 == 32): scalar over the unpermuted x copy.
        for (index_t k = kfull; k < K; ++k) sum += w.at(nr, k) * xp[m * ldx + k];
        // Offset removal over the full chunks' groups: - Σ_g s_g z_g xsum_g.
        float corr = 0;
        for (index_t g = 0; g < kfull / G; ++g) {
          const float z = F::has_zero ? float(w.zero_data()[nr * ng + g]) : 8.0f;
          corr += quant::detail::scale_to_float(srow[r][g]) * z * xsum[m * ng + g];
        }
        y[m * ldy + nr] = sum - corr;
      }
    }
  }
}

}  // namespace moela::detail

#endif  // MOELA_X86_AVX2_KERNELS
