#pragma once
/// \file moela/backend/cpu/x86/gemm_a8_avx512.hpp
/// The integer GEMM of `quant::mode::int8_activations` (W8A8 / W4A8) for M > 4 activation rows
/// on AVX-512 VNNI (internal; used by moela/backend/cpu/qgemm.hpp). One mechanism for every
/// integer weight format (int8_rowwise, int8_group<G>, int4_group<G>, symmetric or with zero
/// points):
///
///  - **Weights**, per panel of 16 output rows, are packed once per call to unsigned bytes
///    `u = c + 128`, with c the signed integer code (int8: the code; int4: the nibble minus its
///    offset, 8 or the zero point, so c is in [-15, 15]), laid out `[K/4][16][4]`: one 64-byte
///    line per 4 k holds those 4 codes of each of the 16 rows, the operand order of `vpdpbusd`
///    (unsigned x signed, 4 products summed per 32-bit lane). Beside it, per span, the 16
///    weight scales as fp32.
///  - **Activations** stay signed int8 codes (a copy with rows padded to a multiple of 4 with
///    zeros) and are broadcast 4 bytes at a time.
///  - Per span (activation group ∩ weight group, so 32, 64 or 128 wide) each accumulator starts
///    at `-128 Σ_span x` of its row, so that after the span it holds `Σ x u - 128 Σ x = Σ x c`
///    exactly in int32 (|Σ x u| <= 128 · 127 · 255 < 2^22, also exact in fp32); then
///    `y += float(Σ x c) · (s_w · s_x)` in fp32, one convert, one multiply and one FMA.
///
/// So the numerics are those of the M <= 4 integer GEMV (gemv_a8_avx2.hpp): exact integer span
/// sums, then one fp32 scaling and add per span; only the order of the fp32 adds differs.
///
/// Roofline (per k-quad, tile of 6 rows x 32 columns): 12 `vpdpbusd` (768 MACs), 2 weight loads,
/// 6 broadcasts; per span and accumulator 3 fp32 ops (12% next to 32 quads of a 128-wide span,
/// 38% next to 8 of a 32-wide one). A `vpdpbusd` on zmm does 64 MACs, 4x an fp32 FMA, so the
/// ceiling is 4x an fp32 GEMM at equal issue rate. The pack (codes converted in registers and
/// transposed 16 x 16, no row buffer) costs ~1 store per 4 weights per call, shared by the M
/// rows (the reason this path starts above the GEMV's M <= 4). While a worker's tiles run on one
/// panel pair, the rows of its next pair are prefetched into L2 (prefetch.hpp): the pack
/// otherwise waits on DRAM for them (a 512-token V2-Lite MoE layer, ~48 rows per expert: 1.09-1.14x).
///
/// Needs a translation unit compiled with AVX512-VNNI (`MOELA_AVX512_VNNI_KERNELS`, from
/// avx512_qdot.hpp); `gemm_a8_vnni` returns false, and the caller takes another path, when a
/// span boundary inside K is not a multiple of 4 (int8_group with G % 4 != 0).

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "moela/backend/cpu/convert.hpp"
#include "moela/backend/cpu/parallel_for.hpp"
#include "moela/backend/cpu/prefetch.hpp"
#include "moela/backend/cpu/x86/avx512_panel.hpp"
#include "moela/backend/cpu/x86/avx512_qdot.hpp"
#include "moela/core/tensor.hpp"
#include "moela/quant/qmatrix.hpp"

#ifdef MOELA_AVX512_VNNI_KERNELS

namespace moela::detail {

/// True when `Arch` is an AVX-512 (BW) arch and the VNNI kernels are compiled in.
template <class Arch>
inline constexpr bool use_avx512_vnni = std::is_base_of_v<xsimd::avx512bw, Arch>;

/// One span of the K axis: [k0, k1), its weight-scale column and its activation-scale column.
struct a8_span {
  index_t k0, k1, wcol, acol;
};

/// Spans of a row of K with weight groups of `wg` (K for one scale per row) and activation groups
/// of 128. False when a span boundary other than K is not a multiple of 4.
inline bool a8_spans(index_t K, index_t wg, std::vector<a8_span>& out) {
  out.clear();
  for (index_t a = 0; a < K;) {
    const index_t b = std::min({K, (a / wg + 1) * wg, (a / quant::int8_activation_group + 1) * quant::int8_activation_group});
    if (b < K && b % 4 != 0) return false;
    out.push_back({a, b, a / wg, a / quant::int8_activation_group});
    a = b;
  }
  return true;
}

inline constexpr index_t a8_panel = panel_rows;  ///< output rows per packed panel (one zmm of int32)

/// The 64 codes of row n at k .. k + 64 (k a multiple of 64) as the bytes u = c + 128.
template <class F>
MOELA_ALWAYS_INLINE __m512i a8_codes64(const qmatrix<F>& w, index_t n, index_t k) {
  if constexpr (F::packed4) {
    // byte j -> 16-bit lane j = [low nibble | high nibble << 8]: codes 2j, 2j+1 in k order.
    const __m512i w16 = _mm512_cvtepu8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.row_codes(n) + k / 2)));
    const __m512i u = _mm512_or_si512(_mm512_and_si512(w16, _mm512_set1_epi16(0x000F)),
                                      _mm512_and_si512(_mm512_slli_epi16(w16, 4), _mm512_set1_epi16(0x0F00)));
    if constexpr (F::has_zero) {  // c + 128 = nibble + (128 - z), z per group of G >= 32
      const std::uint8_t* z = w.zero_data() + n * w.scale_cols();
      const __m512i lo = _mm512_set1_epi8(static_cast<char>(128 - z[k / F::group]));
      const __m512i hi = _mm512_set1_epi8(static_cast<char>(128 - z[(k + 32) / F::group]));
      return _mm512_add_epi8(u, _mm512_mask_blend_epi8(0xFFFFFFFF00000000ull, lo, hi));
    } else {  // c + 128 = (nibble ^ 8) - 8 + 128
      return _mm512_add_epi8(_mm512_xor_si512(u, _mm512_set1_epi8(8)), _mm512_set1_epi8(120));
    }
  } else {
    return _mm512_xor_si512(_mm512_loadu_si512(w.row_codes(n) + k), _mm512_set1_epi8(static_cast<char>(0x80)));
  }
}

/// Packs rows [n0, n0 + nv) of `w` (nv <= 16) into `codes` (`quads` lines of 16 dwords, room for
/// `quads` rounded up to 16; rows past nv get c = 0) and `scales` (spans x 16 floats; 0 past
/// nv). Per 64 codes the 16 rows are converted in registers (a8_codes64) and transposed 16 x 16
/// into 16 lines; a K tail (K % 64) goes through `row`, scratch of 16 x 64 bytes.
template <class F>
void a8_pack_panel(const qmatrix<F>& w, index_t n0, index_t nv, const std::vector<a8_span>& spans, index_t quads,
                   std::uint32_t* codes, float* scales, std::uint8_t* row) {
  const index_t K = w.cols(), full = K / 64 * 64;
  for (index_t k = 0; k < full; k += 64) {
    __m512i r[16];
    MOELA_UNROLL for (int i = 0; i < 16; ++i)
      r[i] = i < nv ? a8_codes64(w, n0 + i, k) : _mm512_set1_epi8(static_cast<char>(128));
    transpose16x16_store(r, codes + (k / 4) * a8_panel, a8_panel);
  }
  if (full < 4 * quads) {  // the tail: codes [full, K), then c = 0 up to full + 64
    for (index_t i = 0; i < a8_panel; ++i) {
      std::uint8_t* r = row + i * 64;
      index_t k = full;
      if (i < nv) {
        const index_t n = n0 + i;
        for (; k < K; ++k) {
          if constexpr (F::packed4) {
            const int nib = (w.row_codes(n)[k / 2] >> (4 * (k & 1))) & 0xF;
            const int c = F::has_zero ? nib - int(w.zero_data()[n * w.scale_cols() + k / F::group]) : (nib ^ 8) - 8;
            r[k - full] = static_cast<std::uint8_t>(c + 128);
          } else {
            r[k - full] = static_cast<std::uint8_t>(w.row_codes(n)[k]) ^ 0x80u;
          }
        }
      }
      std::memset(r + (k - full), 128, static_cast<std::size_t>(64 - (k - full)));
    }
    transpose16x16_epi32(reinterpret_cast<const std::uint32_t*>(row), 16, codes + (full / 4) * a8_panel);
  }
  // Scales: [spans][16] floats. With fp32 scales, one weight group per span (G <= 128: span t
  // reads scale column t) and 16 rows, 16 spans at a time are one 16 x 16 transpose.
  const typename F::scale_type* s = w.scale_data();
  const index_t S = static_cast<index_t>(spans.size()), ldsc = w.scale_cols();
  index_t t = 0;
  if constexpr (std::is_same_v<typename F::scale_type, float>)
    if (nv == a8_panel && spans.back().wcol == S - 1)
      for (; t + 16 <= S; t += 16)
        transpose16x16_epi32(reinterpret_cast<const std::uint32_t*>(s + n0 * ldsc + t), ldsc,
                             reinterpret_cast<std::uint32_t*>(scales + t * a8_panel));
  for (; t < S; ++t)
    for (index_t i = 0; i < a8_panel; ++i)
      scales[t * a8_panel + i] =
          i < nv ? quant::detail::scale_to_float(s[(n0 + i) * ldsc + spans[static_cast<std::size_t>(t)].wcol]) : 0.f;
}

/// y[m, 16p + j] (m < MR, p < NP, j < 16 where mask[p] has bit j) for NP packed panels.
/// `x`: padded int8 rows (stride ldx), `init`: -128 Σ_span x per row (stride ldi), `sx`: group
/// scales (stride lds).
template <int MR, int NP>
MOELA_ALWAYS_INLINE void a8_tile(const std::uint32_t* const (&pc)[NP], const float* const (&ps)[NP],
                                 const std::int8_t* x, index_t ldx, const std::int32_t* init, index_t ldi,
                                 const float* sx, index_t lds, const std::vector<a8_span>& spans, float* y,
                                 index_t ldy, const __mmask16 (&mask)[NP]) {
  __m512 facc[MR][NP];
  MOELA_UNROLL for (int m = 0; m < MR; ++m) MOELA_UNROLL for (int p = 0; p < NP; ++p) facc[m][p] = _mm512_setzero_ps();
  // One loop over the quads with the span epilogue inside it: with a loop per span GCC 12 copied
  // the accumulators between registers every step (the bf16 GEMM met the same with spills).
  __m512i acc[MR][NP];
  auto start = [&](index_t t) MOELA_ALWAYS_INLINE_LAMBDA {
    MOELA_UNROLL for (int m = 0; m < MR; ++m) {
      const __m512i i0 = _mm512_set1_epi32(init[m * ldi + t]);
      MOELA_UNROLL for (int p = 0; p < NP; ++p) acc[m][p] = i0;
    }
  };
  const index_t S = static_cast<index_t>(spans.size()), quads = (spans.back().k1 + 3) / 4;
  index_t t = 0, qend = (spans[0].k1 + 3) / 4;
  start(0);
  for (index_t q = 0; q < quads; ++q) {
    static_assert(NP == 1 || NP == 2);
    const __m512i w0 = _mm512_load_si512(pc[0] + q * a8_panel), w1 = _mm512_load_si512(pc[NP - 1] + q * a8_panel);
    MOELA_UNROLL for (int m = 0; m < MR; ++m) {
      std::int32_t x4;
      std::memcpy(&x4, x + m * ldx + 4 * q, 4);
      const __m512i xv = _mm512_set1_epi32(x4);
      acc[m][0] = _mm512_dpbusd_epi32(acc[m][0], w0, xv);
      if constexpr (NP == 2) acc[m][NP - 1] = _mm512_dpbusd_epi32(acc[m][NP - 1], w1, xv);
    }
    if (q + 1 != qend) continue;
    __m512 sw[NP];
    MOELA_UNROLL for (int p = 0; p < NP; ++p) sw[p] = _mm512_load_ps(ps[p] + t * a8_panel);
    MOELA_UNROLL for (int m = 0; m < MR; ++m) {
      const __m512 s = _mm512_set1_ps(sx[m * lds + spans[static_cast<std::size_t>(t)].acol]);
      MOELA_UNROLL for (int p = 0; p < NP; ++p)
        facc[m][p] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[m][p]), _mm512_mul_ps(sw[p], s), facc[m][p]);
    }
    if (++t == S) break;
    qend = (spans[static_cast<std::size_t>(t)].k1 + 3) / 4;
    start(t);
  }
  MOELA_UNROLL for (int m = 0; m < MR; ++m) MOELA_UNROLL for (int p = 0; p < NP; ++p)
    _mm512_mask_storeu_ps(y + m * ldy + a8_panel * p, mask[p], facc[m][p]);
}

inline constexpr int a8_tile_rows = 6;  ///< MR: 6 x 2 panels = 12 int32 + 12 fp32 accumulators

/// y[M, N] (stride ldy) = the int8-activation product of `xq` (int8 codes [M, K], rows of stride
/// K) with group scales `sx` ([M, ceil(K/128)]) and integer-format weights `w`. False (nothing
/// written) when the spans do not allow it (see the file comment).
template <class F>
bool gemm_a8_vnni(float* y, index_t ldy, const std::int8_t* xq, const float* sx, index_t M, const qmatrix<F>& w) {
  const index_t K = w.cols(), N = w.rows();
  const index_t lds = (K + quant::int8_activation_group - 1) / quant::int8_activation_group;
  thread_local std::vector<a8_span> spans_buf;
  std::vector<a8_span>& spans = spans_buf;  // the caller's, also inside the workers' lambda
  if (!a8_spans(K, F::group == 0 ? K : F::group, spans)) return false;
  const index_t S = static_cast<index_t>(spans.size());
  const index_t quads = (K + 3) / 4, ldx = 4 * quads;
  // The calling thread's buffers (the workers get plain pointers): x padded to whole quads, and
  // each row's span sums (the accumulator start -128 Σ x).
  thread_local std::vector<std::int8_t> xbuf;
  thread_local std::vector<std::int32_t> ibuf;
  std::int8_t* xp = grown(xbuf, M * ldx);
  std::int32_t* init = grown(ibuf, M * S);
  for (index_t m = 0; m < M; ++m) {
    std::memcpy(xp + m * ldx, xq + m * K, static_cast<std::size_t>(K));
    std::memset(xp + m * ldx + K, 0, static_cast<std::size_t>(ldx - K));
    for (index_t t = 0; t < S; ++t) {
      const std::int8_t* r = xq + m * K;
      const index_t k1 = spans[static_cast<std::size_t>(t)].k1;
      index_t k = spans[static_cast<std::size_t>(t)].k0;
      __m512i acc = _mm512_setzero_si512();
      const __m512i ones = _mm512_set1_epi8(1);
      for (; k + 64 <= k1; k += 64) acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512(r + k));
      std::int32_t s = hsum_epi32_512<xsimd::avx512bw>(acc);
      for (; k < k1; ++k) s += r[k];
      init[m * S + t] = -128 * s;
    }
  }
  parallel_for(panel_pair::count(N), [&](index_t pa, index_t pb) {
    const panel_pair_buffers<std::uint8_t> buf(quads, S, 64);  // this worker's pack (row: the K tail)
    for (index_t pr = pa; pr < pb; ++pr) {
      const panel_pair pp(pr, N);
      const index_t n0 = pp.n0, nv0 = pp.nv[0], nv1 = pp.nv[1];
      const __mmask16 m0 = pp.mask[0], m1 = pp.mask[1];
      a8_pack_panel(w, n0, nv0, spans, quads, buf.codes[0], buf.scales[0], buf.row);
      if (nv1 > 0) a8_pack_panel(w, n0 + a8_panel, nv1, spans, quads, buf.codes[1], buf.scales[1], buf.row);
      // The next pair's rows (prefetch.hpp), spread over this pair's row tiles.
      const index_t nn0 = std::min(N, n0 + 2 * a8_panel), tiles = (M + a8_tile_rows - 1) / a8_tile_rows;
      row_prefetcher<F> ahead(w, nn0, pr + 1 < pb ? std::min(N, nn0 + 2 * a8_panel) : nn0, 0, K, tiles);
      auto rows = [&]<int MR>(std::integral_constant<int, MR>, index_t m) {
        ahead.step();
        if (nv1 > 0)
          a8_tile<MR, 2>({buf.codes[0], buf.codes[1]}, {buf.scales[0], buf.scales[1]}, xp + m * ldx, ldx, init + m * S, S, sx + m * lds, lds, spans,
                         y + m * ldy + n0, ldy, {m0, m1});
        else
          a8_tile<MR, 1>({buf.codes[0]}, {buf.scales[0]}, xp + m * ldx, ldx, init + m * S, S, sx + m * lds, lds, spans, y + m * ldy + n0,
                         ldy, {m0});
      };
      for_each_row_tile<a8_tile_rows>(M, rows);
    }
  }, 1);
  return true;
}

}  // namespace moela::detail

#endif  // MOELA_AVX512_VNNI_KERNELS
