#pragma once
/// \file moela/backend/cpu/x86/avx512_panel.hpp
/// What the panel GEMMs of AVX-512 share (internal, moela::detail; gemm_a8_avx512.hpp: quads
/// of int8 codes per 32-bit lane, gemm_bf16_avx512.hpp: pairs of bf16, and qgemm.hpp's fp32
/// panels): the 16 x 16 transpose of 32-bit elements that turns 16 weight rows into a k-major
/// panel (64 shuffles per 16 lines instead of 256 scalar 4-byte moves), the walk over the activation rows in register tiles,
/// the panel pairs a worker packs and their per-worker buffers.

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <utility>
#include <vector>

#include "moela/core/config.hpp"
#include "moela/core/tensor.hpp"

#if defined(__AVX512F__) && !defined(MOELA_FORCE_GENERIC)
#include <immintrin.h>

namespace moela::detail {

/// Transposes the 16 x 16 matrix of 32-bit elements held in `r` (row i in r[i]) and stores
/// line j (column j of r: r[0][j], ..., r[15][j]) at dst + j * ldd. 64 shuffles; `r` is clobbered.
MOELA_ALWAYS_INLINE void transpose16x16_store(__m512i (&r)[16], std::uint32_t* dst, std::ptrdiff_t ldd) {
  __m512i a[16];
  // Per 128-bit lane L: a[2i] = (r2i[4L], r2i+1[4L], r2i[4L+1], r2i+1[4L+1]), a[2i+1] the same of 4L+2, 4L+3.
  for (int i = 0; i < 8; ++i) {
    a[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
    a[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
  }
  // r[4j + c], lane L: column 4L + c of rows 4j .. 4j + 3.
  for (int j = 0; j < 4; ++j) {
    r[4 * j + 0] = _mm512_unpacklo_epi64(a[4 * j], a[4 * j + 2]);
    r[4 * j + 1] = _mm512_unpackhi_epi64(a[4 * j], a[4 * j + 2]);
    r[4 * j + 2] = _mm512_unpacklo_epi64(a[4 * j + 1], a[4 * j + 3]);
    r[4 * j + 3] = _mm512_unpackhi_epi64(a[4 * j + 1], a[4 * j + 3]);
  }
  // Line 4L + c = lanes L of r[c], r[4 + c], r[8 + c], r[12 + c]: a 4 x 4 transpose of lanes.
  for (int c = 0; c < 4; ++c) {
    const __m512i u0 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0x44), u1 = _mm512_shuffle_i32x4(r[c], r[4 + c], 0xEE);
    const __m512i u2 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0x44), u3 = _mm512_shuffle_i32x4(r[8 + c], r[12 + c], 0xEE);
    _mm512_storeu_si512(dst + (0 + c) * ldd, _mm512_shuffle_i32x4(u0, u2, 0x88));
    _mm512_storeu_si512(dst + (4 + c) * ldd, _mm512_shuffle_i32x4(u0, u2, 0xDD));
    _mm512_storeu_si512(dst + (8 + c) * ldd, _mm512_shuffle_i32x4(u1, u3, 0x88));
    _mm512_storeu_si512(dst + (12 + c) * ldd, _mm512_shuffle_i32x4(u1, u3, 0xDD));
  }
}

/// dst[j * ldd + i] = src[i * lds + j] for i, j < 16 (32-bit elements; src rows of stride `lds`
/// elements, dst 16 lines of 16 elements, `ldd` elements apart).
MOELA_ALWAYS_INLINE void transpose16x16_epi32(const std::uint32_t* src, std::ptrdiff_t lds, std::uint32_t* dst,
                                              std::ptrdiff_t ldd = 16) {
  __m512i r[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_si512(src + i * lds);
  transpose16x16_store(r, dst, ldd);
}

/// Calls `tile(std::integral_constant<int, MR>{}, m)` for m = 0, MR, 2 MR, ... over M rows, then
/// once with the remainder (1 .. MR - 1 rows) as its compile-time row count.
template <int MR, class Tile>
MOELA_ALWAYS_INLINE void for_each_row_tile(std::ptrdiff_t M, Tile&& tile) {
  std::ptrdiff_t m = 0;
  for (; m + MR <= M; m += MR) tile(std::integral_constant<int, MR>{}, m);
  if (m == M) return;
  [&]<int... R>(std::integer_sequence<int, R...>) {
    ((M - m == R + 1 ? (tile(std::integral_constant<int, R + 1>{}, m), 0) : 0), ...);
  }(std::make_integer_sequence<int, MR - 1>{});
}

/// `p` rounded up to a multiple of 64 bytes (the caller's buffer has the room).
template <class T>
T* align64(T* p) {
  return reinterpret_cast<T*>((reinterpret_cast<std::uintptr_t>(p) + 63) & ~std::uintptr_t{63});
}

inline constexpr index_t panel_rows = 16;  ///< output rows per packed panel (one zmm of 32-bit lanes)

/// The two panels a GEMM worker packs at a time (panel pair `pair` of N output rows): first
/// row, valid rows of each panel (the second may have none) and their store masks.
struct panel_pair {
  index_t n0, nv[2];
  __mmask16 mask[2];
  panel_pair(index_t pair, index_t N) : n0(pair * 2 * panel_rows) {
    nv[0] = std::min(panel_rows, N - n0);
    nv[1] = std::clamp<index_t>(N - n0 - panel_rows, 0, panel_rows);
    for (int p = 0; p < 2; ++p) mask[p] = static_cast<__mmask16>((1u << nv[p]) - 1);
  }
  static index_t count(index_t N) { return ((N + panel_rows - 1) / panel_rows + 1) / 2; }
};

/// One worker's pack buffers for a panel pair: codes[p] (`lines` lines of 16 dwords, rounded up
/// to whole 16 x 16 transposes), scales[p] (`spans` lines of 16 floats), all 64-byte aligned,
/// and 16 rows of `ldrow` elements of row scratch. The calling thread's buffers (call it inside
/// the worker), grown once and reused.
template <class Row>
struct panel_pair_buffers {
  std::uint32_t* codes[2];
  float* scales[2];
  Row* row;
  panel_pair_buffers(index_t lines, index_t spans, index_t ldrow) {
    thread_local std::vector<std::uint32_t> cbuf;
    thread_local std::vector<float> sbuf;
    thread_local std::vector<Row> rbuf;
    const index_t cn = (lines + 15) / 16 * 16 * panel_rows + 16, sn = spans * panel_rows + 16;  // + 16: room to align
    std::uint32_t* cb = grown(cbuf, 2 * cn);
    float* sb = grown(sbuf, 2 * sn);
    for (int p = 0; p < 2; ++p) {
      codes[p] = align64(cb + p * cn);
      scales[p] = align64(sb + p * sn);
    }
    row = grown(rbuf, panel_rows * ldrow);
  }
};

}  // namespace moela::detail

#endif
