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
///    block). Per-thread scratch is `thread_local` and grows only: no allocation per call in
///    steady state. The result of each query row does not depend on how rows are grouped into
///    items, nor on where the records live (paged or contiguous): the tile boundaries are the
///    absolute multiples of 64 in both.

#include <algorithm>
#include <cmath>
#include <limits>
#include <span>
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
  };
  std::vector<item> items;
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

/// s[r * ld + c] = <q[r], k[c]> for an RB x CB block.
template <class Arch, int RB, int CB>
MOELA_ALWAYS_INLINE void qk_micro(const float* const* q, const float* const* k, index_t dk, float* s, index_t ld) {
  using batch = xsimd::batch<float, Arch>;
  constexpr index_t L = static_cast<index_t>(batch::size);
  batch acc[RB][CB];
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < CB; ++c) acc[r][c] = batch(0.f);
  index_t d = 0;
  for (; d + L <= dk; d += L) {
    batch kv[CB];
#pragma GCC unroll 8
    for (int c = 0; c < CB; ++c) kv[c] = batch::load_unaligned(k[c] + d);
#pragma GCC unroll 8
    for (int r = 0; r < RB; ++r) {
      const batch qv = batch::load_unaligned(q[r] + d);
#pragma GCC unroll 8
      for (int c = 0; c < CB; ++c) acc[r][c] = xsimd::fma(qv, kv[c], acc[r][c]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < RB; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < CB; ++c) {
      float v = xsimd::hadd(acc[r][c]);
      for (index_t t = d; t < dk; ++t) v += q[r][t] * k[c][t];
      s[r * ld + c] = v;
    }
}

template <class Arch, int RB>
MOELA_ALWAYS_INLINE void qk_rows(const float* const* q, const float* const* k, index_t nk, index_t dk, float* s,
                                 index_t ld) {
  index_t c = 0;
  for (; c + 3 <= nk; c += 3) qk_micro<Arch, RB, 3>(q, k + c, dk, s + c, ld);
  for (; c < nk; ++c) qk_micro<Arch, RB, 1>(q, k + c, dk, s + c, ld);
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
                 const float* q, float* o, float* lse) {
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
      sc.op[static_cast<std::size_t>(r)] = o + row * sh.o_ld;
      sc.lim[static_cast<std::size_t>(r)] = it.first_pos + it.i0 + i + 1;
      sc.st[static_cast<std::size_t>(r)] = softmax_state{};
      std::fill(sc.op[static_cast<std::size_t>(r)], sc.op[static_cast<std::size_t>(r)] + sh.dv, 0.f);
    }
  const index_t n_keys = it.first_pos + it.i1;
  const index_t koff = sh.key_offset + it.g * sh.key_step, voff = sh.value_offset + it.g * sh.value_step;
  float* S = sc.s.data();
  for (index_t t0 = 0; t0 < n_keys; t0 += kv_tile) {
    const index_t nt = std::min(kv_tile, n_keys - t0);
    for (index_t j = 0; j < nt; ++j) {
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
    // Scores.
    index_t r = 0;
    for (; r + 4 <= R; r += 4) qk_rows<Arch, 4>(sc.qp.data() + r, sc.kp.data(), nt, sh.dk, S + r * kv_tile, kv_tile);
    for (; r < R; ++r) qk_rows<Arch, 1>(sc.qp.data() + r, sc.kp.data(), nt, sh.dk, S + r * kv_tile, kv_tile);
    // Online softmax update.
    for (r = 0; r < R; ++r) {
      float* s = S + r * kv_tile;
      const index_t nv = std::clamp<index_t>(sc.lim[static_cast<std::size_t>(r)] - t0, 0, nt);
      if (nv > 0) {
        for (index_t j = 0; j < nv; ++j) s[j] *= sh.scale;
        auto& st = sc.st[static_cast<std::size_t>(r)];
        const float f = st.rescale(moela::detail::max_of<Arch>(s, nv));
        if (f != 1.f) {
          float* orow = sc.op[static_cast<std::size_t>(r)];
          for (index_t c = 0; c < sh.dv; ++c) orow[c] *= f;
        }
        st.sum += moela::detail::exp_inplace<Arch>(s, nv, st.max);
      }
      std::fill(s + nv, s + nt, 0.f);
    }
    // Weighted values.
    r = 0;
    for (; r + 4 <= R; r += 4) pv_rows<Arch, 4>(S + r * kv_tile, kv_tile, sc.vp.data(), nt, sh.dv, sc.op.data() + r);
    for (; r < R; ++r) pv_rows<Arch, 1>(S + r * kv_tile, kv_tile, sc.vp.data(), nt, sh.dv, sc.op.data() + r);
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
  // Work decomposition: about 64 rows per item, at least two items per thread when possible.
  index_t total_tokens = 0;
  for (const auto& c : chunks) total_tokens += c.tokens;
  const index_t nt = num_threads();
  index_t hb = group;
  auto count = [&](index_t hb_) {
    const index_t qb = std::max<index_t>(1, 64 / hb_);
    index_t n = 0;
    for (const auto& c : chunks) n += ((c.tokens + qb - 1) / qb) * ((group + hb_ - 1) / hb_) * sh.kv_heads;
    return n;
  };
  while (hb > 1 && count(hb) < 2 * nt) hb = (hb + 1) / 2;
  const index_t qb = std::max<index_t>(1, 64 / hb);
  work.items.clear();
  index_t tok0 = 0;
  for (index_t b = 0; b < static_cast<index_t>(chunks.size()); ++b) {
    const auto& c = chunks[static_cast<std::size_t>(b)];
    check(cache.live(c.seq) && cache.pending(c.seq) == c.tokens, "attend: sequence ", c.seq,
          " is not prepared for ", c.tokens, " new tokens");
    const index_t first = cache.length(c.seq);
    for (index_t g = 0; g < sh.kv_heads; ++g)
      for (index_t h0 = 0; h0 < group; h0 += hb)
        for (index_t i0 = 0; i0 < c.tokens; i0 += qb)
          work.items.push_back({b, tok0, first, g, g * group + h0, g * group + std::min(group, h0 + hb), i0,
                                std::min(c.tokens, i0 + qb)});
    tok0 += c.tokens;
  }
  parallel_for(
      static_cast<index_t>(work.items.size()),
      [&](index_t b, index_t e) {
        for (index_t k = b; k < e; ++k) {
          const auto& it = work.items[static_cast<std::size_t>(k)];
          detail::attend_item<Arch>(cache, layer, chunks[static_cast<std::size_t>(it.chunk)].seq, sh, it, q, o, lse);
        }
      },
      1);
}

}  // namespace moela::attn
