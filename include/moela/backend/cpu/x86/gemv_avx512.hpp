#pragma once
/// \file moela/backend/cpu/x86/gemv_avx512.hpp
/// Fast-mode (fp32 activations) decode-and-multiply GEMV kernels for M = 1..4 rows on AVX-512
/// (internal; used by moela/backend/cpu/qgemm.hpp in place of gemv_avx2.hpp's kernels for the
/// FP8, INT8 and INT4 formats when the build and Arch have AVX512-BW and VNNI).
///
/// Every kernel walks a row in chunks of one 64-byte load and decodes the chunk into fp32 vectors
/// of 16 weights, each multiplied with 16 activations that `fast512_prepare_x` laid out in the
/// order the decoder produces them (so no decoder needs a shuffle); the scale of a span (an FP8
/// block's columns, an INT8 group or row) multiplies the span's partial sums once. Per 64 bytes:
/// - FP8 (64 codes), with AVX512-VBMI: two table lookups (`vpermt2b` over the 128 bf16 patterns
///   of the non-negative codes, `fp8_bf16_table`) give each code's bf16 high and low byte, one
///   `vpternlogd` ORs the sign in, two unpacks interleave them into 16-bit words, and a shift or
///   a mask moves each word to the top of a 32-bit lane: the fp32 value, exact for every code
///   (subnormals, NaN and infinity included). 9 ops + 4 FMA. Without VBMI: two unpacks against
///   zero put each code in the high byte of a 16-bit lane, E4M3 then takes an arithmetic shift
///   and a mask (the code becomes an fp16 bit pattern of value / 256), E5M2 is fp16 already;
///   four `vcvtph2ps`; E4M3 NaN codes (which that pattern makes finite) are tracked by a
///   running byte max. 11 ops + 4 FMA (the AVX2 kernel: 24 + 8). In cache, one thread: E4M3
///   23-25 cycles per 128 weights by table, 31-34 by fp16 (docs/performance.md, twelfth pass).
/// - INT8 (64 codes): four sign-extending loads and converts. 8 ops + 4 FMA.
/// - INT4 (128 codes): for each nibble s of the 32-bit lanes one shift and one `vpternlogd` turn
///   it into the float 1 + u/16 (u: the nibble, sign-flipped to c + 8 for symmetric codes, placed
///   in the top mantissa bits under the exponent of 1.0), exact; then Σ (u - z) x =
///   16 Σ (1 + u/16) x - (16 + z) Σ x, the second term from group sums of x, once per row.
///   16 ops + 8 FMA + 3 for the lane scales (the AVX2 kernel: 44 + 16).
///
/// Roofline (per call): bytes = w.bytes() + 4*M*K; FLOPs = 2*M*N*K: memory bound, so the target
/// is the weights streamed at the triad bandwidth. On Zen 4 (two 256-bit FMA pipes, 512-bit ops
/// take two slots) one core needs ~6 weight bytes per cycle for that: int4 is at the edge
/// (12 fp32 MACs per cycle of 16), FP8 and INT8 have room. Measured: docs/performance.md.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#include "moela/backend/cpu/x86/avx512_qdot.hpp"
#include "moela/backend/cpu/x86/gemv_a8_avx512.hpp"
#include "moela/backend/cpu/x86/gemv_avx2.hpp"
#include "moela/quant/qmatrix.hpp"

// Shares the lane-scale helper of the VNNI GEMV, hence its build condition (AVX512-BW + VNNI).
#ifdef MOELA_AVX512_GEMV_A8
#define MOELA_AVX512_GEMV_FAST 1

namespace moela::detail {

/// Codes per 64-byte chunk of format F's rows (two per byte for int4).
template <class F>
inline constexpr index_t fast512_chunk = F::packed4 ? 128 : 64;

/// FP8 is decoded by table lookup where `fp8_table_decode` (AVX512-VBMI; exact, NaN codes
/// included), else through fp16 patterns and `vcvtph2ps` (E4M3 as value / 256, NaN codes tracked
/// on the side). The factor from a decoded weight to its code value:
template <class F>
inline constexpr float fast512_rescale =
    F::kind == quant::format_kind::fp8_block ? fp8_vector_rescale<typename F::code_type> : 1.0f;

/// The formats and shapes these kernels take: FP8 blocks, INT8 and INT4 whose scale spans along
/// K are whole chunks (FP8 block columns and INT8 groups multiples of 64; INT4 groups are 32,
/// 64 or 128, so a chunk holds whole groups) or the whole row.
template <class F>
inline constexpr bool fast512_format =
    (F::kind == quant::format_kind::fp8_block && F::group % 64 == 0) || F::kind == quant::format_kind::int8_rowwise ||
    (F::kind == quant::format_kind::int8_group && F::group % 64 == 0) || F::kind == quant::format_kind::int4_group;

/// Where activation j of a chunk comes from (the lane order of the decoder's vectors).
template <class F>
constexpr index_t fast512_source(index_t j) {
  if constexpr (F::packed4) {  // vector s, lane i: nibble s of 32-bit lane i = code 8i + s
    return 8 * (j % 16) + j / 16;
  } else if constexpr (F::kind == quant::format_kind::fp8_block && fp8_table_decode) {
    // Vector v (0..3): the even (v even) or odd 16-bit words of the unpack-lo (v < 2) or
    // unpack-hi result; its 32-bit lane e < 16 holds word 2 (e % 4) + v % 2 of 128-bit lane e / 4,
    // i.e. byte 8 (v / 2) + 2 (e % 4) + v % 2 of that lane.
    const index_t v = j / 16, e = j % 16;
    return 16 * (e / 4) + 8 * (v / 2) + 2 * (e % 4) + v % 2;
  } else if constexpr (F::kind == quant::format_kind::fp8_block) {
    // Vector v (0..3) = the low / high 256 bits (v & 1) of the unpack-lo (v < 2) / unpack-hi
    // result; element e < 16 of it: 128-bit lane 2 (v & 1) + e / 8, byte 8 (v / 2) + e % 8.
    const index_t v = j / 16, e = j % 16;
    return 16 * (2 * (v & 1) + e / 8) + 8 * (v / 2) + e % 8;
  } else {  // int8: in order
    return j;
  }
}

/// Lays out one activation row for the kernels: xp[c + j] = x[c + fast512_source<F>(j)] for each
/// chunk c, zeros past K (xp has K rounded up to a chunk). INT4 also gets the group sums
/// gsum[g] = Σ x over group g.
template <class F>
void fast512_prepare_x(const float* x, index_t K, float* xp, float* gsum) {
  constexpr index_t C = fast512_chunk<F>;
  const index_t Kp = (K + C - 1) / C * C;
  for (index_t c = 0; c < Kp; c += C)
    for (index_t j = 0; j < C; ++j) {
      const index_t k = c + fast512_source<F>(j);
      xp[c + j] = k < K ? x[k] : 0.0f;
    }
  if constexpr (F::packed4) int4_group_sums(x, K, F::group, gsum);
}

/// `vpternlogd` immediate of f(a, b, c) = b ? a ^ c : c (a: shifted codes, b: mask, c: constant).
inline constexpr int ternlog_select_xor = 0x6A;

/// Decodes the 64-byte chunk at p into V = fast512_chunk<F> / 16 vectors (lane order of
/// fast512_source), unscaled: FP8 gives value / fast512_rescale, INT4 gives 1 + u / 16. `nan`:
/// the fp16 route's running max of E4M3 code magnitudes (untouched otherwise).
template <class F>
MOELA_ALWAYS_INLINE void fast512_decode(const std::uint8_t* p, __m512 (&out)[fast512_chunk<F> / 16],
                                        [[maybe_unused]] __m512i& nan) {
  using C = typename F::code_type;
  if constexpr (F::kind == quant::format_kind::fp8_block && fp8_table_decode) {
#ifdef MOELA_FP8_VBMI
    // The bf16 pattern's high byte (sign ORed in) and low byte of each code, interleaved into
    // 16-bit words by the unpacks; a word moved to the top of its 32-bit lane is the fp32 value.
    __m512i hi, lo;
    fp8x64_bf16_bytes<C>(_mm512_loadu_si512(p), hi, lo);
    const __m512i w0 = _mm512_unpacklo_epi8(lo, hi), w1 = _mm512_unpackhi_epi8(lo, hi);
    const __m512i top = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
    out[0] = _mm512_castsi512_ps(_mm512_slli_epi32(w0, 16));
    out[1] = _mm512_castsi512_ps(_mm512_and_si512(w0, top));
    out[2] = _mm512_castsi512_ps(_mm512_slli_epi32(w1, 16));
    out[3] = _mm512_castsi512_ps(_mm512_and_si512(w1, top));
#endif
  } else if constexpr (F::packed4) {
    const __m512i v = _mm512_loadu_si512(p);
    const __m512i mask = _mm512_set1_epi32(0x00780000);  // mantissa bits 19..22
    // Symmetric codes: flip the nibble's sign bit (bit 22) to get u = c + 8.
    const __m512i one = _mm512_set1_epi32(F::has_zero ? 0x3F800000 : 0x3FC00000);
    MOELA_UNROLL for (int s = 0; s < 8; ++s) {
      const __m512i t = s <= 4 ? _mm512_slli_epi32(v, 19 - 4 * s) : _mm512_srli_epi32(v, 4 * s - 19);
      out[s] = _mm512_castsi512_ps(_mm512_ternarylogic_epi32(t, mask, one, ternlog_select_xor));
    }
  } else if constexpr (std::is_same_v<C, std::int8_t>) {
    MOELA_UNROLL for (int q = 0; q < 4; ++q)
      out[q] = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * q))));
  } else {
    const __m512i v = _mm512_loadu_si512(p);
    __m512i lo = _mm512_unpacklo_epi8(_mm512_setzero_si512(), v), hi = _mm512_unpackhi_epi8(_mm512_setzero_si512(), v);
    if constexpr (std::is_same_v<C, fp8_e4m3>) {
      nan = _mm512_max_epu8(nan, _mm512_and_si512(v, _mm512_set1_epi8(0x7F)));
      const __m512i keep = _mm512_set1_epi16(static_cast<short>(0xBFFF));  // sign and 7 bits below bit 14
      lo = _mm512_and_si512(_mm512_srai_epi16(lo, 1), keep);
      hi = _mm512_and_si512(_mm512_srai_epi16(hi, 1), keep);
    }
    out[0] = _mm512_cvtph_ps(_mm512_castsi512_si256(lo));
    out[1] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(lo, 1));
    out[2] = _mm512_cvtph_ps(_mm512_castsi512_si256(hi));
    out[3] = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(hi, 1));
  }
}

/// Σ_g s_g (16 + z_g) gsum_g over a row's ng groups (z_g = 8 for symmetric codes), as 16 lane
/// partial sums (the offset the INT4 kernel takes off, 16 groups per step) plus `rest`, the
/// groups past the last multiple of 16.
template <class F>
MOELA_ALWAYS_INLINE __m512 int4_offset_sum(const typename F::scale_type* s, const std::uint8_t* z, const float* gs,
                                           index_t ng, float& rest) {
  __m512 acc = _mm512_setzero_ps();
  index_t g = 0;
  for (; g + 16 <= ng; g += 16) {
    __m512 sv;
    if constexpr (std::is_same_v<typename F::scale_type, float>)
      sv = _mm512_loadu_ps(s + g);
    else
      sv = _mm512_castsi512_ps(
          _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(s + g))), 16));
    __m512 off = _mm512_set1_ps(24.0f);
    if constexpr (F::has_zero)
      off = _mm512_add_ps(_mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(z + g)))),
                          _mm512_set1_ps(16.0f));
    acc = _mm512_fmadd_ps(_mm512_mul_ps(sv, off), _mm512_loadu_ps(gs + g), acc);
  }
  rest = 0;
  for (; g < ng; ++g) rest += quant::detail::scale_to_float(s[g]) * (16.0f + (F::has_zero ? float(z[g]) : 8.0f)) * gs[g];
  return acc;
}

/// y[m, n] for n in [n0, n1), m < M, fast mode, fast512_format<F>. `xp` rows (stride ldx) from
/// fast512_prepare_x, `gsum` their INT4 group sums (rows of stride K / G).
///
/// R rows at a time share each activation load. Per R rows the K axis is walked in scale spans:
/// an FP8 block's or INT8 group's columns (S = span / 64 chunks, unrolled, then one FMA with the
/// span's scale), the whole row for INT8 row-wise (its scale applied once at the end), one chunk
/// for INT4 (whose lane scales cover the chunk's groups). A last span shorter than that, or a
/// last chunk shorter than 64 bytes, takes the per-chunk loop, the latter from a zero-padded
/// copy (xp is zero past K too).
template <class F, int M>
void gemv_avx512_fast(const qmatrix<F>& w, const float* xp, index_t ldx, const float* gsum, index_t n0, index_t n1,
                      float* y, index_t ldy) {
  static_assert(fast512_format<F>);
  constexpr index_t C = fast512_chunk<F>, V = C / 16, P = F::packed4 ? 2 : 1;  // P: codes per byte
  constexpr int R = M <= 2 ? 2 : 1;  // rows per pass (M = 1: 4 measured no better than 2)
  constexpr bool e4m3 = std::is_same_v<typename F::code_type, fp8_e4m3>;
  constexpr bool rowwise = F::kind == quant::format_kind::int8_rowwise;
  // Chunks per scale span (INT4: the lane scales are applied every chunk; row-wise: at the end).
  constexpr index_t S = F::packed4 || rowwise ? 1 : F::group / C;
  constexpr index_t span = S * C;
  const index_t K = w.cols(), kspans = rowwise ? K / C * C : K / span * span;
  const param_prefetcher<F, _MM_HINT_T1> params(w, gemv_fast_prefetch_bytes);
  for (index_t n = n0; n < n1; n += R) {
    const int rr = static_cast<int>(std::min<index_t>(R, n1 - n));
    const a8_rows<F, R> rw(w, n, rr);
    params.rows(n, R);
    const std::uint8_t* rows[R];
    for (int r = 0; r < R; ++r) rows[r] = reinterpret_cast<const std::uint8_t*>(rw.codes[r]);
    const auto& srow = rw.scales;
    __m512 total[R][M], acc[R][M][2];  // acc: two chains per output, the current span's sums
    __m512i nan[R];
    MOELA_UNROLL for (int r = 0; r < R; ++r) {
      nan[r] = _mm512_setzero_si512();
      MOELA_UNROLL for (int m = 0; m < M; ++m) total[r][m] = acc[r][m][0] = acc[r][m][1] = _mm512_setzero_ps();
    }
    // Decodes chunk c of every row (row r's bytes at src[r]) and adds its products to acc.
    auto chunk = [&](index_t c, const std::uint8_t* const (&src)[R]) MOELA_ALWAYS_INLINE_LAMBDA {
      MOELA_UNROLL for (int r = 0; r < R; ++r) {
        __m512 wv[V];
        fast512_decode<F>(src[r], wv, nan[r]);
        MOELA_UNROLL for (int m = 0; m < M; ++m) MOELA_UNROLL for (int v = 0; v < V; ++v) acc[r][m][v & 1] =
            _mm512_fmadd_ps(wv[v], _mm512_loadu_ps(xp + m * ldx + c + 16 * v), acc[r][m][v & 1]);
      }
    };
    // Folds the span that starts at chunk c (INT4: chunk c) into total and clears acc (row-wise
    // INT8 has no spans: its scale is applied after the last chunk).
    auto close_span = [&]([[maybe_unused]] index_t c, [[maybe_unused]] bool partial) MOELA_ALWAYS_INLINE_LAMBDA {
      if constexpr (!rowwise) {
        MOELA_UNROLL for (int r = 0; r < R; ++r) {
          __m512 sv;
          if constexpr (F::packed4) {  // lane i covers codes 8i .. 8i + 7: one group
            const index_t g0 = c / F::group;
            sv = partial ? a8_lane_scales_partial<F::group>(srow[r] + g0, K / F::group - g0)
                         : a8_lane_scales<F::group>(srow[r] + g0);
          } else {  // FP8: the row's block row of scales; INT8: the row's group scales
            sv = _mm512_set1_ps(quant::detail::scale_to_float(srow[r][c / F::group]) * fast512_rescale<F>);
          }
          MOELA_UNROLL for (int m = 0; m < M; ++m) {
            total[r][m] = _mm512_fmadd_ps(_mm512_add_ps(acc[r][m][0], acc[r][m][1]), sv, total[r][m]);
            acc[r][m][0] = acc[r][m][1] = _mm512_setzero_ps();
          }
        }
      }
    };
    for (index_t c = 0; c < kspans; c += span) {
      MOELA_UNROLL for (index_t q = 0; q < S; ++q) {
        const std::uint8_t* src[R];
        MOELA_UNROLL for (int r = 0; r < R; ++r) {
          src[r] = rows[r] + (c + q * C) / P;
          prefetch_ahead<gemv_fast_prefetch_bytes, _MM_HINT_T1>(src[r]);
        }
        chunk(c + q * C, src);
      }
      close_span(c, false);
    }
    if (kspans < K) {  // a last span of fewer chunks, the last maybe partial
      for (index_t c = kspans; c < K; c += C) {
        const std::uint8_t* src[R];
        alignas(64) std::uint8_t tail[R][64];
        for (int r = 0; r < R; ++r) {
          src[r] = rows[r] + c / P;
          if (c + C > K) {
            std::memset(tail[r], 0, 64);
            std::memcpy(tail[r], src[r], static_cast<std::size_t>((K - c) / P));
            src[r] = tail[r];
          }
        }
        chunk(c, src);
        if constexpr (F::packed4) close_span(c, c + C > K);
      }
      if constexpr (!F::packed4) close_span(kspans, false);
    }
    if constexpr (rowwise) {
      MOELA_UNROLL for (int r = 0; r < R; ++r) {
        const __m512 sv = _mm512_set1_ps(quant::detail::scale_to_float(srow[r][0]));
        MOELA_UNROLL for (int m = 0; m < M; ++m) total[r][m] = _mm512_mul_ps(_mm512_add_ps(acc[r][m][0], acc[r][m][1]), sv);
      }
    }
    for (int r = 0; r < rr; ++r) {
      const index_t nr = n + r;
      // A NaN weight makes its row's outputs NaN, as dequantize-then-multiply does (the fp16
      // route turns NaN codes into finite values; the table route decodes them to NaN).
      bool row_nan = false;
      if constexpr (e4m3 && !fp8_table_decode)
        row_nan = _mm512_cmpeq_epi8_mask(nan[r], _mm512_set1_epi8(0x7F)) != 0;
      for (int m = 0; m < M; ++m) {
        float sum;
        if constexpr (F::packed4) {
          // Σ_g s_g (u - z) x = 16 Σ_g s_g Σ (1 + u/16) x - Σ_g s_g (16 + z_g) gsum_g: one
          // horizontal sum of both.
          const index_t ng = K / F::group;
          float rest;
          const __m512 off = int4_offset_sum<F>(srow[r], rw.zeros[r], gsum + m * ng, ng, rest);
          sum = hsum_ps_512<xsimd::avx512bw>(_mm512_fmsub_ps(total[r][m], _mm512_set1_ps(16.0f), off)) - rest;
        } else {
          sum = hsum_ps_512<xsimd::avx512bw>(total[r][m]);
        }
        y[m * ldy + nr] = row_nan ? std::numeric_limits<float>::quiet_NaN() : sum;
      }
    }
  }
}

}  // namespace moela::detail

#endif  // MOELA_AVX512_GEMV_FAST
