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
///    c = u - 8 after flipping bit 3, asymmetric ones as c = u - z), so Σ q·c = Σ q·u - z Σ q. The
///    kernel sums q·u per 32-bit lane; the z Σ q of each weight group is taken off once per row
///    (see gemv_a8_avx2_int4). Pair sums are at most 2 * 15 * 127, and the low- and high-nibble
///    halves add without saturating.
///
/// Roofline (M = 1, per 32 weight bytes, Zen 1 counts 256-bit ops as 2 µops): int8 5 ops (abs,
/// sign, 2 multiplies, add) vs 12 for the fp32-decode kernel of gemv_avx2.hpp; int4 (64 weights)
/// 11 ops vs ~36. The multiplies issue on one pipe: 2 (int8) or 3 (int4) per 32 bytes bound a core
/// at ~8 and ~5.3 bytes per cycle, above the DRAM share of a core; so the target is the triad
/// bandwidth. int4 runs at that pipe's bound from L3 (one thread, 9-10.5 GB/s). Measured:
/// docs/performance.md.

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "moela/backend/cpu/convert.hpp"
#include "moela/backend/cpu/x86/gemv_avx2.hpp"
#include "moela/quant/qmatrix.hpp"

#ifdef MOELA_X86_AVX2_KERNELS
#include <immintrin.h>

namespace moela::detail {

inline constexpr index_t a8_group = quant::int8_activation_group;

/// Prefetch distance of these kernels (into L1, `prefetch_ahead` of gemv_avx2.hpp). They need
/// fewer instructions per byte than DRAM delivers to one core. Measured on the Zen 1 (AVX2) host,
/// rows of 1-2 KiB (K = 2048): 4 KiB ahead took int4 from 8.6-10.5 to 12.9-14.8 GB/s and int8 from
/// 12.1-12.7 to 13-16 GB/s (2 threads); 8 KiB, the int8 kernel's whole 4-row pass at K = 2048,
/// took int8 on to 17-20 GB/s on every shape and int4 up by 5-10% (16 KiB lost again, 1-2 KiB
/// gained less). (The fp32-decode kernels of gemv_avx2.hpp moved within noise there; on the
/// AVX-512 host 16 KiB into L2 lifted them, see gemv_fast_prefetch_bytes.)
inline constexpr std::size_t gemv_prefetch_bytes = 8192;

/// The weight rows n .. n + R - 1 of a kernel pass (rows past `rr` repeat the last one): codes
/// (int4: packed bytes), scales (FP8 blocks: the row's block row) and zero points (nullptr
/// without them).
template <class F, int R>
struct a8_rows {
  const typename F::code_type* codes[R];
  const typename F::scale_type* scales[R];
  const std::uint8_t* zeros[R];
  a8_rows(const qmatrix<F>& w, index_t n, int rr) {
    for (int r = 0; r < R; ++r) {
      const index_t nr = n + std::min(r, rr - 1);
      codes[r] = w.row_codes(nr);
      scales[r] = w.scale_data() + nr / F::block_rows * w.scale_cols();  // (FP8: the row's block row)
      zeros[r] = F::has_zero ? w.zero_data() + nr * w.scale_cols() : nullptr;
    }
  }
};

/// y[m, n] for n in [n0, n1), m < M: int8_rowwise / int8_group weights, int8 activations `xq`
/// (rows of stride ldx) with group scales `sx` (rows of stride lds, one per 128 columns).
template <class F, int M>
void gemv_a8_avx2_int8(const qmatrix<F>& w, const std::int8_t* xq, index_t ldx, const float* sx, index_t lds,
                       index_t n0, index_t n1, float* y, index_t ldy) {
  constexpr int R = M == 1 ? 4 : (M == 2 ? 2 : 1);
  const index_t K = w.cols();
  const index_t wg = F::group == 0 ? K : F::group;
  const __m256i ones = _mm256_set1_epi16(1);
  const param_prefetcher<F, _MM_HINT_T0> params(w, gemv_prefetch_bytes);
  for (index_t n = n0; n < n1; n += R) {
    const int rr = static_cast<int>(std::min<index_t>(R, n1 - n));
    const a8_rows<F, R> rw(w, n, rr);
    params.rows(n, R);
    const auto& rows = rw.codes;
    const auto& srow = rw.scales;
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
          prefetch_ahead<gemv_prefetch_bytes, _MM_HINT_T0>(rows[r] + k);
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

/// gsum[g] = mul · sx[g G / 128] · Σ xq over weight group g, g < ng (see a8_int4_prepare).
inline void a8_int4_group_sums(const std::int8_t* xq, const float* sx, index_t ng, index_t G, std::int32_t mul,
                               float* gsum) {
  for (index_t g = 0; g < ng; ++g) {
    std::int32_t s = 0;  // |s| <= 128 * 128: exact, and exact in float after the multiply by mul
    for (index_t k = g * G; k < (g + 1) * G; ++k) s += xq[k];
    gsum[g] = static_cast<float>(mul * s) * sx[g * G / a8_group];
  }
}

/// Activation layout of the int4 kernels: within each `Chunk`-wide chunk c, xp[c + i] = xq[c + 2i]
/// and xp[c + Chunk/2 + i] = xq[c + 2i + 1] (i < Chunk/2), the order of the low and high nibbles
/// of one weight load (`Chunk` = 64 codes here, 32 bytes; 128 for the AVX-512 kernel of
/// gemv_a8_avx512.hpp). A last partial chunk (K % Chunk != 0) is laid out as a whole chunk with
/// zeros past K, so `xp` holds round_up(K, Chunk) codes. `gsum[g]` = `mul` · sx[g G / 128] · Σ xq
/// over weight group g, for all K / G groups: the offset correction of group g before its weight
/// scale (`mul` = 8, the offset of signed codes, for symmetric formats; 1 with a zero point,
/// which the kernel multiplies in).
template <index_t Chunk = 64>
void a8_int4_prepare(const std::int8_t* xq, const float* sx, index_t K, index_t G, std::int32_t mul, std::int8_t* xp,
                     float* gsum) {
  const index_t kfull = K / Chunk * Chunk;
  for (index_t c = 0; c < kfull; c += Chunk)
    for (index_t i = 0; i < Chunk / 2; ++i) {
      xp[c + i] = xq[c + 2 * i];
      xp[c + Chunk / 2 + i] = xq[c + 2 * i + 1];
    }
  if (kfull < K) {
    std::int8_t last[Chunk] = {};
    std::memcpy(last, xq + kfull, static_cast<std::size_t>(K - kfull));
    for (index_t i = 0; i < Chunk / 2; ++i) {
      xp[kfull + i] = last[2 * i];
      xp[kfull + Chunk / 2 + i] = last[2 * i + 1];
    }
  }
  a8_int4_group_sums(xq, sx, K / G, G, mul, gsum);
}

/// The `mul` argument of a8_int4_prepare for format F.
template <class F>
inline constexpr std::int32_t a8_int4_group_mul = F::has_zero ? 1 : 8;

/// Eight consecutive weight scales (float or bf16) as floats.
template <class S>
MOELA_ALWAYS_INLINE __m256 load8_scales(const S* p) {
  if constexpr (std::is_same_v<S, float>) {
    return _mm256_loadu_ps(p);
  } else {
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
  }
}

/// Σ_g s[g] · z[g] · gsum[g] over g < ng: the offset correction of one weight row (z = 1 for
/// symmetric formats, whose gsum already holds the offset 8).
template <class F>
MOELA_ALWAYS_INLINE float a8_int4_correction(const typename F::scale_type* s, [[maybe_unused]] const std::uint8_t* z,
                                             const float* gsum, index_t ng) {
  __m256 acc = _mm256_setzero_ps();
  index_t g = 0;
  for (; g + 8 <= ng; g += 8) {
    __m256 sv = load8_scales(s + g);
    if constexpr (F::has_zero)
      sv = _mm256_mul_ps(sv, _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(z + g)))));
    acc = _mm256_fmadd_ps(sv, _mm256_loadu_ps(gsum + g), acc);
  }
  float r = hsum_ps(acc);
  for (; g < ng; ++g) r += quant::detail::scale_to_float(s[g]) * (F::has_zero ? float(z[g]) : 1.f) * gsum[g];
  return r;
}

/// The groups of [k0, K) of one int4 row (`row`, `s`, `z`) against one activation row (`xq`, `sx`),
/// exact per group, scaled: the scalar tail of the int4 kernels.
template <class F>
float a8_int4_tail(const std::uint8_t* row, const typename F::scale_type* s, [[maybe_unused]] const std::uint8_t* z,
                   const std::int8_t* xq, const float* sx, index_t k0, index_t K) {
  constexpr index_t G = F::group;
  float sum = 0;
  for (index_t g0 = k0; g0 < K; g0 += G) {
    std::int32_t acc = 0;
    for (index_t k = g0; k < g0 + G; ++k) {
      const int nib = (row[k / 2] >> (4 * (k & 1))) & 0xF;
      const int code = F::has_zero ? nib - int(z[g0 / G]) : (nib ^ 8) - 8;
      acc += code * std::int32_t(xq[k]);
    }
    sum += static_cast<float>(acc) * (quant::detail::scale_to_float(s[g0 / G]) * sx[g0 / a8_group]);
  }
  return sum;
}

/// y[m, n] for n in [n0, n1), int4_group weights. `xp`/`gsum`: a8_int4_prepare'd rows (strides ldp
/// and ldp / 32, `mul` = a8_int4_group_mul<F>); `xq`: the unpermuted codes (stride ldx, for the
/// tail); `sx`: group scales.
///
/// With u the nibble as an unsigned value (signed codes flipped so that c = u - 8), each 32-bit
/// lane gets the exact Σ u·q of its 8 codes; lanes are scaled by their weight group's scale and
/// summed per 128-wide activation group, which is then scaled by sx. The offset Σ z·q of a group
/// is not subtracted lane by lane (one more op per 32 bytes, or a multiply with a zero point) but
/// once per row as a dot product of the row's scales with gsum (a8_int4_correction). The two terms
/// are of the same magnitude (|u| <= 15, z <= 15), so the fp32 difference loses no more than a
/// few units of fp32 rounding of Σ u·q.
template <class F, int M>
void gemv_a8_avx2_int4(const qmatrix<F>& w, const std::int8_t* xp, index_t ldp, const float* gsum,
                       const std::int8_t* xq, index_t ldx, const float* sx, index_t lds, index_t n0, index_t n1, float* y,
                       index_t ldy) {
  constexpr index_t G = F::group;
  constexpr int R = M == 1 ? 2 : 1;
  const index_t K = w.cols(), kfull = K / 64 * 64, ngfull = kfull / G;
  const __m256i mask = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
  const __m256i flip = _mm256_set1_epi8(F::has_zero ? 0 : static_cast<char>(0x88));
  const param_prefetcher<F, _MM_HINT_T0> params(w, gemv_prefetch_bytes);
  for (index_t n = n0; n < n1; n += R) {
    const int rr = static_cast<int>(std::min<index_t>(R, n1 - n));
    const a8_rows<F, R> rw(w, n, rr);
    params.rows(n, R);
    const auto& rows = rw.codes;
    const auto& srow = rw.scales;
    const auto& zrow = rw.zeros;
    __m256 total[R][M];
    MOELA_UNROLL for (int r = 0; r < R; ++r) MOELA_UNROLL for (int m = 0; m < M; ++m) total[r][m] = _mm256_setzero_ps();
    // One 64-code chunk: acc[r][m] += float(Σ u·q per lane) · (weight scale of the lane's group).
    auto chunk = [&](index_t c, __m256 (&acc)[R][M]) MOELA_ALWAYS_INLINE_LAMBDA {
      __m256i xlo[M], xhi[M];
      MOELA_UNROLL for (int m = 0; m < M; ++m) {
        xlo[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + m * ldp + c));
        xhi[m] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xp + m * ldp + c + 32));
      }
      MOELA_UNROLL for (int r = 0; r < R; ++r) {
        prefetch_ahead<gemv_prefetch_bytes, _MM_HINT_T0>(rows[r] + c / 2);
        const __m256i v = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[r] + c / 2)), flip);
        const __m256i lo = _mm256_and_si256(v, mask), hi = _mm256_and_si256(_mm256_srli_epi16(v, 4), mask);
        // Lane j covers codes c + 8j .. c + 8j + 7, i.e. weight group (c + 8j) / G.
        __m256 sw;
        if constexpr (G == 32) {
          // Two broadcasts and an insert: a setr of 8 lanes compiles to narrow stack stores
          // and a wide reload, a store-forwarding stall per chunk that tripled the time.
          sw = _mm256_set_m128(_mm_set1_ps(quant::detail::scale_to_float(srow[r][c / G + 1])),
                               _mm_set1_ps(quant::detail::scale_to_float(srow[r][c / G])));
        } else {
          sw = _mm256_set1_ps(quant::detail::scale_to_float(srow[r][c / G]));
        }
        MOELA_UNROLL for (int m = 0; m < M; ++m) {
          const __m256i p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, xlo[m]), _mm256_maddubs_epi16(hi, xhi[m]));
          acc[r][m] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones)), sw, acc[r][m]);
        }
      }
    };
    for (index_t c = 0; c < kfull; c += a8_group) {
      __m256 acc[R][M];
      MOELA_UNROLL for (int r = 0; r < R; ++r) MOELA_UNROLL for (int m = 0; m < M; ++m) acc[r][m] = _mm256_setzero_ps();
      chunk(c, acc);
      if (c + 64 < kfull) chunk(c + 64, acc);
      MOELA_UNROLL for (int m = 0; m < M; ++m) {
        const __m256 s = _mm256_set1_ps(sx[m * lds + c / a8_group]);
        MOELA_UNROLL for (int r = 0; r < R; ++r) total[r][m] = _mm256_fmadd_ps(acc[r][m], s, total[r][m]);
      }
    }
    for (int r = 0; r < rr; ++r) {
      const index_t nr = n + r;
      for (int m = 0; m < M; ++m) {
        float sum = hsum_ps(total[r][m]) - a8_int4_correction<F>(srow[r], zrow[r], gsum + m * (ldp / 32), ngfull);
        sum += a8_int4_tail<F>(rows[r], srow[r], zrow[r], xq + m * ldx, sx + m * lds, kfull, K);  // K % 64 == 32
        y[m * ldy + nr] = sum;
      }
    }
  }
}

}  // namespace moela::detail

#endif  // MOELA_X86_AVX2_KERNELS
