#pragma once
/// \file moela/backend/cpu/qgemm.hpp
/// CPU kernels of `moela::matmul` for every weight format: `y[M, N] = x[M, K] · W[N, K]ᵀ`, fp32
/// accumulation. Internal (namespace moela::detail); the public entry is moela/ops/matmul.hpp.
///
/// Structure (one driver for all formats and all M):
///  - the driver splits N into blocks of `nc` rows (one `parallel_for` over blocks, static
///    split, so each thread streams a contiguous range of weight rows) and K into blocks of `kc`;
///  - a format decoder turns one row segment W[n, k0:k1) into fp32 in a per-thread buffer
///    (nc x kc floats: L1-resident for GEMV, L2-resident for GEMM), scale applied
///    (fast mode) or not (faithful FP8 mode, where the scale is applied per 128-block);
///  - a register-tile microkernel computes an MR x NR (4 x 3) tile of dot products over the
///    segment, vectorised along K (xsimd batches: 12 independent FMA chains), and the epilogue
///    adds the tile into y (faithful: `y += (P * x_scale) * w_scale` per 128-wide K block).
/// The x rows (fp32) are read in place: a 4 x kc tile (8 KiB) stays in L1 while the decoded
/// weight block streams past it; weights are decoded exactly once per call.
///
/// Paths: AVX2+F16C+FMA decoders (intrinsics) when compiled for them and MOELA_FORCE_GENERIC is
/// off; portable decoders (table lookups, scalar) otherwise; the microkernel is xsimd, so it is
/// portable and uses the widest batch of `Arch`. No allocation inside the loops (one per-thread
/// buffer, grown once and reused across calls).

#include <algorithm>
#include <array>
#include <bit>
#include <cstdint>
#include <cstring>
#include <span>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "moela/backend/cpu/convert.hpp"
#include "moela/backend/cpu/parallel_for.hpp"
#include "moela/backend/cpu/prefetch.hpp"
#include "moela/backend/cpu/x86/avx512_panel.hpp"
#include "moela/backend/cpu/x86/gemm_a8_avx512.hpp"
#include "moela/backend/cpu/x86/gemv_a8_avx2.hpp"
#include "moela/backend/cpu/x86/gemv_a8_avx512.hpp"
#include "moela/backend/cpu/x86/gemv_avx512.hpp"
#include "moela/backend/cpu/x86/gemv_bf16_avx512.hpp"
#include "moela/backend/cpu/x86/gemv_avx2.hpp"
#include "moela/quant/qmatrix.hpp"

namespace moela::detail {

template <class T, class A>
MOELA_ALWAYS_INLINE T hsum(const xsimd::batch<T, A>& v) {
#if XSIMD_VERSION_MAJOR >= 9
  return xsimd::reduce_add(v);
#else
  return xsimd::hadd(v);
#endif
}

// ---- decoders ---------------------------------------------------------------------------------------
//
// Roofline of a decoder: reads (k1 - k0) codes (4, 2, 1 or 0.5 bytes each) + the scales of the
// segment, writes 4 bytes per weight to the L1/L2 buffer; ~1-6 integer/convert ops per 8 weights.

/// Row `n`, columns [k0, k1) of `w` as fp32: returns a pointer to the values (into `w` itself for
/// f32, else into `out`). `scaled == false` (fp8 only) gives the unscaled code values.
template <class Arch, class F>
const float* decode_segment(const qmatrix<F>& w, index_t n, index_t k0, index_t k1, float* out, bool scaled) {
  using namespace quant;
  const index_t len = k1 - k0;
  const auto* row = w.row_codes(n);
  const auto ulen = static_cast<std::size_t>(len);
  if constexpr (F::kind == format_kind::dense) {
    (void)scaled;
    if constexpr (std::is_same_v<typename F::code_type, float>) {
      (void)out;
      return row + k0;
    } else {
      to_float<Arch>(std::span<const typename F::code_type>(row + k0, ulen), std::span<float>(out, ulen));
      return out;
    }
  } else if constexpr (F::kind == format_kind::fp8_block) {
    using Code = typename F::code_type;
    constexpr index_t bc = F::group;
    const float* srow = w.scale_data() + (n / F::block_rows) * w.scale_cols();
    for (index_t a = k0; a < k1;) {
      const index_t b = std::min(k1, (a / bc + 1) * bc);
      const float s = scaled ? srow[a / bc] : 1.0f;
      index_t k = a;
#ifdef MOELA_X86_AVX2_KERNELS
      if constexpr (use_avx2<Arch>) {
        const __m256 mul = _mm256_set1_ps(s * fp8_fp16_rescale<Code>);
        for (; k + 8 <= b; k += 8) {
          const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + k));
          _mm256_storeu_ps(out + (k - k0), fp8x8_to_ps<Code>(c, mul));
        }
      }
#endif
      const auto& tab = fp8_decode_table<Code>.v;
      for (; k < b; ++k) out[k - k0] = tab[row[k].bits] * s;
      a = b;
    }
    return out;
  } else if constexpr (F::kind == format_kind::int8_rowwise || F::kind == format_kind::int8_group) {
    (void)scaled;
    const index_t g = F::group == 0 ? w.cols() : F::group;
    const auto* srow = w.scale_data() + n * w.scale_cols();
    for (index_t a = k0; a < k1;) {
      const index_t b = std::min(k1, (a / g + 1) * g);
      const float s = quant::detail::scale_to_float(srow[a / g]);
      index_t k = a;
#ifdef MOELA_X86_AVX2_KERNELS
      if constexpr (use_avx2<Arch>) {
        const __m256 sv = _mm256_set1_ps(s);
        for (; k + 8 <= b; k += 8) {
          const __m128i c = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + k));
          _mm256_storeu_ps(out + (k - k0), _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(c)), sv));
        }
      }
#endif
      for (; k < b; ++k) out[k - k0] = static_cast<float>(row[k]) * s;
      a = b;
    }
    return out;
  } else {  // int4_group: k0, k1 are multiples of the group size (the driver's kc is a multiple of 128)
    (void)scaled;
    constexpr index_t g = F::group;
    const auto* srow = w.scale_data() + n * w.scale_cols();
    const std::uint8_t* zrow = F::has_zero ? w.zero_data() + n * w.scale_cols() : nullptr;
    for (index_t a = k0; a < k1; a += g) {
      const float s = quant::detail::scale_to_float(srow[a / g]);
      const int z = F::has_zero ? int(zrow[a / g]) : 0;
      const std::uint8_t* p = row + a / 2;
      float* o = out + (a - k0);
      index_t k = 0;
#ifdef MOELA_X86_AVX2_KERNELS
      if constexpr (use_avx2<Arch>) {
        const __m256 sv = _mm256_set1_ps(s);
        if constexpr (F::has_zero) {
          const __m256i shr = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
          const __m256i mask = _mm256_set1_epi32(0xF), zv = _mm256_set1_epi32(z);
          for (; k + 8 <= g; k += 8) {
            std::uint32_t u;
            std::memcpy(&u, p + k / 2, 4);
            const __m256i q = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(u)), shr), mask);
            _mm256_storeu_ps(o + k, _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, zv)), sv));
          }
        } else {
          const __m256i shl = _mm256_setr_epi32(28, 24, 20, 16, 12, 8, 4, 0);
          for (; k + 8 <= g; k += 8) {
            std::uint32_t u;
            std::memcpy(&u, p + k / 2, 4);
            const __m256i q = _mm256_srai_epi32(_mm256_sllv_epi32(_mm256_set1_epi32(int(u)), shl), 28);
            _mm256_storeu_ps(o + k, _mm256_mul_ps(_mm256_cvtepi32_ps(q), sv));
          }
        }
      }
#endif
      if constexpr (!use_avx2<Arch>) {  // (the AVX2 loop covers the group: G is a multiple of 8)
        for (; k < g; ++k) {
          const int nib = (p[k / 2] >> (4 * (k & 1))) & 0xF;
          const int q = F::has_zero ? nib - z : (nib >= 8 ? nib - 16 : nib);
          o[k] = static_cast<float>(q) * s;
        }
      }
    }
    return out;
  }
}

// ---- microkernel ------------------------------------------------------------------------------------
//
// Roofline of a tile: 2*MR*NR*kc FLOPs from (MR + NR)*kc*4 bytes of L1/L2 traffic; with MR x NR
// = 4 x 3 that is 12 FMAs per 7 vector loads, below the 2-loads-per-cycle limit of the core.

/// sums[i*NR + j] = Σ_k a[i][k] * b[j][k], k in [0, kc).
template <class Arch, int MR, int NR>
void dot_tile(index_t kc, const float* const* a, const float* const* b, float* sums) {
  using B = xsimd::batch<float, Arch>;
  constexpr index_t L = static_cast<index_t>(B::size);
  // Every loop over the tile is fully unrolled (MOELA_UNROLL) so the MR x NR accumulators live
  // in registers; without it GCC -O2 keeps them on the stack and each FMA waits on a store.
  B acc[MR][NR];
  MOELA_UNROLL for (int i = 0; i < MR; ++i) MOELA_UNROLL for (int j = 0; j < NR; ++j) acc[i][j] = B(0.0f);
  index_t k = 0;
  for (; k + L <= kc; k += L) {
    B bv[NR];
    MOELA_UNROLL for (int j = 0; j < NR; ++j) bv[j] = B::load_unaligned(b[j] + k);
    MOELA_UNROLL for (int i = 0; i < MR; ++i) {
      const B av = B::load_unaligned(a[i] + k);
      MOELA_UNROLL for (int j = 0; j < NR; ++j) acc[i][j] = xsimd::fma(av, bv[j], acc[i][j]);
    }
  }
  MOELA_UNROLL for (int i = 0; i < MR; ++i) MOELA_UNROLL for (int j = 0; j < NR; ++j) {
    float s = hsum(acc[i][j]);
    for (index_t t = k; t < kc; ++t) s += a[i][t] * b[j][t];
    sums[i * NR + j] = s;
  }
}

inline constexpr int tile_mr = 4, tile_nr = 3;

template <class Arch>
struct tile_table {
  using fn = void (*)(index_t, const float* const*, const float* const*, float*);
  template <int... I>
  static constexpr std::array<fn, sizeof...(I)> make(std::integer_sequence<int, I...>) {
    return {&dot_tile<Arch, I / tile_nr + 1, I % tile_nr + 1>...};
  }
  static constexpr std::array<fn, tile_mr * tile_nr> table = make(std::make_integer_sequence<int, tile_mr * tile_nr>{});
};

/// Register tile of the GEMM path for M >= gemm_pack_min_rows<Arch>: `gemm_mr` rows of x times a
/// packed panel of `gemm_nrv` vectors of weight rows. Roofline per k: gemm_nrv vector loads and
/// gemm_mr broadcasts feed gemm_mr * gemm_nrv = 12 independent FMAs, so the FMA units, not the
/// loads (2 per cycle), bound it; 12 + 2 + 1 registers of the 16.
inline constexpr int gemm_mr = 6, gemm_nrv = 2;
/// The packed path pays one transposed copy of every weight element (and of x) per call, which
/// the register tile amortises over M rows; where it starts depends on the ISA.
///  - AVX2 (the Zen 1 machine): with the packings transposed in registers, one thread, K = 2048,
///    two alternating runs (GFLOP/s, dot-product tiles vs packed): N = 128: M = 32 bf16
///    32.1-33.0 vs 30.4-31.1 (tiles win), M = 40 mixed, M = 48 bf16 31.6-34.5 vs 33.6-35.0
///    (packed); N = 1408: M = 32-40 level, M = 48 bf16 28.6-28.8 vs 31.0-36.3 (packed): 48.
///  - AVX-512 (Zen 4): the 4 x 3 dot-product tiles stay near 40-47 GFLOP/s for every M (their
///    decoded rows, 48 x 512 floats, come from L2), while the packed tile, with 16 x 16
///    transposes and rows decoded 256 columns at a time, passes them from M = 12. One thread,
///    K = 2048, two runs (tiles vs packed): N = 128: M = 8 f32 45 vs 35, bf16 39 vs 29-32,
///    fp8 36 vs 28; M = 12 f32 47 vs 53, bf16 42 vs 48, fp8 40 vs 42-43, int4 41.5 vs 46.5;
///    M = 16 every format 38-49 vs 47-57; N = 1408, M = 48: bf16 42 vs 71, fp8 36.5 vs 70,
///    int4 45 vs 72: 12. (An MoE expert of a 512-token V2-Lite prefill gets ~48 rows, half
///    of them fewer.)
template <class Arch>
inline constexpr index_t gemm_pack_min_rows = std::is_base_of_v<xsimd::avx512f, Arch> ? 12 : 48;
template <class Arch>
inline constexpr index_t gemm_nr = gemm_nrv * static_cast<index_t>(xsimd::batch<float, Arch>::size);

/// tile[i * NR + j] = Σ_k ap[k * gemm_mr + i] · bp[k * NR + j], i < gemm_mr, j < NR = gemm_nr<Arch>,
/// k < kc. `ap`: a packed panel of x (kc rows of gemm_mr values, read by broadcast); `bp`: a
/// packed weight panel (kc rows of NR consecutive output columns).
template <class Arch>
void gemm_tile(index_t kc, const float* ap, const float* bp, float* tile) {
  using B = xsimd::batch<float, Arch>;
  constexpr index_t L = static_cast<index_t>(B::size), NR = gemm_nrv * L;
  B acc[gemm_mr][gemm_nrv];
  MOELA_UNROLL for (int i = 0; i < gemm_mr; ++i) MOELA_UNROLL for (int v = 0; v < gemm_nrv; ++v) acc[i][v] = B(0.0f);
  for (index_t k = 0; k < kc; ++k) {
    B bv[gemm_nrv];
    MOELA_UNROLL for (int v = 0; v < gemm_nrv; ++v) bv[v] = B::load_unaligned(bp + k * NR + v * L);
    MOELA_UNROLL for (int i = 0; i < gemm_mr; ++i) {
      const B av(ap[k * gemm_mr + i]);
      MOELA_UNROLL for (int v = 0; v < gemm_nrv; ++v) acc[i][v] = xsimd::fma(av, bv[v], acc[i][v]);
    }
  }
  MOELA_UNROLL for (int i = 0; i < gemm_mr; ++i) MOELA_UNROLL for (int v = 0; v < gemm_nrv; ++v)
    acc[i][v].store_unaligned(tile + i * NR + v * L);
}

/// A k-major panel of x: dst[k * gemm_mr + i] = rows[i][k], k < K, i < gemm_mr (6). With AVX2,
/// per 4 columns: rows 0-3 as a 4 x 4 transpose (one 16-byte store per column), rows 4-5 as
/// interleaved pairs (one 8-byte store per column); 1 op per float instead of a load and a
/// store.
template <class Arch>
void pack_x_panel(const float* const* rows, index_t K, float* dst) {
  static_assert(gemm_mr == 6);
  index_t k = 0;
#ifdef MOELA_X86_AVX2_KERNELS
  if constexpr (use_avx2<Arch>) {
    for (; k + 4 <= K; k += 4) {
      __m128 r0 = _mm_loadu_ps(rows[0] + k), r1 = _mm_loadu_ps(rows[1] + k);
      __m128 r2 = _mm_loadu_ps(rows[2] + k), r3 = _mm_loadu_ps(rows[3] + k);
      _MM_TRANSPOSE4_PS(r0, r1, r2, r3);  // r_c = rows 0-3 at column k + c
      const __m128 r4 = _mm_loadu_ps(rows[4] + k), r5 = _mm_loadu_ps(rows[5] + k);
      const __m128 lo = _mm_unpacklo_ps(r4, r5), hi = _mm_unpackhi_ps(r4, r5);  // (r4, r5) at k, k+1 | k+2, k+3
      float* d = dst + k * gemm_mr;
      _mm_storeu_ps(d, r0);
      _mm_storel_pi(reinterpret_cast<__m64*>(d + 4), lo);
      _mm_storeu_ps(d + 6, r1);
      _mm_storeh_pi(reinterpret_cast<__m64*>(d + 10), lo);
      _mm_storeu_ps(d + 12, r2);
      _mm_storel_pi(reinterpret_cast<__m64*>(d + 16), hi);
      _mm_storeu_ps(d + 18, r3);
      _mm_storeh_pi(reinterpret_cast<__m64*>(d + 22), hi);
    }
  }
#endif
  for (; k < K; ++k)
    for (index_t i = 0; i < gemm_mr; ++i) dst[k * gemm_mr + i] = rows[i][k];
}

/// A k-major weight panel from NR decoded rows: dst[k * NR + j] = rows[j][k], k < len, j < NR.
/// With AVX-512 the rows are transposed 16 x 16 in registers (16 row loads, 64 shuffles, 16
/// line stores per 256 floats); with AVX2 8 x 8 (16 half-row loads, 16 in-lane shuffles, 8
/// full-line stores per 64 floats): the scalar loop stores one float per instruction, with a
/// stride of NR floats, so each of the block's lines is written NR times.
template <class Arch, index_t NR>
void pack_panel(const float* const* rows, index_t len, float* dst) {
  index_t k = 0;
#if defined(__AVX512F__) && !defined(MOELA_FORCE_GENERIC)
  if constexpr (std::is_base_of_v<xsimd::avx512f, Arch> && NR % 16 == 0) {
    for (; k + 16 <= len; k += 16)
      MOELA_UNROLL for (index_t j0 = 0; j0 < NR; j0 += 16) {
        __m512i r[16];
        MOELA_UNROLL for (int i = 0; i < 16; ++i) r[i] = _mm512_castps_si512(_mm512_loadu_ps(rows[j0 + i] + k));
        transpose16x16_store(r, reinterpret_cast<std::uint32_t*>(dst + k * NR + j0), NR);
      }
  }
#endif
#ifdef MOELA_X86_AVX2_KERNELS
  if constexpr (use_avx2<Arch> && NR % 8 == 0) {
    for (; k + 8 <= len; k += 8)
      MOELA_UNROLL for (index_t j0 = 0; j0 < NR; j0 += 8) {
        const float* const* r = rows + j0;
        float* d = dst + k * NR + j0;
        MOELA_UNROLL for (int h = 0; h < 8; h += 4) {  // k + h .. k + h + 3
          // v[i] = [row i, k+h..k+h+3 | row i+4, the same k]
          __m256 v[4];
          MOELA_UNROLL for (int i = 0; i < 4; ++i)
            v[i] = _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_loadu_ps(r[i] + k + h)), _mm_loadu_ps(r[i + 4] + k + h), 1);
          const __m256 t0 = _mm256_unpacklo_ps(v[0], v[1]), t1 = _mm256_unpackhi_ps(v[0], v[1]);
          const __m256 t2 = _mm256_unpacklo_ps(v[2], v[3]), t3 = _mm256_unpackhi_ps(v[2], v[3]);
          // [rows 0-3 | rows 4-7] at k + h + 0, 1, 2, 3
          _mm256_storeu_ps(d + (h + 0) * NR, _mm256_shuffle_ps(t0, t2, 0x44));
          _mm256_storeu_ps(d + (h + 1) * NR, _mm256_shuffle_ps(t0, t2, 0xEE));
          _mm256_storeu_ps(d + (h + 2) * NR, _mm256_shuffle_ps(t1, t3, 0x44));
          _mm256_storeu_ps(d + (h + 3) * NR, _mm256_shuffle_ps(t1, t3, 0xEE));
        }
      }
  }
#endif
  for (; k < len; ++k)
    for (index_t j = 0; j < NR; ++j) dst[k * NR + j] = rows[j][k];
}

#if defined(__AVX512BW__) && defined(__AVX512VL__) && !defined(MOELA_FORCE_GENERIC) && defined(MOELA_X86_AVX2_KERNELS)
#define MOELA_AVX512_PACK_DECODE 1
/// The formats `decode16` takes: every scale span along K a multiple of 16 columns.
template <class F>
inline constexpr bool decode16_format = F::kind == quant::format_kind::dense || F::group % 16 == 0;

/// W[n, k .. k + 16) as fp32 (k a multiple of 16), scale applied unless `scaled` is false (fp8):
/// the same values as decode_segment, in one register. Ops per 16 weights: f32 1, bf16/fp16 2-3,
/// INT8 4, INT4 8, FP8 5 with AVX512-VBMI (table lookup, fp8_bf16_lookup), else E4M3 10 and
/// E5M2 4 (NaN codes give NaN, as the table decoder).
template <class F>
MOELA_ALWAYS_INLINE __m512 decode16(const qmatrix<F>& w, index_t n, index_t k, bool scaled) {
  using namespace quant;
  using Code = typename F::code_type;
  const Code* row = w.row_codes(n);
  if constexpr (F::kind == format_kind::dense) {
    if constexpr (std::is_same_v<Code, float>) {
      return _mm512_loadu_ps(row + k);
    } else {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + k));
      if constexpr (std::is_same_v<Code, moela::bf16>) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
      else return _mm512_cvtph_ps(h);
    }
  } else if constexpr (F::kind == format_kind::fp8_block) {
    const float s = scaled ? w.scale_data()[(n / F::block_rows) * w.scale_cols() + k / F::group] : 1.0f;
#ifdef MOELA_FP8_VBMI
    // Code j into bytes 2 and 3 of 32-bit lane j, then its bf16 pattern there: the fp32 value.
    const __m512i spread = _mm512_set_epi8(15, 15, 0, 0, 14, 14, 0, 0, 13, 13, 0, 0, 12, 12, 0, 0, 11, 11, 0, 0, 10, 10, 0, 0,
                                           9, 9, 0, 0, 8, 8, 0, 0, 7, 7, 0, 0, 6, 6, 0, 0, 5, 5, 0, 0, 4, 4, 0, 0, 3, 3, 0, 0,
                                           2, 2, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0);
    const __m512i t = _mm512_maskz_permutexvar_epi8(
        0xCCCCCCCCCCCCCCCCull, spread, _mm512_castsi128_si512(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k))));
    const __m512 v = _mm512_castsi512_ps(fp8_bf16_lookup<Code>(t, 0x8888888888888888ull, 0x4444444444444444ull));
    return scaled ? _mm512_mul_ps(v, _mm512_set1_ps(s)) : v;
#else
    const __m256i h = fp8x16_to_fp16_bits<Code>(_mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k)));
    return _mm512_mul_ps(_mm512_cvtph_ps(h), _mm512_set1_ps(s * fp8_fp16_rescale<Code>));
#endif
  } else if constexpr (F::kind == format_kind::int8_rowwise || F::kind == format_kind::int8_group) {
    const index_t g = F::group == 0 ? w.cols() : F::group;
    const float s = quant::detail::scale_to_float(w.scale_data()[n * w.scale_cols() + k / g]);
    const __m128i c = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(c)), _mm512_set1_ps(s));
  } else {  // int4_group: byte b holds codes 2b (low nibble) and 2b + 1
    const index_t gi = n * w.scale_cols() + k / F::group;
    const float s = quant::detail::scale_to_float(w.scale_data()[gi]);
    const __m128i b = _mm_cvtepu8_epi16(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(row + k / 2)));
    // 16-bit lane i = (high nibble << 8) | low nibble: the 16 codes as bytes, in order.
    const __m128i u = _mm_or_si128(_mm_and_si128(b, _mm_set1_epi16(0x0F)), _mm_slli_epi16(_mm_srli_epi16(b, 4), 8));
    __m512i q = _mm512_cvtepu8_epi32(u);
    if constexpr (F::has_zero)
      q = _mm512_sub_epi32(q, _mm512_set1_epi32(w.zero_data()[gi]));
    else  // two's complement nibble: (u ^ 8) - 8
      q = _mm512_sub_epi32(_mm512_xor_si512(q, _mm512_set1_epi32(8)), _mm512_set1_epi32(8));
    return _mm512_mul_ps(_mm512_cvtepi32_ps(q), _mm512_set1_ps(s));
  }
}

/// A k-major weight panel decoded straight from the codes: dst[(k - a) * NR + j] = W[n0 + j, k]
/// for j < count (zeros for count <= j < NR) and k in [a, b), (b - a) and a multiples of 16.
/// Per 16 x 16 block: 16 decodes into registers, 64 shuffles, 16 line stores; no fp32 row buffer.
/// Roofline against the tile it feeds: per weight ~0.4-0.6 vector ops of pack (decode 1-10 ops
/// per 16 weights, 4 shuffles, 1 store) against M / 16 FMAs of the 6 x 2 tile, so the pack is
/// level with the tile near M = 8-10 and ~10% of it at M = 48 (measured: one thread, N = 1408,
/// M = 48 runs at 0.75-0.96 of M = 512 across formats and runs, most 0.80-0.86;
/// docs/performance.md, tenth pass).
template <index_t NR, class F>
void pack_panel_decoded(const qmatrix<F>& w, index_t n0, index_t count, index_t a, index_t b, float* dst, bool scaled) {
  static_assert(NR % 16 == 0);
  for (index_t k = a; k < b; k += 16)
    MOELA_UNROLL for (index_t j0 = 0; j0 < NR; j0 += 16) {
      __m512i r[16];
      MOELA_UNROLL for (int i = 0; i < 16; ++i)
        r[i] = j0 + i < count ? _mm512_castps_si512(decode16(w, n0 + j0 + i, k, scaled)) : _mm512_setzero_si512();
      transpose16x16_store(r, reinterpret_cast<std::uint32_t*>(dst + (k - a) * NR + j0), NR);
    }
}
#endif

/// A per-thread scratch buffer, grown once (never inside a kernel's loops) and reused.
inline float* scratch_floats(std::size_t n) {
  thread_local std::vector<float> buf;
  return grown(buf, static_cast<index_t>(n));
}

/// Calls `run(std::integral_constant<int, M>{})` for M in 1..4 (the GEMV kernels' row counts).
template <class Run>
MOELA_ALWAYS_INLINE void with_small_m(index_t m, Run&& run) {
  switch (m) {
    case 1: run(std::integral_constant<int, 1>{}); break;
    case 2: run(std::integral_constant<int, 2>{}); break;
    case 3: run(std::integral_constant<int, 3>{}); break;
    default: run(std::integral_constant<int, 4>{}); break;
  }
}

// ---- driver -----------------------------------------------------------------------------------------
//
// Roofline of a call: bytes = w.bytes() + 4*M*K (+ 4*M*N written); FLOPs = 2*M*N*K.
// M = 1..4: memory bound (arithmetic intensity ~2M/bytes_per_weight FLOP/B) -> target: weights
// streamed at DRAM speed. M >= 16: compute bound -> target: FMA peak (decode cost amortised
// over M rows).

/// y[M, N] (row stride ldy) = x[M, K] (row stride ldx) · Wᵀ. `Faithful`: x holds FP8 code values
/// (decoded) with group scales `xs[M, ceil(K/128)]`, and W's block scales are applied per
/// 128-wide K block to the fp32 partial sums (requires fp8_block<128, 128>).
template <class Arch, class F, bool Faithful>
void qgemm(float* y, index_t ldy, const float* x, index_t ldx, index_t M, const qmatrix<F>& w, const float* xs) {
  const index_t N = w.rows(), K = w.cols();
#ifdef MOELA_X86_AVX2_KERNELS
  if constexpr (use_avx2<Arch> && !Faithful) {
    if (M <= 4) {  // decode GEMV / tiny batches: fused decode-and-FMA kernels, rows split across threads
      auto run = [&]<int MM>(std::integral_constant<int, MM>) {
#ifdef MOELA_AVX512_GEMV_FAST
        if constexpr (std::is_base_of_v<xsimd::avx512bw, Arch> && fast512_format<F>) {
          // AVX-512 kernels (gemv_avx512.hpp): x laid out in the decoders' lane order.
          constexpr index_t C = fast512_chunk<F>;
          const index_t Kp = (K + C - 1) / C * C, ng = F::packed4 ? K / F::group : 0;
          thread_local std::vector<float> prep;  // grown once, reused across calls
          float* xp = grown(prep, MM * (Kp + ng));
          float* gsum = xp + MM * Kp;
          for (int m = 0; m < MM; ++m) fast512_prepare_x<F>(x + m * ldx, K, xp + m * Kp, gsum + m * ng);
          parallel_for(N, [&](index_t a, index_t b) { gemv_avx512_fast<F, MM>(w, xp, Kp, gsum, a, b, y, ldy); });
          return;
        }
#endif
        if constexpr (F::kind == quant::format_kind::int4_group) {
          const index_t ng = K / F::group;
          thread_local std::vector<float> prep;  // grown once, reused across calls
          float* xp = grown(prep, MM * (K + ng));
          float* xsum = xp + MM * K;
          for (int m = 0; m < MM; ++m) int4_prepare_x(x + m * ldx, K, F::group, xp + m * K, xsum + m * ng);
          parallel_for(N, [&](index_t a, index_t b) { gemv_avx2_int4<F, MM>(w, xp, K, xsum, a, b, y, ldy); });
        } else {
          parallel_for(N, [&](index_t a, index_t b) { gemv_avx2<F, MM>(w, x, ldx, a, b, y, ldy); });
        }
      };
      with_small_m(M, run);
      return;
    }
  }
#endif
  const index_t kb_count = (K + 127) / 128;
  // Adds the tile of partial sums `t` (rows m0.., columns n0.. of y, row stride `ts`) over K block
  // [k0, ..): stores at k0 = 0; faithful mode scales each 128-wide block's sums (x scale per row,
  // W scale per 128 x 128 block) before adding.
  auto add_tile = [&](const float* t, index_t ts, index_t m0, index_t mr, index_t n0, index_t nr, index_t k0) {
    for (index_t i = 0; i < mr; ++i) {
      float* yr = y + (m0 + i) * ldy + n0;
      const float* ti = t + i * ts;
      if constexpr (Faithful) {
        const index_t kb = k0 / 128;
        const float sx = xs[(m0 + i) * kb_count + kb];
        for (index_t j = 0; j < nr; ++j) {
          const float v = (ti[j] * sx) * w.scale_data()[((n0 + j) / 128) * w.scale_cols() + kb];
          yr[j] = k0 == 0 ? v : yr[j] + v;
        }
      } else if (k0 == 0) {
        for (index_t j = 0; j < nr; ++j) yr[j] = ti[j];
      } else {
        for (index_t j = 0; j < nr; ++j) yr[j] += ti[j];
      }
    }
  };
  if (M >= gemm_pack_min_rows<Arch>) {
    // GEMM: blocks of nc weight rows split over threads; per K block of kc, the rows are decoded
    // (exactly once per call) and packed into panels of NR columns (kc x NR, k-major), which the
    // register tile sweeps for every gemm_mr rows of x. Per thread: a packed block of kc x nc
    // floats (192 KiB, L2), the decoded rows of one panel (32 KiB) and a panel of x (12 KiB, L1).
    // The codes of the next pack are prefetched into L2 during the tiles of the current one.
    // Both packings transpose in registers (pack_panel, pack_x_panel): with strided scalar
    // stores they cost ~10% of a call at N = 128 (an MoE weight chunk) and ~5% at N = 2048.
    constexpr index_t NR = gemm_nr<Arch>;
    // x packed once per call into panels of gemm_mr rows, k-major (xp[panel][k][i]): the
    // broadcasts then read one contiguous stream instead of gemm_mr rows K floats apart (which
    // share L1 sets when K * 4 bytes is a multiple of 4 KiB). Rows past M repeat the last row.
    const index_t mpanels = (M + gemm_mr - 1) / gemm_mr;
    thread_local std::vector<float> xpack_buf;  // the calling thread's, grown once, shared with the workers
    float* xpack = grown(xpack_buf, mpanels * gemm_mr * K);
    parallel_for(mpanels, [&](index_t p0, index_t p1) {
      for (index_t p = p0; p < p1; ++p) {
        const float* rows[gemm_mr];
        for (index_t i = 0; i < gemm_mr; ++i) rows[i] = x + std::min(p * gemm_mr + i, M - 1) * ldx;
        pack_x_panel<Arch>(rows, K, xpack + p * gemm_mr * K);
      }
    });
    const index_t kc = Faithful ? 128 : 512;
    constexpr index_t block_panels = 6;  // nc = 6 NR weight rows decoded per K block
    // Rows are decoded and packed `sub` columns at a time, so the decoded rows of a panel
    // (NR x sub floats: 32 KiB with AVX-512) stay in L1 between the decoder's stores and the
    // transpose's loads. A multiple of every format's K span (FP8 blocks, INT4 groups).
    constexpr index_t sub = 256;
    const index_t npanels_all = (N + NR - 1) / NR;
    // Each thread gets a contiguous, equal share of the panels (the static split) and walks it
    // in blocks of block_panels, so no thread is left with a whole extra block.
    parallel_for(npanels_all, [&](index_t q0, index_t q1) {
      // The decoded rows of one panel, a row of zeros (for columns past N), the packed block.
      float* rowbuf = scratch_floats(static_cast<std::size_t>((NR + 1) * sub + block_panels * NR * kc));
      float* zeros = rowbuf + NR * sub;
      float* packed = zeros + sub;
      std::fill_n(zeros, sub, 0.0f);
      alignas(64) float tile[gemm_mr * NR];
      for (index_t qb = q0; qb < q1; qb += block_panels) {
        const index_t n0 = qb * NR, nn = std::min(N, std::min(q1, qb + block_panels) * NR) - n0;
        const index_t npanels = (nn + NR - 1) / NR;
        for (index_t k0 = 0; k0 < K; k0 += kc) {
          const index_t len = std::min(K, k0 + kc) - k0;
          for (index_t p = 0; p < npanels; ++p)
            for (index_t s0 = 0; s0 < len; s0 += sub) {
              const index_t a = k0 + s0, b = std::min(k0 + len, a + sub);
              float* dst = packed + p * kc * NR + s0 * NR;
#ifdef MOELA_AVX512_PACK_DECODE
              if constexpr (std::is_base_of_v<xsimd::avx512bw, Arch> && decode16_format<F> && NR % 16 == 0) {
                if ((b - a) % 16 == 0) {
                  pack_panel_decoded<NR>(w, n0 + p * NR, std::min(NR, nn - p * NR), a, b, dst, !Faithful);
                  continue;
                }
              }
#endif
              // The buffer path: the next piece's codes are prefetched while this one is decoded
              // (the walk takes `sub` codes of NR rows in turn, a stride the hardware prefetcher
              // does not follow; with the AVX2 decoders, one thread, M = 48-96: +0-8%). The
              // fused path above gains nothing from it (same process, +-1%).
              if (b < k0 + len)
                row_prefetcher<F, 3>(w, n0 + p * NR, n0 + std::min((p + 1) * NR, nn), b, std::min(k0 + len, b + sub)).step();
              else if (p + 1 < npanels)
                row_prefetcher<F, 3>(w, n0 + (p + 1) * NR, n0 + std::min((p + 2) * NR, nn), k0, std::min(k0 + len, k0 + sub)).step();
              const float* rows[NR];
              for (index_t j = 0; j < NR; ++j) {
                const index_t c = p * NR + j;  // columns past N: zeros (their sums are not stored)
                rows[j] = c < nn ? decode_segment<Arch>(w, n0 + c, a, b, rowbuf + j * sub, !Faithful) : zeros;
              }
              pack_panel<Arch, NR>(rows, b - a, dst);
            }
          // What the next pack reads (the next K block of these rows, else the first of the
          // next block of rows), prefetched into L2 over this block's tiles (prefetch.hpp).
          row_prefetcher<F> ahead;
          if (k0 + kc < K)
            ahead = row_prefetcher<F>(w, n0, n0 + nn, k0 + kc, std::min(K, k0 + 2 * kc), mpanels * npanels);
          else if (qb + block_panels < q1)
            ahead = row_prefetcher<F>(w, n0 + block_panels * NR, std::min(N, std::min(q1, qb + 2 * block_panels) * NR), 0,
                                      std::min(K, kc), mpanels * npanels);
          for (index_t m0 = 0; m0 < M; m0 += gemm_mr) {
            const index_t mr = std::min<index_t>(gemm_mr, M - m0);
            const float* ap = xpack + m0 * K + k0 * gemm_mr;
            for (index_t p = 0; p < npanels; ++p) {
              ahead.step();
              gemm_tile<Arch>(len, ap, packed + p * kc * NR, tile);
              add_tile(tile, NR, m0, mr, n0 + p * NR, std::min(NR, nn - p * NR), k0);
            }
          }
        }
      }
    });
    return;
  }
  // Fewer rows (and M <= 4 without the AVX2 kernels): dot products along K, 4 x 3 tiles, on the
  // weight rows as decoded; nothing is packed.
  const index_t kc = Faithful ? 128 : std::min<index_t>(512, (K + 127) / 128 * 128);
  const index_t nc = M <= 4 ? 8 : 48;
  const index_t nblocks = (N + nc - 1) / nc;
  const auto& tiles = tile_table<Arch>::table;
  parallel_for(nblocks, [&](index_t b0, index_t b1) {
    float* buf = scratch_floats(static_cast<std::size_t>(nc * kc));
    const float* rows[48];
    float sums[tile_mr * tile_nr];
    for (index_t nb = b0; nb < b1; ++nb) {
      const index_t n0 = nb * nc, nn = std::min(N, n0 + nc) - n0;
      for (index_t k0 = 0; k0 < K; k0 += kc) {
        const index_t k1 = std::min(K, k0 + kc), len = k1 - k0;
        for (index_t j = 0; j < nn; ++j) rows[j] = decode_segment<Arch>(w, n0 + j, k0, k1, buf + j * kc, !Faithful);
        for (index_t m0 = 0; m0 < M; m0 += tile_mr) {
          const index_t mr = std::min<index_t>(tile_mr, M - m0);
          const float* a[tile_mr];
          for (index_t i = 0; i < mr; ++i) a[i] = x + (m0 + i) * ldx + k0;
          for (index_t j0 = 0; j0 < nn; j0 += tile_nr) {
            const index_t nr = std::min<index_t>(tile_nr, nn - j0);
            tiles[static_cast<std::size_t>((mr - 1) * tile_nr + (nr - 1))](len, a, rows + j0, sums);
            add_tile(sums, nr, m0, mr, n0 + j0, nr, k0);
          }
        }
      }
    }
  });
}

/// y[M, N] (row stride ldy) = (xq ∘ sx)[M, K] · Wᵀ for `quant::mode::int8_activations`: `xq` int8
/// activation codes (rows of stride K), `sx` their scales (rows of stride ceil(K / 128), one per
/// 128 columns), `xd` the dequantized activations q · s (fp32, rows of stride K), W an int8 or
/// int4 format. M <= 4 with AVX2: the integer kernels of gemv_a8_avx2.hpp on (xq, sx), or of
/// gemv_a8_avx512.hpp with AVX-512 VNNI (int8 only for groups that are multiples of 64). M > 4 with
/// AVX-512 VNNI: the integer GEMM of gemm_a8_avx512.hpp on (xq, sx). Otherwise the fast-mode
/// driver above multiplies xd, which differs from the integer sums by fp32 rounding only.
template <class Arch, class F>
void qgemm_a8(float* y, index_t ldy, [[maybe_unused]] const std::int8_t* xq, [[maybe_unused]] const float* sx,
              const float* xd, index_t M, const qmatrix<F>& w) {
  static_assert(quant::integer_format<F>, "qgemm_a8: int8 activations need an int8 or int4 weight format");
  const index_t K = w.cols();
#ifdef MOELA_X86_AVX2_KERNELS
  if constexpr (use_avx2<Arch>) {
    if (M <= 4) {
      const index_t lds = (K + quant::int8_activation_group - 1) / quant::int8_activation_group;
      const index_t N = w.rows();
      // AVX-512 VNNI kernels (gemv_a8_avx512.hpp) where the build and Arch have them, else AVX2.
      [[maybe_unused]] constexpr bool vnni =
#ifdef MOELA_AVX512_GEMV_A8
          std::is_base_of_v<xsimd::avx512bw, Arch>;
#else
          false;
#endif
      auto run = [&]<int MM>(std::integral_constant<int, MM>) {
        if constexpr (F::kind == quant::format_kind::int4_group) {
          // The calling thread's buffers, grown once and reused across calls; the workers get
          // plain pointers (a thread_local named inside the lambda would be the worker's own).
          thread_local std::vector<std::int8_t> xp_buf;
          thread_local std::vector<float> gsum_buf;
          // Rows of xp hold K rounded up to whole 128-code chunks (a8_int4_prepare pads the last),
          // rows of gsum ldp / 32 groups (K is a multiple of G >= 32).
          const index_t ldp = (K + 127) / 128 * 128;
          std::int8_t* xp = grown(xp_buf, MM * ldp);
          float* gsum = grown(gsum_buf, MM * ldp / 32);
          for (int m = 0; m < MM; ++m) {
#ifdef MOELA_AVX512_GEMV_A8
            if constexpr (vnni) {
              a8_int4_prepare<128>(xq + m * K, sx + m * lds, K, F::group, a8_int4_group_mul<F>, xp + m * ldp,
                                   gsum + m * ldp / 32);
              continue;
            }
#endif
            a8_int4_prepare(xq + m * K, sx + m * lds, K, F::group, a8_int4_group_mul<F>, xp + m * ldp,
                            gsum + m * ldp / 32);
          }
          parallel_for(N, [&](index_t a, index_t b) {
#ifdef MOELA_AVX512_GEMV_A8
            if constexpr (vnni) {
              gemv_a8_avx512_int4<F, MM>(w, xp, ldp, gsum, sx, lds, a, b, y, ldy);
              return;
            }
#endif
            gemv_a8_avx2_int4<F, MM>(w, xp, ldp, gsum, xq, K, sx, lds, a, b, y, ldy);
          });
        } else {
#ifdef MOELA_AVX512_GEMV_A8
          if constexpr (vnni && a8_int8_vnni_ok<F>) {
            thread_local std::vector<std::int32_t> init_buf;
            const index_t ldi = K / 64;
            std::int32_t* init = grown(init_buf, MM * ldi);
            for (int m = 0; m < MM; ++m) a8_int8_prepare_512(xq + m * K, K, init + m * ldi);
            parallel_for(N, [&](index_t a, index_t b) {
              gemv_a8_avx512_int8<F, MM>(w, xq, K, init, ldi, sx, lds, a, b, y, ldy);
            });
            return;
          }
#endif
          parallel_for(N, [&](index_t a, index_t b) { gemv_a8_avx2_int8<F, MM>(w, xq, K, sx, lds, a, b, y, ldy); });
        }
      };
      with_small_m(M, run);
      return;
    }
  }
#endif
#ifdef MOELA_AVX512_VNNI_KERNELS
  if constexpr (use_avx512_vnni<Arch>)
    if (gemm_a8_vnni(y, ldy, xq, sx, M, w)) return;
#endif
  qgemm<Arch, F, false>(y, ldy, xd, K, M, w, nullptr);
}

/// Most activation rows `qgemv_bf16` takes; more go to the fast mode's packed GEMM on the rounded
/// rows. Measured (2 threads, Zen 4, int4_group<32>, N = 1408, K = 2048), the blocked GEMV over
/// the fast GEMM in the same run: 2.5-3.5x at M = 4-8, 1.4-1.7x at 32-48, 1.1-1.25x at 128-256,
/// 0.93-0.96x at 512 (docs/performance.md, fifteenth pass).
inline constexpr index_t bf16_gemv_max_rows = 256;

/// Whether `qgemv_bf16` has a kernel for format F, m rows, on Arch: int4_group weights, m <=
/// bf16_gemv_max_rows, an AVX-512 Arch with the AVX512-BF16 kernels compiled in.
template <class Arch, class F>
constexpr bool bf16_gemv_runs([[maybe_unused]] index_t m) {
#ifdef MOELA_AVX512_GEMV_BF16
  return std::is_base_of_v<xsimd::avx512bw, Arch> && F::kind == quant::format_kind::int4_group && m <= bf16_gemv_max_rows;
#else
  return false;
#endif
}

/// y[M, N] (row stride ldy) = x[M, K] · Wᵀ for `quant::mode::bf16_activations` with an int4_group
/// weight (bf16_gemv_runs): bf16 activation rows `x` (stride ldx) times the exact codes, the
/// `vdpbf16ps` GEMV of gemv_bf16_avx512.hpp, weight rows split across threads. M > 4 runs it on
/// blocks of 4 activation rows over each 16 weight rows in turn, so a block's codes are read
/// from memory once and from L1 for the other activation blocks.
template <class Arch, class F>
void qgemv_bf16([[maybe_unused]] float* y, [[maybe_unused]] index_t ldy, [[maybe_unused]] const bf16* x,
                [[maybe_unused]] index_t ldx, [[maybe_unused]] index_t M, [[maybe_unused]] const qmatrix<F>& w) {
#ifdef MOELA_AVX512_GEMV_BF16
  if constexpr (std::is_base_of_v<xsimd::avx512bw, Arch> && F::kind == quant::format_kind::int4_group) {
    const index_t N = w.rows(), K = w.cols(), ldp = (K + 127) / 128 * 128, ng = K / F::group;
    // The calling thread's buffers, grown once and reused; the workers get plain pointers.
    thread_local std::vector<bf16> xp_buf;
    thread_local std::vector<float> gsum_buf;
    bf16* xp = grown(xp_buf, M * ldp);
    float* gsum = grown(gsum_buf, M * ng);
    for (index_t m = 0; m < M; ++m) bf16_int4_prepare(x + m * ldx, K, F::group, xp + m * ldp, gsum + m * ng);
    // Activation rows [m0, m0 + min(4, M - m0)) times weight rows [a, b).
    auto block = [&](index_t m0, index_t a, index_t b) {
      with_small_m(std::min<index_t>(4, M - m0), [&]<int MM>(std::integral_constant<int, MM>) {
        gemv_bf16_avx512_int4<F, MM>(w, xp + m0 * ldp, ldp, gsum + m0 * ng, a, b, y + m0 * ldy, ldy);
      });
    };
    constexpr index_t nb = 16;  // weight rows per pass over the activation blocks
    parallel_for(N, [&](index_t a, index_t b) {
      if (M <= 4) return block(0, a, b);
      for (index_t n = a; n < b; n += nb)
        for (index_t m0 = 0; m0 < M; m0 += 4) block(m0, n, std::min(b, n + nb));
    });
    return;
  }
#endif
  throw error("qgemv_bf16: no kernel for this format and architecture (bf16_gemv_runs is false)");
}

}  // namespace moela::detail
