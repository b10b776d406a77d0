#pragma once
/// \file moela/attention/flash.hpp
/// The attention kernel shared by MLA (absorbed mode) and standard MHA/GQA: causal attention of
/// a block of query rows over a KV cache, with an online ("flash") softmax over tiles of
/// `kv_tile = 64` cached tokens. CPU, FP32 arithmetic, xsimd `Arch` microkernels.
///
/// `attend<Arch>(cache, layer, chunks, shape, q, o, lse, work)`:
///  - `chunks`: the step's sequences (the cache must be `prepare`d: the new tokens of a chunk
///    are at positions `[length, length + tokens)` and their records already written).
///  - `q`: FP32 `[total_tokens, heads, shape.q_ld]` (tokens of the chunks concatenated in order),
///    each row's first `shape.dk` values are the query. `o`: FP32 `[total_tokens, heads,
///    shape.o_ld]`, the first `shape.dv` values receive the softmax-weighted value sum.
///    `lse` (optional, `[total_tokens, heads]`): the natural-log sum of exp of the scaled scores.
///  - `shape`: query heads, kv heads (heads must be a multiple; MLA uses 1 kv head = MQA), the
///    key/value widths and their offsets inside a decoded record, and the softmax scale.
///  - Causal rule: the query of absolute position `p` sees the keys at positions `<= p`.
///  - Scores: `scale * <q, k>` in FP32 (vector accumulation along the key dimension); the
///    values are accumulated in FP32; records in non-FP32 formats are decoded once per tile.
///  - Threads: one `parallel_for` over work items (sequence x kv head x head block x query
///    block x key range: long contexts with few rows are split into key ranges whose partial
///    softmax states are merged afterwards, split-KV). Per-thread scratch is `thread_local`
///    and grows only; the work list and partial buffers live in `attend_work`: no allocation
///    per call in steady state.
///  - Determinism: a row's result depends only on its query, the cached records and the key
///    split (a function of the chunk sizes and the thread count), not on how rows are grouped
///    nor on where the records live (paged or contiguous): tiles are the absolute 64-token
///    ranges in both.

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
#include <type_traits>
#include <vector>

#include <xsimd/xsimd.hpp>

#include "moela/attention/kv_cache.hpp"
#include "moela/backend/cpu/parallel_for.hpp"
#include "moela/ops/softmax.hpp"

namespace moela::attn {

/// Tokens per tile of the online softmax.
inline constexpr index_t kv_tile = 64;

/// Geometry of one attention call.
struct attend_shape {
  index_t heads = 1;      ///< query heads
  index_t kv_heads = 1;   ///< key/value heads (heads % kv_heads == 0)
  index_t dk = 0;         ///< key (and query) width
  index_t dv = 0;         ///< value width
  index_t key_offset = 0;     ///< key of kv head g starts at key_offset + g * key_step in a decoded record
  index_t value_offset = 0;   ///< value of kv head g starts at value_offset + g * value_step
  index_t key_step = 0, value_step = 0;
  index_t q_ld = 0;       ///< floats between consecutive heads of q (>= dk)
  index_t o_ld = 0;       ///< floats between consecutive heads of o (>= dv)
  float scale = 1.f;      ///< softmax scale applied to <q, k>
};

/// Reusable work list (owned by a layer so that steady-state calls do not allocate).
struct attend_work {
  struct item {
    index_t chunk, tok0, first_pos, g, h0, h1, i0, i1;
    index_t k0 = 0, k1 = 0;  ///< key range of this item (split-KV), [k0, min(k1, keys))
    index_t part = -1;       ///< first partial row (split items), -1 when the item owns its rows
    index_t splits = 1;      ///< number of consecutive items sharing these rows (on the first one)
  };
  std::vector<item> items;
  std::vector<float> part_o;           ///< unnormalised partial outputs [partial rows, dv]
  std::vector<softmax_state> part_st;  ///< their softmax states
};

namespace detail {

struct attend_scratch {
  std::vector<float> s, tile;
  std::vector<const float*> qp, kp, vp;
  std::vector<float*> op;
  std::vector<index_t> lim;
  std::vector<softmax_state> st;
};
inline attend_scratch& thread_scratch() {
  thread_local attend_scratch s;
  return s;
}
template <class V>
void grow(V& v, std::size_t n) {
  if (v.size() < n) v.resize(n);
}

/// True for archs with 32 vector registers (16-float batches: AVX-512), where 8-row tiles fit.
template <class Arch>
inline constexpr bool wide_tiles = xsimd::batch<float, Arch>::size == 16;

/// Lane i of the result = the sum of the lanes of in[i], for the L = batch size inputs: a
/// transposing reduction tree, L - 1 adds for L sums where one horizontal sum each would take
/// log2(L) adds and as many shuffles apiece. (AVX-512 has its own tree: xsimd 8.1's `haddp`
/// returns the sums of inputs 2-5 and 10-13 in swapped pairs of lanes there.)
template <class Arch>
MOELA_ALWAYS_INLINE xsimd::batch<float, Arch> reduce_each(const xsimd::batch<float, Arch>* in) {
#if MOELA_ATTN_HAS_AVX2 && defined(__AVX512F__)
  if constexpr (std::is_base_of_v<xsimd::avx512f, Arch>) {
    // Four levels, each adding the two halves of a pair of vectors: 256-bit halves, then 128-bit
    // lanes, then pairs and single floats within lanes. Input t ends in lane 4 (t % 4) + t / 4,
    // so it is fed source 4 (t % 4) + t / 4 (the map is its own inverse).
    __m512 a[16], c[8], g[4], u[2];
#pragma GCC unroll 16
    for (int t = 0; t < 16; ++t) a[t] = in[4 * (t % 4) + t / 4];
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i)
      c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                           _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i)
      g[i] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0x88),
                           _mm512_shuffle_f32x4(c[2 * i], c[2 * i + 1], 0xDD));
#pragma GCC unroll 2
    for (int i = 0; i < 2; ++i)
      u[i] = _mm512_add_ps(_mm512_shuffle_ps(g[2 * i], g[2 * i + 1], 0x44), _mm512_shuffle_ps(g[2 * i], g[2 * i + 1], 0xEE));
    return _mm512_add_ps(_mm512_shuffle_ps(u[0], u[1], 0x88), _mm512_shuffle_ps(u[0], u[1], 0xDD));
  } else
#endif
  {
    return xsimd::haddp(in);
  }
}

/// s[r * ld + c] = scale * <q[r], k[c]> for an RB x CB block. The RB x CB lane-wise partial
/// sums are reduced L at a time (`reduce_each`).
template <class Arch, int RB, int CB>
MOELA_ALWAYS_INLINE void qk_micro(const float* const* q, const float* const* k, index_t dk, float scale, float* s,
                                  index_t ld) {
  using batch = xsimd::batch<float, Arch>;
  constexpr index_t L = static_cast<index_t>(batch::size);
  constexpr int NA = RB * CB, NB = static_cast<int>((NA + L - 1) / L);
  batch acc[NB * L];  // acc[r * CB + c]; the slots past NA stay zero
#pragma GCC unroll 16
  for (int i = 0; i < NB * L; ++i) acc[i] = batch(0.f);
  index_t d = 0;
  for (; d + L <= dk; d += L) {
    batch kv[CB];
#pragma GCC unroll 8
    for (int c = 0; c < CB; ++c) kv[c] = batch::load_unaligned(k[c] + d);
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      batch qv = batch::load_unaligned(q[r] + d);
      MOELA_IN_REGISTER(qv.data);
#pragma GCC unroll 8
      for (int c = 0; c < CB; ++c) acc[r * CB + c] = xsimd::fma(qv, kv[c], acc[r * CB + c]);
    }
  }
  alignas(64) float sum[NB * L];
  if constexpr (NA == 1) {
    sum[0] = xsimd::hadd(acc[0]);
  } else {
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) reduce_each<Arch>(acc + b * L).store_aligned(sum + b * L);
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < CB; ++c) {
      float v = sum[r * CB + c];
      for (index_t t = d; t < dk; ++t) v += q[r][t] * k[c][t];
      s[r * ld + c] = v * scale;
    }
}

template <class Arch, int RB>
MOELA_ALWAYS_INLINE void qk_rows(const float* const* q, const float* const* k, index_t nk, index_t dk, float scale,
                                 float* s, index_t ld) {
  index_t c = 0;
  for (; c + 3 <= nk; c += 3) qk_micro<Arch, RB, 3>(q, k + c, dk, scale, s + c, ld);
  for (; c < nk; ++c) qk_micro<Arch, RB, 1>(q, k + c, dk, scale, s + c, ld);
}

/// o[0..n) *= f.
template <class Arch>
MOELA_ALWAYS_INLINE void scale_row(float* o, index_t n, float f) {
  using batch = xsimd::batch<float, Arch>;
  constexpr index_t L = static_cast<index_t>(batch::size);
  index_t c = 0;
  for (; c + L <= n; c += L) (batch::load_unaligned(o + c) * f).store_unaligned(o + c);
  for (; c < n; ++c) o[c] *= f;
}

/// o[r][0..dv) += sum_j p[r * ld + j] * v[j][0..dv) for an RB-row block.
template <class Arch, int RB>
MOELA_ALWAYS_INLINE void pv_rows(const float* p, index_t ld, const float* const* v, index_t nk, index_t dv,
                                 float* const* o) {
  using batch = xsimd::batch<float, Arch>;
  constexpr index_t L = static_cast<index_t>(batch::size);
  constexpr int CV = 2;
  index_t col = 0;
  for (; col + CV * L <= dv; col += CV * L) {
    batch acc[RB][CV];
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < CV; ++c) acc[r][c] = batch::load_unaligned(o[r] + col + c * L);
    for (index_t j = 0; j < nk; ++j) {
      const float* vj = v[j] + col;
#pragma GCC unroll 8
      for (int r = 0; r < RB; ++r) {
        const batch pr(p[r * ld + j]);
#pragma GCC unroll 4
        for (int c = 0; c < CV; ++c) acc[r][c] = xsimd::fma(pr, batch::load_unaligned(vj + c * L), acc[r][c]);
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r)
#pragma GCC unroll 4
      for (int c = 0; c < CV; ++c) acc[r][c].store_unaligned(o[r] + col + c * L);
  }
  for (; col + L <= dv; col += L) {
    batch acc[RB];
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) acc[r] = batch::load_unaligned(o[r] + col);
    for (index_t j = 0; j < nk; ++j)
#pragma GCC unroll 8
      for (int r = 0; r < RB; ++r) acc[r] = xsimd::fma(batch(p[r * ld + j]), batch::load_unaligned(v[j] + col), acc[r]);
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) acc[r].store_unaligned(o[r] + col);
  }
  for (; col < dv; ++col)
    for (int r = 0; r < RB; ++r) {
      float a = o[r][col];
      for (index_t j = 0; j < nk; ++j) a += p[r * ld + j] * v[j][col];
      o[r][col] = a;
    }
}

/// One work item: rows (query i in [i0, i1), head h in [h0, h1)) of one chunk.
template <class Arch, kv_cache Cache>
void attend_item(const Cache& cache, index_t layer, index_t seq, const attend_shape& sh, const attend_work::item& it,
                 const float* q, float* o, float* lse, attend_work& work) {
  using F = typename Cache::format;
  auto& sc = thread_scratch();
  const index_t nq = it.i1 - it.i0, nh = it.h1 - it.h0, R = nq * nh;
  const auto Rz = static_cast<std::size_t>(R);
  grow(sc.qp, Rz); grow(sc.op, Rz); grow(sc.lim, Rz); grow(sc.st, Rz);
  grow(sc.s, Rz * kv_tile);
  grow(sc.kp, kv_tile); grow(sc.vp, kv_tile);
  const cache_layout& lay = cache.layout();
  const index_t width = lay.width();
  if constexpr (!F::identity) grow(sc.tile, static_cast<std::size_t>(kv_tile * width));
  for (index_t i = 0; i < nq; ++i)
    for (index_t h = 0; h < nh; ++h) {
      const index_t r = i * nh + h, row = (it.tok0 + it.i0 + i) * sh.heads + it.h0 + h;
      sc.qp[static_cast<std::size_t>(r)] = q + row * sh.q_ld;
      sc.op[static_cast<std::size_t>(r)] =
          it.part >= 0 ? work.part_o.data() + (it.part + r) * sh.dv : o + row * sh.o_ld;
      sc.lim[static_cast<std::size_t>(r)] = it.first_pos + it.i0 + i + 1;
      sc.st[static_cast<std::size_t>(r)] = softmax_state{};
      std::fill(sc.op[static_cast<std::size_t>(r)], sc.op[static_cast<std::size_t>(r)] + sh.dv, 0.f);
    }
  const index_t n_keys = std::min(it.first_pos + it.i1, it.k1);
  const index_t koff = sh.key_offset + it.g * sh.key_step, voff = sh.value_offset + it.g * sh.value_step;
  float* S = sc.s.data();
  const auto rec_bytes = static_cast<index_t>(F::record_bytes(lay.a, lay.b));
  for (index_t t0 = it.k0; t0 < n_keys; t0 += kv_tile) {
    const index_t nt = std::min(kv_tile, n_keys - t0);
    // The next tile's records into L2 while this tile computes: a page's records are
    // contiguous, but the hardware prefetchers stop at every 4 KiB boundary of the stream.
    const index_t nnext = std::clamp<index_t>(n_keys - t0 - kv_tile, 0, kv_tile);
    for (index_t j = 0; j < nt; ++j) {
      if (j < nnext) {
        const std::byte* nrec = cache.record(layer, seq, t0 + kv_tile + j);
        for (index_t b = 0; b < rec_bytes; b += 64) __builtin_prefetch(nrec + b, 0, 2);
      }
      const float* rec;
      if constexpr (F::identity) {
        rec = reinterpret_cast<const float*>(cache.record(layer, seq, t0 + j));
      } else {
        float* dst = sc.tile.data() + j * width;
        F::template decode<Arch>(cache.record(layer, seq, t0 + j), lay.a, lay.b, dst);
        rec = dst;
      }
      sc.kp[static_cast<std::size_t>(j)] = rec + koff;
      sc.vp[static_cast<std::size_t>(j)] = rec + voff;
    }
    // Scores. With 32 vector registers (AVX-512), 8-row blocks: 24 accumulators, and each key
    // vector loaded from the (L2-resident) tile feeds 8 FMAs instead of 4.
    index_t r = 0;
    if constexpr (wide_tiles<Arch>)
      for (; r + 8 <= R; r += 8) qk_rows<Arch, 8>(sc.qp.data() + r, sc.kp.data(), nt, sh.dk, sh.scale, S + r * kv_tile, kv_tile);
    for (; r + 4 <= R; r += 4) qk_rows<Arch, 4>(sc.qp.data() + r, sc.kp.data(), nt, sh.dk, sh.scale, S + r * kv_tile, kv_tile);
    for (; r < R; ++r) qk_rows<Arch, 1>(sc.qp.data() + r, sc.kp.data(), nt, sh.dk, sh.scale, S + r * kv_tile, kv_tile);
    // Online softmax update.
    for (r = 0; r < R; ++r) {
      float* s = S + r * kv_tile;
      const index_t nv = std::clamp<index_t>(sc.lim[static_cast<std::size_t>(r)] - t0, 0, nt);
      if (nv > 0) {
        auto& st = sc.st[static_cast<std::size_t>(r)];
        const float f = st.rescale(moela::detail::max_of<Arch>(s, nv));
        if (f != 1.f) scale_row<Arch>(sc.op[static_cast<std::size_t>(r)], sh.dv, f);
        st.sum += moela::detail::exp_inplace<Arch>(s, nv, st.max);
      }
      std::fill(s + nv, s + nt, 0.f);
    }
    // Weighted values (8-row blocks as above: 16 accumulators).
    r = 0;
    if constexpr (wide_tiles<Arch>)
      for (; r + 8 <= R; r += 8) pv_rows<Arch, 8>(S + r * kv_tile, kv_tile, sc.vp.data(), nt, sh.dv, sc.op.data() + r);
    for (; r + 4 <= R; r += 4) pv_rows<Arch, 4>(S + r * kv_tile, kv_tile, sc.vp.data(), nt, sh.dv, sc.op.data() + r);
    for (; r < R; ++r) pv_rows<Arch, 1>(S + r * kv_tile, kv_tile, sc.vp.data(), nt, sh.dv, sc.op.data() + r);
  }
  if (it.part >= 0) {  // split item: keep the unnormalised output and its state
    for (index_t rr = 0; rr < R; ++rr) work.part_st[static_cast<std::size_t>(it.part + rr)] = sc.st[static_cast<std::size_t>(rr)];
    return;
  }
  for (index_t rr = 0; rr < R; ++rr) {
    const auto& st = sc.st[static_cast<std::size_t>(rr)];
    float* orow = sc.op[static_cast<std::size_t>(rr)];
    const float inv = st.sum > 0.f ? 1.f / st.sum : 0.f;
    for (index_t c = 0; c < sh.dv; ++c) orow[c] *= inv;
    if (lse) {
      const index_t i = rr / nh, h = rr % nh;
      lse[(it.tok0 + it.i0 + i) * sh.heads + it.h0 + h] =
          st.sum > 0.f ? st.max + std::log(st.sum) : -std::numeric_limits<float>::infinity();
    }
  }
}

}  // namespace detail

/// Causal attention of the chunks' new tokens over the cache (see the file comment).
template <class Arch = xsimd::default_arch, kv_cache Cache>
void attend(const Cache& cache, index_t layer, std::span<const seq_chunk> chunks, const attend_shape& sh,
            const float* q, float* o, float* lse, attend_work& work) {
  check(sh.heads > 0 && sh.kv_heads > 0 && sh.heads % sh.kv_heads == 0, "attend: heads (", sh.heads,
        ") must be a positive multiple of kv_heads (", sh.kv_heads, ")");
  check(sh.dk > 0 && sh.dv > 0 && sh.q_ld >= sh.dk && sh.o_ld >= sh.dv, "attend: bad widths dk=", sh.dk, " dv=", sh.dv,
        " q_ld=", sh.q_ld, " o_ld=", sh.o_ld);
  const index_t width = cache.layout().width();
  check(sh.key_offset + (sh.kv_heads - 1) * sh.key_step + sh.dk <= width &&
            sh.value_offset + (sh.kv_heads - 1) * sh.value_step + sh.dv <= width,
        "attend: keys/values reach past the cache record of ", width, " values");
  check(layer >= 0 && layer < cache.layout().layers, "attend: layer ", layer, " outside [0, ", cache.layout().layers, ")");
  const index_t group = sh.heads / sh.kv_heads;
  // Work decomposition. Items hold about 64 query rows (block of heads x block of queries), so
  // each decoded tile feeds many rows. With fewer items than 2 per thread, head blocks shrink
  // down to 16 rows, then the keys are split into tile-aligned ranges (split-KV, at least 4
  // tiles each) whose partial states are merged afterwards; only then do blocks shrink further.
  const index_t nt = num_threads();
  index_t max_keys = 0;
  for (const auto& c : chunks) max_keys = std::max(max_keys, cache.length(c.seq) + c.tokens);
  auto count = [&](index_t hb_) {
    const index_t qb_ = std::max<index_t>(1, 64 / hb_);
    index_t n = 0;
    for (const auto& c : chunks) n += ((c.tokens + qb_ - 1) / qb_) * ((group + hb_ - 1) / hb_) * sh.kv_heads;
    return n;
  };
  index_t hb = group;
  while (hb > 16 && count(hb) < 2 * nt) hb = (hb + 1) / 2;
  index_t splits = 1;
  if (count(hb) < 2 * nt) {
    const index_t want = (2 * nt + count(hb) - 1) / count(hb);
    splits = std::max<index_t>(1, std::min(want, max_keys / (4 * kv_tile)));
  }
  if (splits == 1)
    while (hb > 1 && count(hb) < 2 * nt) hb = (hb + 1) / 2;
  const index_t qb = std::max<index_t>(1, 64 / hb);
  work.items.clear();
  index_t tok0 = 0, part_rows = 0;
  for (index_t b = 0; b < static_cast<index_t>(chunks.size()); ++b) {
    const auto& c = chunks[static_cast<std::size_t>(b)];
    check(cache.live(c.seq) && cache.pending(c.seq) == c.tokens, "attend: sequence ", c.seq,
          " is not prepared for ", c.tokens, " new tokens");
    const index_t first = cache.length(c.seq);
    for (index_t g = 0; g < sh.kv_heads; ++g)
      for (index_t h0 = 0; h0 < group; h0 += hb)
        for (index_t i0 = 0; i0 < c.tokens; i0 += qb) {
          attend_work::item it{b, tok0, first, g, g * group + h0, g * group + std::min(group, h0 + hb), i0,
                               std::min(c.tokens, i0 + qb)};
          const index_t keys = first + it.i1, rows = (it.i1 - it.i0) * (it.h1 - it.h0);
          // Split only the part of the range every row of the item needs.
          const index_t ns = splits > 1 ? std::max<index_t>(1, std::min(splits, keys / (4 * kv_tile))) : 1;
          const index_t tiles = (keys + kv_tile - 1) / kv_tile;
          for (index_t sidx = 0; sidx < ns; ++sidx) {
            it.k0 = tiles * sidx / ns * kv_tile;
            it.k1 = sidx + 1 == ns ? keys : tiles * (sidx + 1) / ns * kv_tile;
            it.part = ns > 1 ? part_rows : -1;
            it.splits = sidx == 0 ? ns : 0;
            if (ns > 1) part_rows += rows;
            work.items.push_back(it);
          }
        }
    tok0 += c.tokens;
  }
  if (part_rows > 0) {
    detail::grow(work.part_o, static_cast<std::size_t>(part_rows * sh.dv));
    detail::grow(work.part_st, static_cast<std::size_t>(part_rows));
  }
  parallel_for(
      static_cast<index_t>(work.items.size()),
      [&](index_t b, index_t e) {
        for (index_t k = b; k < e; ++k) {
          const auto& it = work.items[static_cast<std::size_t>(k)];
          detail::attend_item<Arch>(cache, layer, chunks[static_cast<std::size_t>(it.chunk)].seq, sh, it, q, o, lse,
                                    work);
        }
      },
      1);
  if (part_rows == 0) return;
  // Merge the partial states of split items (one pass over the first item of every group).
  parallel_for(static_cast<index_t>(work.items.size()), [&](index_t b, index_t e) {
    for (index_t k = b; k < e; ++k) {
      const auto& it = work.items[static_cast<std::size_t>(k)];
      if (it.part < 0 || it.splits == 0) continue;
      const index_t nh = it.h1 - it.h0, rows = (it.i1 - it.i0) * nh;
      for (index_t r = 0; r < rows; ++r) {
        softmax_state acc;
        for (index_t sidx = 0; sidx < it.splits; ++sidx) {
          const auto& st = work.part_st[static_cast<std::size_t>(work.items[static_cast<std::size_t>(k + sidx)].part + r)];
          acc.max = std::max(acc.max, st.max);
        }
        const index_t i = r / nh, h = r % nh, row = (it.tok0 + it.i0 + i) * sh.heads + it.h0 + h;
        float* orow = o + row * sh.o_ld;
        std::fill(orow, orow + sh.dv, 0.f);
        for (index_t sidx = 0; sidx < it.splits; ++sidx) {
          const index_t pr = work.items[static_cast<std::size_t>(k + sidx)].part + r;
          const auto& st = work.part_st[static_cast<std::size_t>(pr)];
          if (st.empty()) continue;
          const float f = std::exp(st.max - acc.max);
          acc.sum += st.sum * f;
          const float* po = work.part_o.data() + pr * sh.dv;
          for (index_t c = 0; c < sh.dv; ++c) orow[c] += f * po[c];
        }
        const float inv = acc.sum > 0.f ? 1.f / acc.sum : 0.f;
        for (index_t c = 0; c < sh.dv; ++c) orow[c] *= inv;
        if (lse) lse[row] = acc.sum > 0.f ? acc.max + std::log(acc.sum) : -std::numeric_limits<float>::infinity();
      }
    }
  });
}

}  // namespace moela::attn
