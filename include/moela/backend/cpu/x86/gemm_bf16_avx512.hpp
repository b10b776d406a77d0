#pragma once
/// \file moela/backend/cpu/x86/gemm_bf16_avx512.hpp
/// The GEMM of bf16 activations with bf16 or FP8 weights on AVX512-BF16 (`vdpbf16ps`), for
/// M > 4 activation rows (internal; used by moela/ops/matmul.hpp for `quant::mode::bf16_activations`
/// and for bf16 activations in the fast mode). The structure of gemm_a8_avx512.hpp with pairs
/// instead of quads:
///
///  - **Weights**, per panel of 16 output rows and per K block of up to 2048, are packed once per
///    call as bf16 laid out `[K/2][16][2]`: one 64-byte line per 2 k holds those 2 weights of
///    each of the 16 rows, the operand order of `vdpbf16ps` (per fp32 lane, 2 products summed).
///    bf16 weights are copied; FP8 codes are decoded exactly to bf16 (an FP8 value has at most 4
///    significant bits and its exponent lies in bf16's normal range, so FP8 subnormals are
///    bf16-normal and the DAZ rule of `vdpbf16ps` never meets them): with AVX512-VBMI by table
///    lookup (`fp8_bf16_lookup` of convert.hpp), else E4M3 as value / 256 through the fp16 bit
///    trick of convert.hpp; their block scale (times 256 for E4M3 on the fp16 route) is kept per
///    span and row, as fp32.
///  - **Activations** are bf16 rows (the caller rounds fp32 ones, RNE), padded to even K with a
///    zero, broadcast one pair (4 bytes) at a time.
///  - bf16 weights: one fp32 accumulator chain per output over the K block. FP8 weights: per span
///    (a weight block's K extent) the unscaled sums Σ x·code, then `y += sum · scale` in fp32,
///    one FMA per accumulator per span.
///
/// Numerics: products of two bf16 values are exact in fp32; the sums are fp32 (the instruction
/// adds the two products of a lane into the accumulator with one rounding per product, RNE,
/// and flushes bf16 subnormal inputs and fp32 subnormal results to zero). So the result is the
/// fast mode's on the same bf16 activations up to the order of the fp32 adds.
///
/// Roofline (per k-pair, tile of 6 rows x 32 columns): 12 `vdpbf16ps` (384 MACs), 2 weight
/// loads, 6 broadcasts; a `vdpbf16ps` on zmm does 32 MACs, 2x an fp32 FMA, so the ceiling is 2x
/// an fp32 GEMM at equal issue rate. The FP8 span epilogue costs 1 FMA per accumulator per 64
/// k-pairs (2%). The pack: per 32 weights ~2 ops (bf16) or ~12 (FP8 decode) plus the 16 x 16
/// transpose (4 shuffles per line), shared by the M rows, which is why this path starts above
/// M = 4.
///
/// Needs a translation unit compiled with AVX512-BF16 (`MOELA_AVX512_BF16_KERNELS`, from
/// avx512_qdot.hpp). `gemm_bf16_dp` returns false (nothing written), and the caller takes the
/// fast path, when a weight block boundary inside K is odd (fp8_block with an odd block width).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "moela/backend/cpu/convert.hpp"
#include "moela/backend/cpu/parallel_for.hpp"
#include "moela/backend/cpu/prefetch.hpp"
#include "moela/backend/cpu/x86/avx512_qdot.hpp"
#include "moela/backend/cpu/x86/avx512_panel.hpp"
#include "moela/core/tensor.hpp"
#include "moela/quant/formats.hpp"
#include "moela/quant/qmatrix.hpp"


#if defined(MOELA_AVX512_BF16_KERNELS) && defined(MOELA_X86_AVX2_KERNELS)
#define MOELA_AVX512_GEMM_BF16 1

namespace moela::detail {

/// True when `Arch` is an AVX-512 (BW) arch and the BF16 kernels are compiled in.
template <class Arch>
inline constexpr bool use_avx512_bf16 = std::is_base_of_v<xsimd::avx512bw, Arch>;

inline constexpr index_t bf16_panel = panel_rows;  ///< output rows per packed panel (one zmm of fp32)
inline constexpr index_t bf16_kblock = 2048;  ///< K per packed block: a panel of 64 KiB (L2)
inline constexpr int bf16_tile_rows = 6;      ///< MR: 6 x 2 panels = 12 accumulators (+ 12 for FP8)

/// 32 FP8 codes -> 32 bf16, exact: the value (table lookup, with AVX512-VBMI), else E4M3 value /
/// 256 and E5M2 value (through fp16 patterns).
template <class Code>
MOELA_ALWAYS_INLINE __m512i fp8x32_to_bf16(const Code* p) {
  const __m256i c = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
#ifdef MOELA_FP8_VBMI
  // Code i into both bytes of 16-bit lane i, then its bf16 pattern there.
  const __m512i spread = _mm512_set_epi8(31, 31, 30, 30, 29, 29, 28, 28, 27, 27, 26, 26, 25, 25, 24, 24, 23, 23, 22, 22, 21,
                                         21, 20, 20, 19, 19, 18, 18, 17, 17, 16, 16, 15, 15, 14, 14, 13, 13, 12, 12, 11, 11,
                                         10, 10, 9, 9, 8, 8, 7, 7, 6, 6, 5, 5, 4, 4, 3, 3, 2, 2, 1, 1, 0, 0);
  return fp8_bf16_lookup<Code>(_mm512_permutexvar_epi8(spread, _mm512_castsi256_si512(c)), 0xAAAAAAAAAAAAAAAAull,
                               0x5555555555555555ull);
#else
  __m512i h;
  if constexpr (std::is_same_v<Code, fp8_e5m2>) {
    h = _mm512_slli_epi16(_mm512_cvtepu8_epi16(c), 8);  // E5M2 is fp16 with the low byte cleared
  } else {
    // Sign-extend, shift by 7, clear the sign's copy in bit 14: the fp16 pattern of value / 256
    // (e4m3x8_to_fp16_bits); NaN codes (magnitude 0x7F) -> fp16 qNaN.
    h = _mm512_and_si512(_mm512_slli_epi16(_mm512_cvtepi8_epi16(c), 7), _mm512_set1_epi16(static_cast<short>(0xBFFF)));
    const __mmask32 nan = _mm512_cmpeq_epi16_mask(_mm512_and_si512(h, _mm512_set1_epi16(0x3F80)), _mm512_set1_epi16(0x3F80));
    h = _mm512_mask_mov_epi16(h, nan, _mm512_or_si512(h, _mm512_set1_epi16(0x7E00)));
  }
  const __m512 lo = _mm512_cvtph_ps(_mm512_castsi512_si256(h)), hi = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
  return (__m512i)_mm512_cvtne2ps_pbh(hi, lo);  // (upper, lower)
#endif
}

/// The factor from a packed FP8 weight's bf16 value to its code value (the fp16 route decodes
/// E4M3 / 256).
template <class F>
inline constexpr float bf16_pack_rescale = fp8_vector_rescale<typename F::code_type>;

/// Packs rows [n0, n0 + nv) (nv <= 16), columns [k0, k0 + len) of `w` into `codes` (ceil(len / 2)
/// rounded up to 16 lines of 16 pairs; rows past nv and columns past len are zero) and, for FP8,
/// `scales` (one line of 16 floats per weight block of the K range; 0 past nv). `row` is
/// scratch of 16 x `ldrow` bf16 (ldrow a multiple of 32, >= len).
template <class F>
void bf16_pack_panel(const qmatrix<F>& w, index_t n0, index_t nv, index_t k0, index_t len, std::uint32_t* codes,
                     float* scales, moela::bf16* row, index_t ldrow) {
  for (index_t i = 0; i < bf16_panel; ++i) {
    moela::bf16* r = row + i * ldrow;
    index_t k = 0;
    if (i < nv) {
      const auto* p = w.row_codes(n0 + i) + k0;
      if constexpr (F::kind == quant::format_kind::dense) {
        std::memcpy(r, p, static_cast<std::size_t>(len) * sizeof(moela::bf16));
        k = len;
      } else {
        for (; k + 32 <= len; k += 32) _mm512_storeu_si512(r + k, fp8x32_to_bf16(p + k));
        constexpr float inv = 1.0f / bf16_pack_rescale<F>;
        for (; k < len; ++k) r[k] = moela::bf16(fp8_decode_table<typename F::code_type>.v[p[k].bits] * inv);
      }
    }
    std::memset(static_cast<void*>(r + k), 0, static_cast<std::size_t>(ldrow - k) * sizeof(moela::bf16));
  }
  const index_t lines = (len + 1) / 2;
  const auto* src = reinterpret_cast<const std::uint32_t*>(row);
  for (index_t q = 0; q < lines; q += 16) transpose16x16_epi32(src + q, ldrow / 2, codes + q * bf16_panel);
  if constexpr (F::kind == quant::format_kind::fp8_block) {
    constexpr index_t bc = F::group;
    const index_t b0 = k0 / bc, b1 = (k0 + len + bc - 1) / bc;
    for (index_t b = b0; b < b1; ++b)
      for (index_t i = 0; i < bf16_panel; ++i)
        scales[(b - b0) * bf16_panel + i] =
            i < nv ? w.scale_data()[((n0 + i) / F::block_rows) * w.scale_cols() + b] * bf16_pack_rescale<F> : 0.f;
  }
}

/// y[m, 16p + j] (m < MR, p < NP, j < 16 where mask[p] has bit j) over one packed K block of
/// `lines` pairs: stores (`add` false) or adds to y. `Span`: pairs per scale span (FP8: the block
/// width / 2), 0 for unscaled weights (one chain over the block). `x`: bf16 rows (stride ldx)
/// at the block's first column. `outbuf`: 64-byte aligned scratch of MR x NP x 16 floats.
template <int MR, int NP, index_t Span>
MOELA_ALWAYS_INLINE void bf16_tile(const std::uint32_t* const (&pc)[NP], const float* const (&ps)[NP],
                                   const moela::bf16* x, index_t ldx, index_t lines, float* y, index_t ldy,
                                   const __mmask16 (&mask)[NP], bool add, float* outbuf) {
  __m512 acc[MR][NP];
  auto steps = [&](index_t q0, index_t q1) MOELA_ALWAYS_INLINE_LAMBDA {
    for (index_t q = q0; q < q1; ++q) {
      // (Vector casts, not casts through references: those made GCC keep the weights in memory.)
      static_assert(NP == 1 || NP == 2);
      const __m512bh w0 = (__m512bh)_mm512_load_si512(pc[0] + q * bf16_panel);
      const __m512bh w1 = (__m512bh)_mm512_load_si512(pc[NP - 1] + q * bf16_panel);
      MOELA_UNROLL for (int m = 0; m < MR; ++m) {
        std::int32_t x2;
        std::memcpy(&x2, x + m * ldx + 2 * q, 4);
        const __m512bh xv = (__m512bh)_mm512_set1_epi32(x2);
        acc[m][0] = _mm512_dpbf16_ps(acc[m][0], w0, xv);
        if constexpr (NP == 2) acc[m][NP - 1] = _mm512_dpbf16_ps(acc[m][NP - 1], w1, xv);
      }
    }
  };
  if constexpr (Span == 0) {
    MOELA_UNROLL for (int m = 0; m < MR; ++m) MOELA_UNROLL for (int p = 0; p < NP; ++p)
      acc[m][p] = add ? _mm512_maskz_loadu_ps(mask[p], y + m * ldy + bf16_panel * p) : _mm512_setzero_ps();
    steps(0, lines);
    MOELA_UNROLL for (int m = 0; m < MR; ++m) MOELA_UNROLL for (int p = 0; p < NP; ++p)
      _mm512_mask_storeu_ps(y + m * ldy + bf16_panel * p, mask[p], acc[m][p]);
  } else {
    // The scaled sums wait in memory (L1, the caller's `outbuf`, which the compiler cannot keep
    // in registers) between spans: as 12 more live zmm they pushed the weight vectors out of the
    // register file into a store and reload per k-pair (measured: ~0.5 x the unscaled tile's rate).
    auto out = reinterpret_cast<float(*)[NP][bf16_panel]>(outbuf);
    MOELA_UNROLL for (int m = 0; m < MR; ++m) MOELA_UNROLL for (int p = 0; p < NP; ++p)
      _mm512_store_ps(out[m][p], add ? _mm512_maskz_loadu_ps(mask[p], y + m * ldy + bf16_panel * p) : _mm512_setzero_ps());
    MOELA_UNROLL for (int m = 0; m < MR; ++m) MOELA_UNROLL for (int p = 0; p < NP; ++p) acc[m][p] = _mm512_setzero_ps();
    // One loop over the pairs with the span's epilogue inside (a loop per span made GCC 12 keep
    // the two weight vectors on the stack, a store and 6 reloads per k-pair: 0.5 x the rate).
    for (index_t q = 0, t = 0; q < lines; ++q) {
      steps(q, q + 1);
      if ((q + 1) % Span != 0 && q + 1 != lines) continue;
      MOELA_UNROLL for (int p = 0; p < NP; ++p) {
        const __m512 s = _mm512_load_ps(ps[p] + t * bf16_panel);
        MOELA_UNROLL for (int m = 0; m < MR; ++m)
          _mm512_store_ps(out[m][p], _mm512_fmadd_ps(acc[m][p], s, _mm512_load_ps(out[m][p])));
      }
      MOELA_UNROLL for (int m = 0; m < MR; ++m) MOELA_UNROLL for (int p = 0; p < NP; ++p) acc[m][p] = _mm512_setzero_ps();
      ++t;
    }
    MOELA_UNROLL for (int m = 0; m < MR; ++m) MOELA_UNROLL for (int p = 0; p < NP; ++p)
      _mm512_mask_storeu_ps(y + m * ldy + bf16_panel * p, mask[p], _mm512_load_ps(out[m][p]));
  }
}

/// y[M, N] (stride ldy) = xb[M, K] · Wᵀ for bf16 activation rows `xb` (stride ldx >= K rounded up
/// to even, the padding column zero) and a bf16 or FP8 weight. False (nothing written) when a
/// weight block boundary inside K is odd.
template <class F>
bool gemm_bf16_dp(float* y, index_t ldy, const moela::bf16* xb, index_t ldx, index_t M, const qmatrix<F>& w) {
  static_assert(quant::bf16_exact_format<F>);
  const index_t K = w.cols(), N = w.rows();
  constexpr bool fp8 = F::kind == quant::format_kind::fp8_block;
  constexpr index_t bc = fp8 ? F::group : 2;
  if constexpr (bc % 2 != 0)
    if (K > bc) return false;
  // K blocks: a multiple of the weight block width (so spans never straddle a block), ~2048.
  constexpr index_t kb = fp8 ? std::max<index_t>(1, bf16_kblock / bc) * bc : bf16_kblock;
  constexpr index_t span = fp8 ? (bc + 1) / 2 : 0;  // pairs per scale span (odd bc: K <= bc, one span)
  const index_t kbk = std::min(kb, K);
  const index_t ldrow = (kbk + 31) / 32 * 32, maxlines = ldrow / 2;
  const index_t maxspans = fp8 ? (kbk + bc - 1) / bc + 1 : 1;
  parallel_for(panel_pair::count(N), [&](index_t pa, index_t pb) {
    const panel_pair_buffers<moela::bf16> buf(maxlines, maxspans, ldrow);  // this worker's pack
    alignas(64) float ob[bf16_tile_rows * 2 * bf16_panel];
    for (index_t pr = pa; pr < pb; ++pr) {
      const panel_pair pp(pr, N);
      const index_t n0 = pp.n0, nv0 = pp.nv[0], nv1 = pp.nv[1];
      const __mmask16 m0 = pp.mask[0], m1 = pp.mask[1];
      for (index_t k0 = 0; k0 < K; k0 += kb) {
        const index_t len = std::min(kb, K - k0), lines = (len + 1) / 2;
        bf16_pack_panel(w, n0, nv0, k0, len, buf.codes[0], buf.scales[0], buf.row, ldrow);
        if (nv1 > 0) bf16_pack_panel(w, n0 + bf16_panel, nv1, k0, len, buf.codes[1], buf.scales[1], buf.row, ldrow);
        const moela::bf16* xk = xb + k0;
        const bool add = k0 > 0;
        // What the next pack reads (the next K block of this pair, else the first of the next
        // pair), prefetched into L2 over this pack's row tiles (prefetch.hpp).
        const index_t tiles = (M + bf16_tile_rows - 1) / bf16_tile_rows;
        row_prefetcher<F> ahead;
        if (k0 + kb < K)
          ahead = row_prefetcher<F>(w, n0, n0 + nv0 + nv1, k0 + kb, std::min(K, k0 + 2 * kb), tiles);
        else if (pr + 1 < pb)
          ahead = row_prefetcher<F>(w, n0 + 2 * bf16_panel, std::min(N, n0 + 4 * bf16_panel), 0, std::min(K, kb), tiles);
        auto rows = [&]<int MR>(std::integral_constant<int, MR>, index_t m) {
          ahead.step();
          if (nv1 > 0)
            bf16_tile<MR, 2, span>({buf.codes[0], buf.codes[1]}, {buf.scales[0], buf.scales[1]}, xk + m * ldx, ldx, lines, y + m * ldy + n0, ldy, {m0, m1}, add, ob);
          else
            bf16_tile<MR, 1, span>({buf.codes[0]}, {buf.scales[0]}, xk + m * ldx, ldx, lines, y + m * ldy + n0, ldy, {m0}, add, ob);
        };
        for_each_row_tile<bf16_tile_rows>(M, rows);
      }
    }
  }, 1);
  return true;
}

}  // namespace moela::detail

#endif  // MOELA_AVX512_GEMM_BF16

namespace moela::detail {

/// Whether `matmul` gives `m` bf16 activation rows on `Arch` to gemm_bf16_dp: the kernel is
/// compiled in, Arch is an AVX-512 arch and m > 4 (for fewer rows the pack, a copy of the whole
/// weight per call, costs more than the GEMV's in-register decode).
template <class Arch>
constexpr bool bf16_gemm_runs([[maybe_unused]] index_t m) {
#ifdef MOELA_AVX512_GEMM_BF16
  return use_avx512_bf16<Arch> && m > 4;
#else
  return false;
#endif
}

}  // namespace moela::detail
