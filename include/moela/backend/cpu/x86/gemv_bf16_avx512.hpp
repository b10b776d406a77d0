#pragma once
/// \file moela/backend/cpu/x86/gemv_bf16_avx512.hpp
/// The `quant::mode::bf16_activations` GEMV for int4_group weights, M = 1..4 rows, on AVX512-BF16
/// (internal; used by moela/backend/cpu/qgemm.hpp, `qgemv_bf16`, which runs more rows in blocks
/// of 4).
///
/// The fp32-activation kernel of gemv_avx512.hpp spends 16 decode ops and 8 FMAs on 128 int4
/// weights, which on Zen 4 (512-bit ops in two 256-bit halves) is slower than DRAM delivers the
/// 64 bytes. With bf16 activations the same decode trick fills a 32-bit lane with *two* bf16
/// weights, and `vdpbf16ps` multiplies 32 of them per instruction:
/// - a 64-byte load holds 128 codes; 32-bit lane i holds codes 8i .. 8i + 7, nibble j = code 8i + j;
/// - for s = 0..3 one shift moves nibbles s and s + 4 to bits 3..6 and 19..22 (the top mantissa
///   bits of the lane's low and high bf16 word), and one `vpternlogd` puts them under the
///   exponent of 1.0: the bf16 pair (1 + u/16) for codes 8i + s and 8i + s + 4, exact (u: the
///   nibble, sign-flipped to c + 8 for symmetric codes);
/// - one `vdpbf16ps` per s with the activations laid out to match (`bf16_int4_prepare`): the
///   products of two bf16 are exact in fp32, summed in fp32;
/// - lane i covers one weight group (G >= 8), so the chunk's sums take their group's scale in
///   one FMA, and Σ (u - z) x = 16 Σ (1 + u/16) x - (16 + z) Σ x removes the offsets once per row
///   (int4_offset_sum, from the group sums of the same bf16 activations).
/// Per 128 weights: 4 shifts + 4 ternlogs + 4 `vdpbf16ps` + ~3 ops for the lane scales and the
/// scaled add: about half the fp32 kernel's ops per byte.
///
/// Numerics: y = Σ_g s_g Σ_{k in g} (c_k - z_g) bf16(x_k), products exact, fp32 sums; bf16
/// activations below 2^-126 (bf16 subnormals) count as zero, as `vdpbf16ps` reads them (DAZ),
/// also in the group sums, so both sides of the offset subtraction see the same values.
///
/// Roofline (per call): bytes = K/2 + 4K/G (+ K/G zero points) per weight row, FLOPs = 2 M N K;
/// memory bound for M <= 4: the target is the weights streamed at the triad bandwidth.

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>

#include "moela/backend/cpu/x86/avx512_qdot.hpp"
#include "moela/backend/cpu/x86/gemv_avx512.hpp"
#include "moela/quant/qmatrix.hpp"

#if defined(MOELA_AVX512_BF16_KERNELS) && defined(MOELA_AVX512_GEMV_FAST)
#define MOELA_AVX512_GEMV_BF16 1

namespace moela::detail {

/// Lays out one bf16 activation row for gemv_bf16_avx512_int4: within each 128-wide chunk c,
/// `xp[c + 32 s + 2 i + h] = x[c + 8 i + s + 4 h]` (s < 4, i < 16, h < 2: the order of the
/// decoder's bf16 pairs), zeros past K (xp holds K rounded up to 128), bf16 subnormals flushed
/// to zero; `gsum[g]` = Σ of those values over weight group g (G wide, a multiple of 32, K a
/// multiple of G), in fp32. One pass over x: per chunk 4 loads and flushes, 8 two-source word
/// permutes and 4 blends; each 32-word block (inside one group) also widened into its group's sum.
inline void bf16_int4_prepare(const bf16* x, index_t K, index_t G, bf16* xp, float* gsum) {
  // Output word 2i + h of vector s takes input word 8i + 4h + s: of the chunk's first 64 words
  // (i < 8, the low 16 outputs) or of its last 64 (i >= 8, the high 16), 6-bit indices into a
  // pair of 32-word registers.
  static constexpr auto base = [] {
    std::array<std::int16_t, 32> b{};
    for (int i = 0; i < 16; ++i)
      for (int h = 0; h < 2; ++h) b[static_cast<std::size_t>(2 * i + h)] = static_cast<std::int16_t>((8 * i + 4 * h) % 64);
    return b;
  }();
  __m512i idx[4];
  for (int s = 0; s < 4; ++s)
    idx[s] = _mm512_add_epi16(_mm512_loadu_si512(base.data()), _mm512_set1_epi16(static_cast<short>(s)));
  const __mmask32 low = 0x0000FFFFu;
  const __m512i high_words = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m512 acc = _mm512_setzero_ps();  // the current group's sum
  const index_t Kp = (K + 127) / 128 * 128;
  for (index_t c = 0; c < Kp; c += 128) {
    __m512i in[4];  // K is a multiple of 32 (of G): a 32-word block is all in K or all past it
    for (int q = 0; q < 4; ++q) {
      const index_t k = c + 32 * q;
      if (k >= K) {
        in[q] = _mm512_setzero_si512();
        continue;
      }
      // Words whose exponent is 0 (zero, subnormal) become +0.
      const __m512i v = _mm512_loadu_si512(x + k);
      in[q] = _mm512_maskz_mov_epi16(_mm512_test_epi16_mask(v, _mm512_set1_epi16(0x7F80)), v);
      acc = _mm512_add_ps(acc, _mm512_castsi512_ps(_mm512_slli_epi32(in[q], 16)));  // even words
      acc = _mm512_add_ps(acc, _mm512_castsi512_ps(_mm512_and_si512(in[q], high_words)));
      if ((k + 32) % G == 0) {
        gsum[k / G] = hsum_ps_512<xsimd::avx512bw>(acc);
        acc = _mm512_setzero_ps();
      }
    }
    for (int s = 0; s < 4; ++s) {
      const __m512i lo = _mm512_permutex2var_epi16(in[0], idx[s], in[1]), hi = _mm512_permutex2var_epi16(in[2], idx[s], in[3]);
      _mm512_storeu_si512(xp + c + 32 * s, _mm512_mask_blend_epi16(low, hi, lo));
    }
  }
}

/// y[m, n] for n in [n0, n1), m < M: int4_group weights, activations `xp` from bf16_int4_prepare
/// (rows of stride ldp, a multiple of 128) and their group sums `gsum` (rows of stride K / G).
///
/// Per chunk, for each pair s: the s-th activation vector of each of the M rows is loaded once and
/// multiplied with pair s of R weight rows (one accumulator per row and activation row, 4 chained
/// `vdpbf16ps`, then one FMA with the lane scales). A last partial chunk (K % 128 = 32, 64 or 96) goes
/// through the same chunk body from a zero-padded copy of the row's last codes (int4_chunks):
/// xp is zero past K, and the lanes of the groups past K get scale 0.
template <class F, int M>
void gemv_bf16_avx512_int4(const qmatrix<F>& w, const bf16* xp, index_t ldp, const float* gsum, index_t n0, index_t n1,
                           float* y, index_t ldy) {
  static_assert(F::kind == quant::format_kind::int4_group);
  constexpr index_t G = F::group;
  constexpr int R = M == 1 ? 4 : 2;  // rows per pass
  const index_t K = w.cols(), ng = K / G;
  const __m512i mask = _mm512_set1_epi32(0x00780078);  // bits 3..6 of both bf16 words
  // 1.0 in both words; symmetric codes also flip the nibble's sign bit (bit 6) to get u = c + 8.
  const __m512i one = _mm512_set1_epi32(F::has_zero ? 0x3F803F80 : 0x3FC03FC0);
  const param_prefetcher<F, _MM_HINT_T1> params(w, gemv_fast_prefetch_bytes);
  for (index_t n = n0; n < n1; n += R) {
    const int rr = static_cast<int>(std::min<index_t>(R, n1 - n));
    const a8_rows<F, R> rw(w, n, rr);
    params.rows(n, R);
    const auto& srow = rw.scales;
    __m512 total[R][M];
    MOELA_UNROLL for (int r = 0; r < R; ++r) MOELA_UNROLL for (int m = 0; m < M; ++m) total[r][m] = _mm512_setzero_ps();
    // One 128-code chunk at code c, row r's 64 code bytes at src[r]; `partial`: the last chunk,
    // shorter than 128 codes (a constant at each call).
    auto chunk = [&](index_t c, const std::uint8_t* const (&src)[R], bool partial) MOELA_ALWAYS_INLINE_LAMBDA {
      __m512i v[R];
      __m512 acc[R][M];
      MOELA_UNROLL for (int r = 0; r < R; ++r) {
        v[r] = _mm512_loadu_si512(src[r]);
        MOELA_UNROLL for (int m = 0; m < M; ++m) acc[r][m] = _mm512_setzero_ps();
      }
      // Pair s of every row: codes 8i + s and 8i + s + 4 of lane i, times the activations' s-th
      // vector of each of the M rows.
      MOELA_UNROLL for (int s = 0; s < 4; ++s) {
        __m512i xv[M];
        MOELA_UNROLL for (int m = 0; m < M; ++m) xv[m] = _mm512_loadu_si512(xp + m * ldp + c + 32 * s);
        MOELA_UNROLL for (int r = 0; r < R; ++r) {
          const __m512i t = s == 0 ? _mm512_slli_epi32(v[r], 3) : _mm512_srli_epi32(v[r], 4 * s - 3);
          const __m512i wv = _mm512_ternarylogic_epi32(t, mask, one, ternlog_select_xor);
          MOELA_UNROLL for (int m = 0; m < M; ++m) acc[r][m] =
              _mm512_dpbf16_ps(acc[r][m], reinterpret_cast<const __m512bh&>(wv), reinterpret_cast<const __m512bh&>(xv[m]));
        }
      }
      MOELA_UNROLL for (int r = 0; r < R; ++r) {
        const __m512 sw = partial ? a8_lane_scales_partial<G>(srow[r] + c / G, (K - c) / G)
                                  : a8_lane_scales<G>(srow[r] + c / G);
        MOELA_UNROLL for (int m = 0; m < M; ++m) total[r][m] = _mm512_fmadd_ps(acc[r][m], sw, total[r][m]);
      }
    };
    int4_chunks<R, gemv_fast_prefetch_bytes, _MM_HINT_T1>(rw.codes, K, chunk);
    for (int r = 0; r < rr; ++r)
      for (int m = 0; m < M; ++m) {
        // Σ_g s_g (u - z) x = 16 Σ_g s_g Σ (1 + u/16) x - Σ_g s_g (16 + z_g) gsum_g.
        float rest;
        const __m512 off = int4_offset_sum<F>(srow[r], rw.zeros[r], gsum + m * ng, ng, rest);
        y[m * ldy + n + r] = hsum_ps_512<xsimd::avx512bw>(_mm512_fmsub_ps(total[r][m], _mm512_set1_ps(16.0f), off)) - rest;
      }
  }
}

}  // namespace moela::detail

#endif  // MOELA_AVX512_BF16_KERNELS && MOELA_AVX512_GEMV_FAST
