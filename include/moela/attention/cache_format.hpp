#pragma once
/// \file moela/attention/cache_format.hpp
/// Element formats of the KV caches: how one token's record is laid out, encoded and decoded.
///
/// A record holds two parts: part A (`a` values: the latent `ckv` of MLA, or K|V of a standard
/// attention) and part B (`b` values: the shared RoPE key `kpe` of MLA; 0 for standard attention).
///
/// | format       | part A                   | part B  | extra                 | V3 bytes/token |
/// |--------------|--------------------------|---------|-----------------------|----------------|
/// | `cache_f32`  | f32                      | f32     | none                  | 2304           |
/// | `cache_bf16` | bf16 (RNE)               | bf16    | none                  | 1152           |
/// | `cache_fp8`  | FP8 E4M3 (RNE, saturate) | bf16    | one f32 scale / token | 644            |
///
/// FP8: `scale = max|a| / 448` (1 when the part is all zero), `code = e4m3(a / scale)`,
/// decoded value `= float(code) * scale`. The relative error of each decoded A value is at most
/// 2^-4 of its magnitude (3 mantissa bits, RNE) for values >= 2^-6 * scale, and at most
/// 2^-10 * scale in absolute terms below that (subnormals). The RoPE part stays bf16, as in
/// FlashMLA's FP8 layout, because position information does not survive 3 mantissa bits well.
///
/// Every format provides: `name`, `record_bytes(a, b)`, `encode(a_vals, na, b_vals, nb, rec)`,
/// `decode<Arch>(rec, na, nb, out)` (writes na + nb floats: A then B) and `identity` (true when
/// the record already is `na + nb` floats, so kernels can read it in place).

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__AVX2__) && !defined(MOELA_FORCE_GENERIC)
#include <immintrin.h>
#define MOELA_ATTN_HAS_AVX2 1
#endif

#include <xsimd/xsimd.hpp>

#include "moela/core/minifloat.hpp"
#include "moela/core/tensor.hpp"

namespace moela::attn {

namespace detail {

/// AVX2 or AVX-512 (whose xsimd archs do not derive from avx2): the 256-bit kernels below apply.
template <class Arch>
inline constexpr bool is_avx2_arch = std::is_base_of_v<xsimd::avx2, Arch> || std::is_base_of_v<xsimd::avx512f, Arch>;

/// out[i] = float(bf16 bits p[i]).
template <class Arch>
void widen_bf16(const std::uint16_t* p, index_t n, float* out) {
  index_t i = 0;
#if MOELA_ATTN_HAS_AVX2
#ifdef __AVX512F__
  if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) {
    for (; i + 16 <= n; i += 16) {
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + i));
      _mm512_storeu_ps(out + i, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16)));
    }
  }
#endif
  if constexpr (is_avx2_arch<Arch>) {
    for (; i + 8 <= n; i += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i));
      const __m256i w = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);
      _mm256_storeu_ps(out + i, _mm256_castsi256_ps(w));
    }
  }
#endif
  for (; i < n; ++i) out[i] = std::bit_cast<float>(static_cast<std::uint32_t>(p[i]) << 16);
}

/// out[i] = float(e4m3 code p[i]) * scale. Uses the exact bit identity: for the 7 magnitude
/// bits m of an E4M3 code, the float with bits (m << 20) times 2^120 is its value (normals and
/// subnormals alike; code 0x7F, NaN, is never produced by the saturating encoder).
template <class Arch>
void widen_e4m3(const std::uint8_t* p, index_t n, float scale, float* out) {
  const float k = scale * 0x1p120f;
  index_t i = 0;
#if MOELA_ATTN_HAS_AVX2
#ifdef __AVX512F__
  if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) {
    const __m512i mag = _mm512_set1_epi32(0x7F), sgn = _mm512_set1_epi32(0x80);
    const __m512 kv = _mm512_set1_ps(k);
    for (; i + 16 <= n; i += 16) {
      const __m512i w = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p + i)));
      const __m512 v = _mm512_mul_ps(_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_and_si512(w, mag), 20)), kv);
      _mm512_storeu_ps(out + i, _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(v),
                                                                    _mm512_slli_epi32(_mm512_and_si512(w, sgn), 24))));
    }
  }
#endif
  if constexpr (is_avx2_arch<Arch>) {
    const __m256i mag = _mm256_set1_epi32(0x7F), sgn = _mm256_set1_epi32(0x80);
    const __m256 kv = _mm256_set1_ps(k);
    for (; i + 8 <= n; i += 8) {
      const __m128i b = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + i));
      const __m256i w = _mm256_cvtepu8_epi32(b);
      const __m256i m = _mm256_slli_epi32(_mm256_and_si256(w, mag), 20);
      const __m256i s = _mm256_slli_epi32(_mm256_and_si256(w, sgn), 24);
      const __m256 v = _mm256_mul_ps(_mm256_castsi256_ps(m), kv);
      _mm256_storeu_ps(out + i, _mm256_or_ps(v, _mm256_castsi256_ps(s)));
    }
  }
#endif
  for (; i < n; ++i) {
    const std::uint32_t b = p[i];
    const float v = std::bit_cast<float>((b & 0x7Fu) << 20) * k;
    out[i] = (b & 0x80u) ? -v : v;
  }
}

}  // namespace detail

/// Records of FP32 values: A then B.
struct cache_f32 {
  static constexpr const char* name = "f32";
  static constexpr bool identity = true;
  static constexpr std::size_t record_bytes(index_t na, index_t nb) {
    return static_cast<std::size_t>(na + nb) * sizeof(float);
  }
  static void encode(const float* a, index_t na, const float* b, index_t nb, std::byte* rec) {
    std::memcpy(rec, a, static_cast<std::size_t>(na) * sizeof(float));
    auto* pb = reinterpret_cast<float*>(rec) + na;
    for (index_t i = 0; i < nb; ++i) pb[i] = b[i];
  }
  template <class Arch>
  static void decode(const std::byte* rec, index_t na, index_t nb, float* out) {
    std::memcpy(out, rec, record_bytes(na, nb));
  }
};

/// Records of bf16 values (RNE): A then B.
struct cache_bf16 {
  static constexpr const char* name = "bf16";
  static constexpr bool identity = false;
  static constexpr std::size_t record_bytes(index_t na, index_t nb) {
    return static_cast<std::size_t>(na + nb) * sizeof(moela::bf16);
  }
  static void encode(const float* a, index_t na, const float* b, index_t nb, std::byte* rec) {
    auto* p = reinterpret_cast<moela::bf16*>(rec);
    for (index_t i = 0; i < na; ++i) p[i] = moela::bf16(a[i]);
    for (index_t i = 0; i < nb; ++i) p[na + i] = moela::bf16(b[i]);
  }
  template <class Arch>
  static void decode(const std::byte* rec, index_t na, index_t nb, float* out) {
    detail::widen_bf16<Arch>(reinterpret_cast<const std::uint16_t*>(rec), na + nb, out);
  }
};

/// Records of FP8 E4M3 part A with one f32 scale per token, bf16 part B:
/// `[na x e4m3][nb x bf16][f32 scale]`.
struct cache_fp8 {
  static constexpr const char* name = "fp8";
  static constexpr bool identity = false;
  static constexpr std::size_t record_bytes(index_t na, index_t nb) {
    return static_cast<std::size_t>(na) + static_cast<std::size_t>(nb) * 2 + sizeof(float);
  }
  static void encode(const float* a, index_t na, const float* b, index_t nb, std::byte* rec) {
    float amax = 0.f;
    for (index_t i = 0; i < na; ++i) amax = std::max(amax, std::fabs(a[i]));
    const float scale = amax > 0.f && std::isfinite(amax) ? amax / 448.0f : 1.0f;
    auto* q = reinterpret_cast<std::uint8_t*>(rec);
    for (index_t i = 0; i < na; ++i) q[i] = fp8_e4m3::saturate(a[i] / scale).bits;
    auto* pb = reinterpret_cast<moela::bf16*>(rec + na);
    for (index_t i = 0; i < nb; ++i) pb[i] = moela::bf16(b[i]);
    std::memcpy(rec + na + 2 * nb, &scale, sizeof(float));
  }
  template <class Arch>
  static void decode(const std::byte* rec, index_t na, index_t nb, float* out) {
    float scale;
    std::memcpy(&scale, rec + na + 2 * nb, sizeof(float));
    detail::widen_e4m3<Arch>(reinterpret_cast<const std::uint8_t*>(rec), na, scale, out);
    detail::widen_bf16<Arch>(reinterpret_cast<const std::uint16_t*>(rec + na), nb, out + na);
  }
};

template <class F>
concept cache_format = requires(const float* a, std::byte* r, const std::byte* cr, float* o) {
  { F::name } -> std::convertible_to<const char*>;
  { F::identity } -> std::convertible_to<bool>;
  { F::record_bytes(index_t{}, index_t{}) } -> std::convertible_to<std::size_t>;
  F::encode(a, index_t{}, a, index_t{}, r);
  F::template decode<xsimd::default_arch>(cr, index_t{}, index_t{}, o);
};

static_assert(cache_format<cache_f32> && cache_format<cache_bf16> && cache_format<cache_fp8>);
static_assert(cache_bf16::record_bytes(512, 64) == 1152 && cache_fp8::record_bytes(512, 64) == 644);

}  // namespace moela::attn
