#pragma once
/// \file moela/backend/cpu/x86/gemv_a8_avx512.hpp
/// Integer GEMV kernels of `quant::mode::int8_activations` (W8A8 / W4A8) for M = 1..4 rows on
/// AVX-512 VNNI (internal; used by moela/backend/cpu/qgemm.hpp in place of the AVX2 kernels of
/// gemv_a8_avx2.hpp, whose numerics they share: exact int32 sums per span, then
/// `y += float(Σ q·c) · (s_w · s_x)`).
///
/// - int8 codes (int8_rowwise, int8_group<G> with G % 64 == 0): per 64 weights one load, one xor
///   (u = c ^ 0x80 = c + 128, the unsigned operand) and one `vpdpbusd` with the signed activation
///   codes; the accumulator starts at `-128 Σ q` of those 64 activations (precomputed per call, in
///   one lane), so its lanes sum to `Σ q·c` exactly; then a convert and an FMA with `s_w · s_x`.
/// - int4 codes: per 128 weights (one 64-byte load, exactly one activation group) one xor (the
///   offset-8 flip of symmetric codes), two masks and a shift split the nibbles into two byte
///   vectors u in [0, 15], each multiplied by `vpdpbusd` with the activations permuted to match
///   (even codes, then odd codes of the chunk); a lane covers 8 consecutive codes, so it belongs
///   to one weight group and is scaled by its group's scale. The offset Σ z·q (z = 8, or the zero
///   point) is taken off once per row, as in the AVX2 kernel (a8_int4_correction).
///
/// Roofline: int8 ~6 vector ops per 64 weight bytes, int4 ~10 per 64 bytes (128 weights),
/// against 12 and 22 for the AVX2 kernels (256-bit ops count as one on Zen 4, 512-bit as two
/// halves at twice the work): fewer than DRAM delivers bytes per cycle to one core, so the
/// target is the triad bandwidth. Measured: docs/performance.md.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "moela/backend/cpu/x86/avx512_qdot.hpp"
#include "moela/backend/cpu/x86/gemv_a8_avx2.hpp"
#include "moela/quant/qmatrix.hpp"

#if defined(MOELA_AVX512_VNNI_KERNELS) && defined(MOELA_X86_AVX2_KERNELS)
#define MOELA_AVX512_GEMV_A8 1

namespace moela::detail {

/// Software prefetch of these kernels: 16 KiB ahead into L2 (`Ahead`, `Hint` of the kernels; the
/// template parameters exist for measuring). On Zen 4, 1 thread, K = 2048 and 7168, the AVX2
/// kernels' 8 KiB into L1 gave int4 15-17.6 GB/s and int8 19.5-20 GB/s at K = 7168; 16 KiB into
/// L2 gave 18.8-22.6 and 24.1-24.5 GB/s (8 and 32 KiB into L2 in between; no prefetch 14-20).
inline constexpr std::size_t gemv_avx512_prefetch_bytes = 16384;

/// The int8 kernel's formats: one weight scale per 64-wide chunk.
template <class F>
inline constexpr bool a8_int8_vnni_ok =
    F::kind == quant::format_kind::int8_rowwise || (F::kind == quant::format_kind::int8_group && F::group % 64 == 0);

/// Accumulator starts of the int8 kernel: `init[c] = -128 Σ xq[64c .. 64c + 63]` for every whole
/// 64-wide chunk c of a row.
inline void a8_int8_prepare_512(const std::int8_t* xq, index_t K, std::int32_t* init) {
  const __m512i ones = _mm512_set1_epi8(1);
  for (index_t c = 0; c + 64 <= K; c += 64)
    init[c / 64] = -128 * hsum_epi32_512<xsimd::avx512bw>(
                              _mm512_dpbusd_epi32(_mm512_setzero_si512(), ones, _mm512_loadu_si512(xq + c)));
}

/// y[m, n] for n in [n0, n1), m < M: int8 weights (a8_int8_vnni_ok), activation codes `xq` (rows of
/// stride ldx), their `init` (a8_int8_prepare_512, rows of stride ldi) and group scales `sx`.
template <class F, int M, std::size_t Ahead = gemv_avx512_prefetch_bytes, int Hint = _MM_HINT_T1>
void gemv_a8_avx512_int8(const qmatrix<F>& w, const std::int8_t* xq, index_t ldx, const std::int32_t* init,
                         index_t ldi, const float* sx, index_t lds, index_t n0, index_t n1, float* y, index_t ldy) {
  static_assert(a8_int8_vnni_ok<F>);
  constexpr int R = M == 1 ? 4 : (M == 2 ? 2 : 1);
  const index_t K = w.cols(), kfull = K / 64 * 64;
  const index_t wg = F::group == 0 ? K : F::group;
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  const param_prefetcher<F, Hint> params(w, Ahead);
  for (index_t n = n0; n < n1; n += R) {
    const int rr = static_cast<int>(std::min<index_t>(R, n1 - n));
    const a8_rows<F, R> rw(w, n, rr);
    params.rows(n, R);
    const auto& rows = rw.codes;
    const auto& srow = rw.scales;
    __m512 total[R][M];
    MOELA_UNROLL for (int r = 0; r < R; ++r) MOELA_UNROLL for (int m = 0; m < M; ++m) total[r][m] = _mm512_setzero_ps();
    for (index_t c = 0; c < kfull; c += 64) {
      __m512i xv[M];
      __m512 sxv[M];
      MOELA_UNROLL for (int m = 0; m < M; ++m) {
        xv[m] = _mm512_loadu_si512(xq + m * ldx + c);
        sxv[m] = _mm512_set1_ps(sx[m * lds + c / a8_group]);
      }
      MOELA_UNROLL for (int r = 0; r < R; ++r) {
        prefetch_ahead<Ahead, Hint>(rows[r] + c);
        const __m512i u = _mm512_xor_si512(_mm512_loadu_si512(rows[r] + c), bias);
        const __m512 sw = _mm512_set1_ps(quant::detail::scale_to_float(srow[r][c / wg]));
        MOELA_UNROLL for (int m = 0; m < M; ++m) {
          // The start in lane 0 only: the lanes are summed at the end.
          const __m512i acc = _mm512_dpbusd_epi32(_mm512_maskz_set1_epi32(1, init[m * ldi + c / 64]), u, xv[m]);
          total[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(sw, sxv[m]), total[r][m]);
        }
      }
    }
    for (int r = 0; r < rr; ++r)
      for (int m = 0; m < M; ++m) {
        float sum = hsum_ps_512<xsimd::avx512bw>(total[r][m]);
        for (index_t a = kfull; a < K;) {  // the tail (< 64 codes), exact per span
          const index_t b = std::min({K, (a / wg + 1) * wg, (a / a8_group + 1) * a8_group});
          std::int32_t acc = 0;
          for (index_t k = a; k < b; ++k) acc += std::int32_t(rows[r][k]) * std::int32_t(xq[m * ldx + k]);
          sum += static_cast<float>(acc) * (quant::detail::scale_to_float(srow[r][a / wg]) * sx[m * lds + a / a8_group]);
          a = b;
        }
        y[m * ldy + n + r] = sum;
      }
  }
}

/// Activation layout of the int4 kernel: a8_int4_prepare<128> (gemv_a8_avx2.hpp): within each
/// 128-wide chunk c, xp[c + j] = xq[c + 2j] and xp[c + 64 + j] = xq[c + 2j + 1] (j < 64), the
/// order of the low and high nibbles of a 64-byte load; a last partial chunk zero-padded.

/// The 16 lanes' weight scales of a 128-code chunk: lane i covers codes 8i .. 8i + 7, i.e. group
/// 8i / G of the chunk (`s` points at the chunk's first group).
template <index_t G, class S>
MOELA_ALWAYS_INLINE __m512 a8_lane_scales(const S* s) {
  if constexpr (G == 128) {
    return _mm512_set1_ps(quant::detail::scale_to_float(s[0]));
  } else {
    __m128 v;
    if constexpr (std::is_same_v<S, float>) {
      if constexpr (G == 32) {
        v = _mm_loadu_ps(s);
      } else {  // two floats; memcpy, as they need not be 8-byte aligned
        long long two;
        std::memcpy(&two, s, sizeof two);
        v = _mm_castsi128_ps(_mm_cvtsi64_si128(two));
      }
    } else {
      const __m128i h = G == 32 ? _mm_loadl_epi64(reinterpret_cast<const __m128i*>(s))
                                : _mm_cvtsi32_si128(static_cast<int>(std::uint32_t(s[0].bits) | (std::uint32_t(s[1].bits) << 16)));
      v = _mm_castsi128_ps(_mm_slli_epi32(_mm_cvtepu16_epi32(h), 16));
    }
    const __m512i idx = G == 32 ? _mm512_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3)
                                : _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
    return _mm512_permutexvar_ps(idx, _mm512_zextps128_ps512(v));
  }
}

/// a8_lane_scales of a last partial chunk that holds `groups` whole groups (those from `s` on):
/// the lanes of the groups past K, which are not there, get scale 0.
template <index_t G, class S>
MOELA_ALWAYS_INLINE __m512 a8_lane_scales_partial(const S* s, index_t groups) {
  float part[128 / G] = {};
  for (index_t g = 0; g < groups; ++g) part[g] = quant::detail::scale_to_float(s[g]);
  return a8_lane_scales<G>(part);
}

/// Walks R int4 rows (packed codes at rows[r], K codes each) in 128-code chunks: `chunk(c, src,
/// partial)` for every whole chunk at code c (row r's 64 bytes at src[r], prefetched `Ahead`
/// bytes ahead with `Hint`), then for a last partial chunk (K % 128 = 32, 64 or 96) from
/// zero-padded copies of the rows' last codes, with `partial` true. The int4 GEMVs' one loop.
template <int R, std::size_t Ahead, int Hint, class Chunk>
MOELA_ALWAYS_INLINE void int4_chunks(const std::uint8_t* const (&rows)[R], index_t K, Chunk&& chunk) {
  const index_t kfull = K / 128 * 128;
  for (index_t c = 0; c < kfull; c += 128) {
    const std::uint8_t* src[R];
    MOELA_UNROLL for (int r = 0; r < R; ++r) {
      src[r] = rows[r] + c / 2;
      prefetch_ahead<Ahead, Hint>(src[r]);
    }
    chunk(c, src, false);
  }
  if (kfull < K) {
    alignas(64) std::uint8_t tail[R][64] = {};
    const std::uint8_t* src[R];
    for (int r = 0; r < R; ++r) {
      std::memcpy(tail[r], rows[r] + kfull / 2, static_cast<std::size_t>((K - kfull) / 2));
      src[r] = tail[r];
    }
    chunk(kfull, src, true);
  }
}

/// y[m, n] for n in [n0, n1), int4_group weights; `xp`/`gsum` from a8_int4_prepare<128> (strides
/// ldp and ldp / 32), `sx` the activation group scales (stride lds).
///
/// A last partial chunk (K % 128 = 32, 64 or 96: K is a multiple of G) goes through the same
/// chunk body as the others, from a zero-padded copy of the row's last codes: xp is zero past K,
/// so the padding contributes nothing, and the lanes of groups past K get scale 0.
template <class F, int M, std::size_t Ahead = gemv_avx512_prefetch_bytes, int Hint = _MM_HINT_T1>
void gemv_a8_avx512_int4(const qmatrix<F>& w, const std::int8_t* xp, index_t ldp, const float* gsum, const float* sx,
                         index_t lds, index_t n0, index_t n1, float* y, index_t ldy) {
  constexpr index_t G = F::group;
  constexpr int R = M == 1 ? 2 : 1;
  const index_t K = w.cols();
  const __m512i mask = _mm512_set1_epi8(0x0F);
  const __m512i flip = _mm512_set1_epi8(F::has_zero ? 0 : static_cast<char>(0x88));
  const param_prefetcher<F, Hint> params(w, Ahead);
  for (index_t n = n0; n < n1; n += R) {
    const int rr = static_cast<int>(std::min<index_t>(R, n1 - n));
    const a8_rows<F, R> rw(w, n, rr);
    params.rows(n, R);
    const auto& rows = rw.codes;
    const auto& srow = rw.scales;
    const auto& zrow = rw.zeros;
    __m512 total[R][M];
    MOELA_UNROLL for (int r = 0; r < R; ++r) MOELA_UNROLL for (int m = 0; m < M; ++m) total[r][m] = _mm512_setzero_ps();
    // One 128-code chunk at code c, row r's 64 code bytes at src[r]; `partial`: the last chunk,
    // shorter than 128 codes (a constant at each call).
    auto chunk = [&](index_t c, const std::uint8_t* const (&src)[R], bool partial) MOELA_ALWAYS_INLINE_LAMBDA {
      __m512i xe[M], xo[M];
      __m512 sxv[M];
      MOELA_UNROLL for (int m = 0; m < M; ++m) {
        xe[m] = _mm512_loadu_si512(xp + m * ldp + c);
        xo[m] = _mm512_loadu_si512(xp + m * ldp + c + 64);
        sxv[m] = _mm512_set1_ps(sx[m * lds + c / a8_group]);
      }
      MOELA_UNROLL for (int r = 0; r < R; ++r) {
        const __m512i v = _mm512_xor_si512(_mm512_loadu_si512(src[r]), flip);
        const __m512i lo = _mm512_and_si512(v, mask), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), mask);
        const __m512 sw = partial ? a8_lane_scales_partial<G>(srow[r] + c / G, (K - c) / G)
                                  : a8_lane_scales<G>(srow[r] + c / G);
        MOELA_UNROLL for (int m = 0; m < M; ++m) {
          const __m512i acc = _mm512_dpbusd_epi32(_mm512_dpbusd_epi32(_mm512_setzero_si512(), lo, xe[m]), hi, xo[m]);
          total[r][m] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc), _mm512_mul_ps(sw, sxv[m]), total[r][m]);
        }
      }
    };
    int4_chunks<R, Ahead, Hint>(rows, K, chunk);
    for (int r = 0; r < rr; ++r)
      for (int m = 0; m < M; ++m)
        y[m * ldy + n + r] = hsum_ps_512<xsimd::avx512bw>(total[r][m]) -
                             a8_int4_correction<F>(srow[r], zrow[r], gsum + m * (ldp / 32), K / G);
  }
}

}  // namespace moela::detail

#endif  // MOELA_AVX512_VNNI_KERNELS && MOELA_X86_AVX2_KERNELS
