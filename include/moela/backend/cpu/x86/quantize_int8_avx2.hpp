#pragma once
/// \file moela/backend/cpu/x86/quantize_int8_avx2.hpp
/// AVX2 halves of quant::detail::quantize_int8_group (internal): the group's amax and the
/// rounding of x / s to int8, 8 and 32 lanes at a time, with exactly the scalar definition's
/// arithmetic (IEEE division, truncation toward zero, the exact remainder rounded half to even,
/// clamp to ±127). Each returns how far it got; the caller finishes the tail in scalar code.
/// Roofline: per 32 activations 4 divisions and ~40 other vector ops for 128 bytes read and 32
/// written, so it is instruction-bound (~1.1 ns per activation on Zen 1), far below the GEMV's
/// time per activation row.

#include <algorithm>
#include <cstdint>
#include <limits>

#include "moela/core/config.hpp"

#if defined(__AVX2__) && !defined(MOELA_FORCE_GENERIC)
#include <immintrin.h>

namespace moela::detail {

/// amax = max |x[c]| over the first (returned) multiple of 8 elements, NaN if any of them is NaN.
inline index_t int8_group_amax_avx2(const float* x, index_t len, float& amax) {
  index_t c1 = 0;
  const __m256 absm = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  __m256 m = _mm256_setzero_ps(), nan = _mm256_setzero_ps();
  for (; c1 + 8 <= len; c1 += 8) {
    const __m256 v = _mm256_loadu_ps(x + c1);
    m = _mm256_max_ps(m, _mm256_and_ps(v, absm));
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  alignas(32) float t[8];
  _mm256_store_ps(t, m);
  for (float v : t) amax = std::max(amax, v);
  if (_mm256_movemask_ps(nan) != 0) amax = std::numeric_limits<float>::quiet_NaN();
  return c1;
}

/// q[c] = clamp(rne(x[c] / s), -127, 127) for the first (returned) multiple of 32 elements.
inline index_t int8_group_round_avx2(const float* x, index_t len, float s, std::int8_t* q) {
  index_t c0 = 0;
  const __m256 sv = _mm256_set1_ps(s), half = _mm256_set1_ps(0.5f), absmask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFFFFFF));
  const __m256i one = _mm256_set1_epi32(1), lim = _mm256_set1_epi32(127);
  auto round8 = [&](const float* p) {
    const __m256 v = _mm256_div_ps(_mm256_loadu_ps(p), sv);
    __m256i t = _mm256_cvttps_epi32(v);
    const __m256 f = _mm256_sub_ps(v, _mm256_cvtepi32_ps(t));
    const __m256 af = _mm256_and_ps(f, absmask);
    const __m256i odd = _mm256_cmpeq_epi32(_mm256_and_si256(t, one), one);
    const __m256i up = _mm256_or_si256(_mm256_castps_si256(_mm256_cmp_ps(af, half, _CMP_GT_OQ)),
                                       _mm256_and_si256(_mm256_castps_si256(_mm256_cmp_ps(af, half, _CMP_EQ_OQ)), odd));
    const __m256i step = _mm256_sign_epi32(one, _mm256_castps_si256(f));  // +1, -1 (f < 0) or 0 (f == 0)
    t = _mm256_add_epi32(t, _mm256_and_si256(up, step));
    return _mm256_max_epi32(_mm256_min_epi32(t, lim), _mm256_sub_epi32(_mm256_setzero_si256(), lim));
  };
  for (; c0 + 32 <= len; c0 += 32) {
    const __m256i a = _mm256_packs_epi32(round8(x + c0), round8(x + c0 + 8));        // lanes 0-3 8-11 | 4-7 12-15
    const __m256i b = _mm256_packs_epi32(round8(x + c0 + 16), round8(x + c0 + 24));
    const __m256i p = _mm256_packs_epi16(a, b);  // per 128-bit half: 0-3 8-11 16-19 24-27 | 4-7 12-15 20-23 28-31
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + c0),
                        _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
  }
  return c0;
}

}  // namespace moela::detail

#endif
