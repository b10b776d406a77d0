// MLA properties on random weights: the q_proj path against a float64 reference, naive ==
// absorbed, paged == contiguous (bit-identical), prefill n == prefill k + decode n - k,
// batches of ragged sequences, multi-token decode, FP8/bf16 caches within their bounds, and
// errors that leave the cache untouched.
#include <doctest/doctest.h>

#include "test_attn_support.hpp"

#include <moela/io/config.hpp>
#include <moela/model/parts.hpp>  // to_mla_config: io::model_config -> attn::mla_config

#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <numbers>
#include <string>
#include <vector>

using namespace moela;
using attn_test::rel_err;

namespace {

using layer_f32 = attn::mla<cpu<>, quant::f32, attn::cache_f32>;

// FP32 throughout: the two modes differ only in summation order (W_UK / W_UV applied before or
// after the sum over keys), which moves results by a few FP32 ulps of the largest terms. 2e-5
// relative to max|out| leaves a wide margin over the ~1e-6 measured.
constexpr double modes_bound = 2e-5;
// The same computation on different row counts (a prefill chunk versus one token) may use
// different matmul blockings: FP32 summation-order differences only.
constexpr double reorder_bound = 1e-5;

struct fixture {
  attn::mla_config cfg;
  tensor<float, 2> x;
  explicit fixture(index_t q_rank, index_t tokens, unsigned seed = 1) : cfg(attn_test::small_config(q_rank)) {
    std::mt19937 rng(seed);
    x = attn_test::random_matrix(rng, tokens, cfg.hidden, 1.f);
  }
  template <class F = quant::f32>
  attn::mla_weights<F> weights(unsigned seed = 2) const {
    std::mt19937 rng(seed);
    return attn_test::random_weights<F>(rng, cfg);
  }
  const_view<float, 2> rows(index_t a, index_t b) const { return x.cview().slice(0, a, b); }
};

template <class Layer, class Cache>
tensor<float, 2> run_prefill(Layer& layer, Cache& cache, index_t seq, const_view<float, 2> x, attn::mla_mode m) {
  tensor<float, 2> out({x.extent(0), layer.config().hidden});
  attn::seq_chunk c{seq, x.extent(0)};
  layer.forward(cache, std::span(&c, 1), x, out.view(), m);
  return out;
}

}  // namespace

TEST_CASE("mla: naive == absorbed, with and without q_lora_rank, across tile boundaries") {
  for (index_t q_rank : {0L, 32L}) {
    CAPTURE(q_rank);
    fixture f(q_rank, 751);
    layer_f32 layer(f.cfg, f.weights());
    attn::paged_cache<attn::cache_f32> ca(attn::mla_cache_layout(f.cfg), 12), cn(attn::mla_cache_layout(f.cfg), 12);
    const index_t sa = ca.add_sequence(), sn = cn.add_sequence();
    // Prefill 130 (3 tiles), a 17-token chunk, single decodes, a 600-token chunk, and decodes over
    // 750 keys (long enough for the split-KV path).
    tensor<float, 2> oa({751, f.cfg.hidden}), on({751, f.cfg.hidden});
    index_t t = 0;
    for (index_t n : {130L, 17L, 1L, 1L, 1L, 600L, 1L}) {
      attn::seq_chunk c1{sa, n}, c2{sn, n};
      layer.forward(ca, std::span(&c1, 1), f.rows(t, t + n), oa.view().slice(0, t, t + n), attn::mla_mode::absorbed);
      layer.forward(cn, std::span(&c2, 1), f.rows(t, t + n), on.view().slice(0, t, t + n), attn::mla_mode::naive);
      t += n;
    }
    CHECK(rel_err(oa.data(), on.data(), 751 * f.cfg.hidden) <= modes_bound);
    CHECK(rel_err(oa.data() + 750 * f.cfg.hidden, on.data() + 750 * f.cfg.hidden, f.cfg.hidden) <= modes_bound);
  }
}

TEST_CASE_TEMPLATE("mla: absorbed reads W_UV in place from a quantized kv_b_proj; naive == absorbed", F,
                   quant::fp8_block<128, 128>, quant::int4_group<32>, quant::int8_rowwise<>) {
  // nope = v = 128: W_UV(h) starts on a 128-row block of kv_b_proj, so every format reads it in
  // place; with nope = 64 the FP8 blocks straddle heads and W_UV is copied to FP32 instead. Both
  // modes multiply the same dequantized weights in fp32 (the fast mode), so they differ by
  // summation order only, as in the FP32 test above.
  for (const index_t nope : {index_t{128}, index_t{64}}) {
    CAPTURE(nope);
    attn::mla_config cfg = attn_test::small_config(0);
    cfg.heads = 3; cfg.kv_rank = 160; cfg.nope_dim = nope; cfg.v_dim = 128;
    std::mt19937 rng(5);
    const auto x = attn_test::random_matrix(rng, 70, cfg.hidden, 1.f);
    attn::mla<cpu<>, F, attn::cache_f32> layer(cfg, attn_test::random_weights<F>(rng, cfg));
    const bool in_place = nope % F::block_rows == 0;
    CHECK(layer.wuv_in_place() == in_place);
    // W_UK^T copies in FP32 (3 heads x 160 x nope x 4 bytes), plus W_UV: in place each head's
    // 128 rows of kv_b_proj (codes, and their scale rows: FP8 one 128-row block row of 2
    // blocks, int8 one scale per row, int4 160 / 32 per row), else FP32 copies.
    const std::size_t wuk = 3 * 160 * static_cast<std::size_t>(nope) * 4;
    std::size_t rows_bytes = 0;
    if constexpr (F::kind == quant::format_kind::fp8_block) rows_bytes = 128 * 160 + 2 * 4;
    else if constexpr (F::kind == quant::format_kind::int8_rowwise) rows_bytes = 128 * 160 + 128 * sizeof(typename F::scale_type);
    else rows_bytes = 128 * 80 + 128 * 5 * sizeof(typename F::scale_type);
    const std::size_t wuv = in_place ? 3 * rows_bytes : 3 * 128 * 160 * 4;
    CHECK(layer.absorbed_bytes() == wuk + wuv);
    attn::paged_cache<attn::cache_f32> ca(attn::mla_cache_layout(cfg), 4), cn(attn::mla_cache_layout(cfg), 4);
    const index_t sa = ca.add_sequence(), sn = cn.add_sequence();
    tensor<float, 2> oa({70, cfg.hidden}), on({70, cfg.hidden});
    index_t t = 0;
    for (index_t n : {67L, 1L, 1L, 1L}) {  // a prefill, then decode steps (the GEMV kernels)
      attn::seq_chunk c1{sa, n}, c2{sn, n};
      layer.forward(ca, std::span(&c1, 1), x.cview().slice(0, t, t + n), oa.view().slice(0, t, t + n),
                    attn::mla_mode::absorbed);
      layer.forward(cn, std::span(&c2, 1), x.cview().slice(0, t, t + n), on.view().slice(0, t, t + n),
                    attn::mla_mode::naive);
      t += n;
    }
    CHECK(rel_err(oa.data(), on.data(), 70 * cfg.hidden) <= modes_bound);
    CHECK(rel_err(oa.data() + 67 * cfg.hidden, on.data() + 67 * cfg.hidden, 3 * cfg.hidden) <= modes_bound);
  }
}

TEST_CASE_TEMPLATE("mla: paged == contiguous, bit-identical, for every cache format", F, attn::cache_f32,
                   attn::cache_bf16, attn::cache_fp8) {
  fixture f(32, 140);
  attn::mla<cpu<>, quant::f32, F> layer(f.cfg, f.weights());
  attn::contiguous_cache<F> cc(attn::mla_cache_layout(f.cfg), 2, 200);
  attn::paged_cache<F> p16(attn::mla_cache_layout(f.cfg), 20, 16), p64(attn::mla_cache_layout(f.cfg), 6);
  const index_t a = cc.add_sequence(), b = p16.add_sequence(), c = p64.add_sequence();
  for (auto mode : {attn::mla_mode::absorbed, attn::mla_mode::naive}) {
    INFO("mode ", std::string(attn::mode_name(mode)));  // std::string: doctest prints a const char* as a pointer
    index_t t = mode == attn::mla_mode::absorbed ? 0 : 70;
    for (index_t n : {67L, 1L, 2L}) {
      tensor<float, 2> o1({n, f.cfg.hidden}), o2({n, f.cfg.hidden}), o3({n, f.cfg.hidden});
      attn::seq_chunk k1{a, n}, k2{b, n}, k3{c, n};
      layer.forward(cc, std::span(&k1, 1), f.rows(t, t + n), o1.view(), mode);
      layer.forward(p16, std::span(&k2, 1), f.rows(t, t + n), o2.view(), mode);
      layer.forward(p64, std::span(&k3, 1), f.rows(t, t + n), o3.view(), mode);
      CHECK(std::memcmp(o1.data(), o2.data(), o1.bytes()) == 0);
      CHECK(std::memcmp(o1.data(), o3.data(), o1.bytes()) == 0);
      t += n;
    }
  }
}

TEST_CASE("mla: prefill of n == prefill of k then decode of n - k, at every position") {
  const index_t n = 72;
  fixture f(0, n);
  layer_f32 layer(f.cfg, f.weights());
  attn::paged_cache<attn::cache_f32> full(attn::mla_cache_layout(f.cfg), 4);
  const auto ref = run_prefill(layer, full, full.add_sequence(), f.rows(0, n), attn::mla_mode::absorbed);
  for (index_t k : {1L, 33L, 64L, 71L}) {
    CAPTURE(k);
    attn::paged_cache<attn::cache_f32> c(attn::mla_cache_layout(f.cfg), 4);
    const index_t s = c.add_sequence();
    const auto head = run_prefill(layer, c, s, f.rows(0, k), attn::mla_mode::absorbed);
    CHECK(rel_err(head.data(), ref.data(), k * f.cfg.hidden) <= reorder_bound);
    for (index_t t = k; t < n; ++t) {
      CAPTURE(t);
      const auto o = run_prefill(layer, c, s, f.rows(t, t + 1), attn::mla_mode::absorbed);
      CHECK(rel_err(o.data(), ref.data() + t * f.cfg.hidden, f.cfg.hidden) <= reorder_bound);
    }
  }
}

namespace {

// Float64 reference of spec §4-§5 for one sequence at positions 0..T-1, query path without
// q-lora (`q_proj` on the raw input, V2-Lite style). Written from the spec, sharing no code
// with the library: YaRN frequencies (§4.2), the cos/sin magnitude mscale_fn(s, mscale) /
// mscale_fn(s, mscale_all_dim) (§4.4), the softmax scale qk_head_dim^-1/2 * mscale_fn(s,
// mscale_all_dim)^2 (§4.5), interleaved RoPE (§4.1), RMSNorm of the latent (§5.3) and the
// un-absorbed MHA form (§5.4) with the causal mask. Returns out [T, hidden], row-major.
std::vector<double> mla_reference(const attn::mla_config& c, const attn::mla_weights<quant::f32>& w,
                                  const tensor<float, 2>& x) {
  REQUIRE(c.q_rank == 0);
  REQUIRE(c.rope.yarn);
  const index_t T = x.extent(0), D = c.hidden, H = c.heads, R = c.kv_rank, N = c.nope_dim, P = c.rope_dim,
                V = c.v_dim, QK = N + P;
  const auto Wq = w.q_proj.dequantize(), Wa = w.kv_a_proj.dequantize(), Wb = w.kv_b_proj.dequantize(),
             Wo = w.o_proj.dequantize();
  auto at = [](std::vector<double>& v, index_t i) -> double& { return v[static_cast<std::size_t>(i)]; };
  // y[n] = sum_k W(n, k) * in[k]
  auto matvec = [](const tensor<float, 2>& W, const double* in, double* y) {
    for (index_t n = 0; n < W.extent(0); ++n) {
      double a = 0;
      for (index_t k = 0; k < W.extent(1); ++k) a += double(W(n, k)) * in[k];
      y[n] = a;
    }
  };

  // YaRN (§4.2): correction range and ramp in float64; the spec rounds theta'_i to FP32 and
  // forms the angle as an FP32 product fp32(p) * theta'_i, so the reference does the same (a
  // float64 angle would differ by up to p * 2^-24 rad, which is not an error of the layer).
  const double d = double(P), base = c.rope.theta, s = c.rope.factor;
  auto cd = [&](double rho) {
    return d * std::log(double(c.rope.original_max_positions) / (2 * std::numbers::pi * rho)) / (2 * std::log(base));
  };
  const double low = std::max(std::floor(cd(c.rope.beta_fast)), 0.0);
  double high = std::min(std::ceil(cd(c.rope.beta_slow)), d - 1);
  if (low == high) high += 0.001;
  std::vector<float> freq(static_cast<std::size_t>(P / 2));
  for (index_t i = 0; i < P / 2; ++i) {
    const double th = 1.0 / std::pow(base, 2.0 * double(i) / d);
    const double ramp = std::clamp((double(i) - low) / (high - low), 0.0, 1.0);
    freq[static_cast<std::size_t>(i)] = float(th / s * ramp + th * (1 - ramp));
  }
  auto mscale_fn = [](double f, double m) { return f <= 1 ? 1.0 : 0.1 * m * std::log(f) + 1; };
  const double magnitude = mscale_fn(s, c.rope.mscale) / mscale_fn(s, c.rope.mscale_all_dim);
  const double m_all = mscale_fn(s, c.rope.mscale_all_dim);
  const double scale = 1 / std::sqrt(double(QK)) * m_all * m_all;
  auto rope = [&](double* u, index_t p) {  // adjacent pairs (u[2i], u[2i+1]) rotated by p * theta'_i
    for (index_t i = 0; i < P / 2; ++i) {
      const double ang = double(float(p) * freq[static_cast<std::size_t>(i)]);
      const double cs = std::cos(ang) * magnitude, sn = std::sin(ang) * magnitude, a = u[2 * i], b = u[2 * i + 1];
      u[2 * i] = a * cs - b * sn;
      u[2 * i + 1] = a * sn + b * cs;
    }
  };

  // Per token: q [H, QK] (rope part rotated), k_nope [H, N], shared k_pe [P], v [H, V].
  std::vector<double> q(static_cast<std::size_t>(T * H * QK)), kn(static_cast<std::size_t>(T * H * N)),
      kp(static_cast<std::size_t>(T * P)), v(static_cast<std::size_t>(T * H * V));
  std::vector<double> xt(static_cast<std::size_t>(D)), a(static_cast<std::size_t>(R + P)),
      ckv(static_cast<std::size_t>(R)), kvb(static_cast<std::size_t>(H * (N + V)));
  for (index_t t = 0; t < T; ++t) {
    for (index_t k = 0; k < D; ++k) at(xt, k) = x(t, k);
    double* qt = &at(q, t * H * QK);
    matvec(Wq, xt.data(), qt);
    for (index_t h = 0; h < H; ++h) rope(qt + h * QK + N, t);  // per head [nope | rope]
    matvec(Wa, xt.data(), a.data());                           // [latent | rope]
    double ss = 0;
    for (index_t i = 0; i < R; ++i) ss += at(a, i) * at(a, i);
    const double inv = 1 / std::sqrt(ss / double(R) + double(c.rms_eps));
    for (index_t i = 0; i < R; ++i) at(ckv, i) = at(a, i) * inv * double(w.kv_a_norm(i));
    for (index_t j = 0; j < P; ++j) at(kp, t * P + j) = at(a, R + j);
    rope(&at(kp, t * P), t);
    matvec(Wb, ckv.data(), kvb.data());  // per head [k_nope (N) | v (V)]
    for (index_t h = 0; h < H; ++h) {
      for (index_t j = 0; j < N; ++j) at(kn, (t * H + h) * N + j) = at(kvb, h * (N + V) + j);
      for (index_t j = 0; j < V; ++j) at(v, (t * H + h) * V + j) = at(kvb, h * (N + V) + N + j);
    }
  }

  // Causal attention (key u <= query t), heads concatenated h-major, then o_proj.
  std::vector<double> out(static_cast<std::size_t>(T * D)), o(static_cast<std::size_t>(H * V)),
      p(static_cast<std::size_t>(T));
  for (index_t t = 0; t < T; ++t) {
    std::fill(o.begin(), o.end(), 0.0);
    for (index_t h = 0; h < H; ++h) {
      const double* qh = &at(q, (t * H + h) * QK);
      double mx = -std::numeric_limits<double>::infinity(), z = 0;
      for (index_t u = 0; u <= t; ++u) {
        double sc = 0;
        for (index_t j = 0; j < N; ++j) sc += qh[j] * at(kn, (u * H + h) * N + j);
        for (index_t j = 0; j < P; ++j) sc += qh[N + j] * at(kp, u * P + j);
        at(p, u) = sc * scale;
        mx = std::max(mx, at(p, u));
      }
      for (index_t u = 0; u <= t; ++u) z += (at(p, u) = std::exp(at(p, u) - mx));
      for (index_t u = 0; u <= t; ++u)
        for (index_t j = 0; j < V; ++j) at(o, h * V + j) += at(p, u) / z * at(v, (u * H + h) * V + j);
    }
    matvec(Wo, o.data(), &at(out, t * D));
  }
  return out;
}

}  // namespace

TEST_CASE("mla: q_proj path, v_dim != nope_dim, YaRN with mscale != mscale_all_dim, against float64") {
  // V2-Lite's query path (no q_lora_rank) with small odd sizes: nope 24, rope 16, v 20 (so
  // kv_b_proj's per-head [nope | v] split and o_proj's H * v width are both exercised), and
  // YaRN s = 40 with mscale 0.707 != mscale_all_dim 1.0: the cos/sin magnitude is 0.921 (not 1,
  // not mscale_fn alone) and the softmax scale must use mscale_all_dim (spec §12 items 3-5).
  attn::mla_config cfg = attn_test::small_config(0);
  cfg.rope.factor = 40;
  cfg.rope.mscale = 0.707;
  cfg.rope.mscale_all_dim = 1.0;
  REQUIRE(cfg.v_dim != cfg.nope_dim);
  std::mt19937 rng(17);
  const index_t T = 80;  // positions 0..79 pass original_max_positions (64)
  const auto x = attn_test::random_matrix(rng, T, cfg.hidden, 1.f);
  const auto w = attn_test::random_weights<quant::f32>(rng, cfg);
  layer_f32 layer(cfg, w);
  const auto ref = mla_reference(cfg, w, x);
  // FP32 compute with FP32-exact weights against float64: every output is a chain of five or
  // six FP32 dot products of at most 100 terms (hidden 96, kv_rank 40, H * v = 100, a score of
  // nope + rope = 40 or, absorbed, kv_rank + rope = 56, up to 80 keys), each adding rounding of
  // order sqrt(n) * 2^-24 relative to its terms, plus FP32 exp and the FP32 cos/sin table
  // (1 ulp). Measured e: 5e-7 on the prefill, at most 1.0e-6 on a decode row. 1e-5 leaves 10x
  // and stays far below the mistakes this case exists for (each measured by substituting it in
  // rope.hpp): cos/sin magnitude 1 instead of 0.921, e = 0.09; mscale instead of mscale_all_dim
  // in the softmax scale, e = 0.09; cos/sin scaled by mscale_fn(s, mscale) alone, e = 0.36.
  constexpr double f64_bound = 1e-5;
  for (auto mode : {attn::mla_mode::absorbed, attn::mla_mode::naive}) {
    CAPTURE(std::string(attn::mode_name(mode)));
    attn::paged_cache<attn::cache_f32> cache(attn::mla_cache_layout(cfg), 4);
    const index_t s = cache.add_sequence();
    tensor<float, 2> out({T, cfg.hidden});
    // A prefill across the 64-row tile, one decode, a 5-token chunk over the cache (its causal
    // mask is offset by the 68 cached positions), then single-token decodes.
    index_t t = 0;
    for (index_t n : {67L, 1L, 5L, 1L, 1L, 1L, 1L, 1L, 1L, 1L}) {
      attn::seq_chunk ch{s, n};
      layer.forward(cache, std::span(&ch, 1), x.cview().slice(0, t, t + n), out.view().slice(0, t, t + n), mode);
      t += n;
    }
    REQUIRE(t == T);
    CHECK(cache.length(s) == T);
    CHECK(rel_err(out.data(), ref.data(), 67 * cfg.hidden) <= f64_bound);  // the prefill
    for (index_t r = 67; r < T; ++r) {  // each step over the cache, against its own row's scale
      CAPTURE(r);
      CHECK(rel_err(out.data() + r * cfg.hidden, ref.data() + r * cfg.hidden, cfg.hidden) <= f64_bound);
    }
  }
}

TEST_CASE("mla: a ragged batch (prefill + decode + speculative chunk) equals each sequence alone") {
  fixture f(32, 300);
  layer_f32 layer(f.cfg, f.weights());
  attn::paged_cache<attn::cache_f32> batch(attn::mla_cache_layout(f.cfg, 1), 16);
  const index_t hist[3] = {5, 70, 130}, step[3] = {3, 1, 40};
  index_t ids[3], off = 0, offs[3];
  std::vector<tensor<float, 2>> alone;
  for (int i = 0; i < 3; ++i) {
    ids[i] = batch.add_sequence();
    offs[i] = off;
    run_prefill(layer, batch, ids[i], f.rows(off, off + hist[i]), attn::mla_mode::absorbed);
    // Reference: the same sequence in its own cache.
    attn::paged_cache<attn::cache_f32> own(attn::mla_cache_layout(f.cfg), 8);
    const index_t s = own.add_sequence();
    run_prefill(layer, own, s, f.rows(off, off + hist[i]), attn::mla_mode::absorbed);
    alone.push_back(run_prefill(layer, own, s, f.rows(off + hist[i], off + hist[i] + step[i]), attn::mla_mode::absorbed));
    off += hist[i] + step[i];
  }
  // One step for all three: rows concatenated in chunk order (sequence 2 first, to mix the order).
  const int order[3] = {2, 0, 1};
  index_t T = 0;
  for (int i : order) T += step[i];
  tensor<float, 2> x({T, f.cfg.hidden}), out({T, f.cfg.hidden});
  std::vector<attn::seq_chunk> chunks;
  index_t r = 0;
  for (int i : order) {
    chunks.push_back({ids[i], step[i]});
    std::memcpy(x.data() + r * f.cfg.hidden, f.x.data() + (offs[i] + hist[i]) * f.cfg.hidden,
                sizeof(float) * std::size_t(step[i] * f.cfg.hidden));
    r += step[i];
  }
  layer.forward(batch, chunks, x.cview(), out.view());
  r = 0;
  for (int i : order) {
    CAPTURE(i);
    CHECK(rel_err(out.data() + r * f.cfg.hidden, alone[std::size_t(i)].data(), step[i] * f.cfg.hidden) <= reorder_bound);
    CHECK(batch.length(ids[i]) == hist[i] + step[i]);
    r += step[i];
  }
}

TEST_CASE("mla: bf16 and FP8 caches stay within their documented tolerance of the FP32 cache") {
  fixture f(32, 200);
  const auto w = f.weights();
  layer_f32 l32(f.cfg, w);
  attn::mla<cpu<>, quant::f32, attn::cache_bf16> l16(f.cfg, w);
  attn::mla<cpu<>, quant::f32, attn::cache_fp8> l8(f.cfg, w);
  attn::paged_cache<attn::cache_f32> c32(attn::mla_cache_layout(f.cfg), 4);
  attn::paged_cache<attn::cache_bf16> c16(attn::mla_cache_layout(f.cfg), 4);
  attn::paged_cache<attn::cache_fp8> c8(attn::mla_cache_layout(f.cfg), 4);
  const auto o32 = run_prefill(l32, c32, c32.add_sequence(), f.rows(0, 200), attn::mla_mode::absorbed);
  const auto o16 = run_prefill(l16, c16, c16.add_sequence(), f.rows(0, 200), attn::mla_mode::absorbed);
  const auto o8 = run_prefill(l8, c8, c8.add_sequence(), f.rows(0, 200), attn::mla_mode::absorbed);
  const double e16 = rel_err(o16.data(), o32.data(), 200 * f.cfg.hidden);
  const double e8 = rel_err(o8.data(), o32.data(), 200 * f.cfg.hidden);
  MESSAGE("cache error e: bf16 ", e16, ", fp8 ", e8);
  // Each cached value carries a relative error of at most 2^-8 (bf16) or 2^-4 (e4m3, per-token
  // scale); the output is a softmax-weighted mean of values mapped through W_UV and o_proj, plus
  // a score perturbation of the same relative size. The documented bounds are those per-value
  // bounds applied to e (max|diff| / max|ref|): 2^-8 and 2^-4.
  CHECK(e16 <= 0x1p-8);
  CHECK(e8 <= 0x1p-4);
  CHECK(e8 > e16);  // the FP8 cache is really narrower
}

TEST_CASE("mla: a sequence past max_position_embeddings fails cleanly; others are untouched") {
  fixture f(0, 80);
  f.cfg.rope.max_positions = 50;
  layer_f32 layer(f.cfg, f.weights());
  // The cache itself allows more positions than the layer's RoPE table.
  attn::paged_cache<attn::cache_f32> c(attn::mla_cache_layout(f.cfg), 8, 16, 1000);
  const index_t s0 = c.add_sequence(), s1 = c.add_sequence();
  run_prefill(layer, c, s0, f.rows(0, 45), attn::mla_mode::absorbed);
  run_prefill(layer, c, s1, f.rows(45, 55), attn::mla_mode::absorbed);
  const index_t free_before = c.free_pages();
  std::vector<float> before(static_cast<std::size_t>(45 * f.cfg.latent_width()));
  for (index_t t = 0; t < 45; ++t)
    attn::read_record(c, 0, s0, t, std::span<float>(before.data() + t * f.cfg.latent_width(), f.cfg.latent_width()));
  tensor<float, 2> out({7, f.cfg.hidden});
  const attn::seq_chunk chunks[] = {{s1, 1}, {s0, 6}};  // s0 would reach position 50
  CHECK_THROWS_WITH_AS(layer.forward(c, chunks, f.rows(0, 7), out.view()), doctest::Contains("max_position"),
                       moela::error);
  CHECK(c.length(s0) == 45);
  CHECK(c.length(s1) == 10);
  CHECK(c.free_pages() == free_before);
  CHECK(!c.in_step());
  std::vector<float> after(before.size());
  for (index_t t = 0; t < 45; ++t)
    attn::read_record(c, 0, s0, t, std::span<float>(after.data() + t * f.cfg.latent_width(), f.cfg.latent_width()));
  CHECK(after == before);
  // The other sequence continues normally.
  tensor<float, 2> o1({1, f.cfg.hidden});
  const attn::seq_chunk ok{s1, 1};
  layer.forward(c, std::span(&ok, 1), f.rows(55, 56), o1.view());
  CHECK(c.length(s1) == 11);
}

TEST_CASE("mla: construction and call errors name the problem") {
  fixture f(32, 4);
  auto w = f.weights();
  auto bad = w;
  bad.o_proj = qmatrix<quant::f32>::quantize(tensor<float, 2>({f.cfg.hidden, 3}).cview());
  CHECK_THROWS_WITH_AS(layer_f32(f.cfg, bad), doctest::Contains("o_proj"), moela::error);
  layer_f32 layer(f.cfg, w);
  {
    layer_f32 twin(f.cfg, w);  // same RoPE config: one shared table
    CHECK(&twin.rope() == &layer.rope());
  }
  attn::paged_cache<attn::cache_f32> c(attn::mla_cache_layout(f.cfg), 2);
  const index_t s = c.add_sequence();
  tensor<float, 2> out({4, f.cfg.hidden});
  const attn::seq_chunk wrong{s, 3};  // 3 tokens but x has 4 rows
  CHECK_THROWS_AS(layer.forward(c, std::span(&wrong, 1), f.rows(0, 4), out.view()), moela::error);
  CHECK(c.length(s) == 0);
  CHECK(c.free_pages() == 2);
  attn::paged_cache<attn::cache_f32> other({8, 16, 1}, 2);
  const index_t s2 = other.add_sequence();
  const attn::seq_chunk one{s2, 1};
  CHECK_THROWS_WITH_AS(layer.forward(other, std::span(&one, 1), f.rows(0, 1), out.view().slice(0, 0, 1)),
                       doctest::Contains("records"), moela::error);
}

namespace {
// Every field of two MLA configs, one CHECK each (so a failure names the field).
void check_same(const attn::mla_config& a, const attn::mla_config& b) {
  CHECK(a.hidden == b.hidden);
  CHECK(a.heads == b.heads);
  CHECK(a.q_rank == b.q_rank);
  CHECK(a.kv_rank == b.kv_rank);
  CHECK(a.nope_dim == b.nope_dim);
  CHECK(a.rope_dim == b.rope_dim);
  CHECK(a.v_dim == b.v_dim);
  CHECK(a.rms_eps == b.rms_eps);
  CHECK(a.rope.dim == b.rope.dim);
  CHECK(a.rope.theta == b.rope.theta);
  CHECK(a.rope.yarn == b.rope.yarn);
  CHECK(a.rope.factor == b.rope.factor);
  CHECK(a.rope.original_max_positions == b.rope.original_max_positions);
  CHECK(a.rope.beta_fast == b.rope.beta_fast);
  CHECK(a.rope.beta_slow == b.rope.beta_slow);
  CHECK(a.rope.mscale == b.rope.mscale);
  CHECK(a.rope.mscale_all_dim == b.rope.mscale_all_dim);
  CHECK(a.rope.max_positions == b.rope.max_positions);
}
// mla_config_from_hf(text), checked field by field against io: to_mla_config(parse_config(text)).
attn::mla_config mla_both(const std::string& text) {
  CAPTURE(text);
  const attn::mla_config direct = attn::mla_config_from_hf(nlohmann::json::parse(text));
  check_same(direct, to_mla_config(io::parse_config(text)));
  return direct;
}
std::string mla_hf_error(const std::string& text) {
  try {
    (void)attn::mla_config_from_hf(nlohmann::json::parse(text));
  } catch (const moela::error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("mla_config_from_hf: the defaults and null handling of io::parse_config + to_mla_config") {
  SUBCASE("q_lora_rank absent: 1536 (HF's default); null: 0 (no query compression)") {
    const auto a = mla_both(R"({"model_type": "deepseek_v3", "hidden_size": 256, "num_attention_heads": 6,
      "kv_lora_rank": 160, "qk_nope_head_dim": 64, "qk_rope_head_dim": 64, "v_head_dim": 48,
      "max_position_embeddings": 20480})");
    CHECK(a.q_rank == 1536);
    const auto n = mla_both(R"({"model_type": "deepseek_v2", "hidden_size": 2048, "num_attention_heads": 16,
      "q_lora_rank": null, "n_routed_experts": null})");
    CHECK(n.q_rank == 0);
    CHECK(n.kv_rank == 512);
    CHECK(n.rope.max_positions == 2048);
    CHECK_FALSE(n.rope.yarn);
  }
  SUBCASE("nothing but model_type: the model's sizes") {
    const auto c = mla_both(R"({"model_type": "deepseek_v3"})");
    CHECK(c.hidden == 7168);
    CHECK(c.heads == 128);
    CHECK(c.q_rank == 1536);
    CHECK(c.qk_head_dim() == 192);
    CHECK(c.rope.max_positions == 4096);
  }
  SUBCASE("rope_scaling with \"mscale\": null (null is absent: mscale 1, mscale_all_dim 0)") {
    const auto c = mla_both(R"({"model_type": "deepseek_v3", "rope_scaling": {"type": "yarn", "factor": 40,
      "mscale": null, "mscale_all_dim": null, "beta_fast": null, "original_max_position_embeddings": null}})");
    CHECK(c.rope.yarn);
    CHECK(c.rope.mscale == 1.0);
    CHECK(c.rope.mscale_all_dim == 0.0);
    CHECK(c.rope.beta_fast == 32.0);
    CHECK(c.rope.original_max_positions == 4096);
    // cos/sin magnitude mscale_fn(40, 1) / mscale_fn(40, 0) = 0.1 ln 40 + 1; no softmax correction.
    CHECK(attn::rope_magnitude(c.rope) == doctest::Approx(1.368887945).epsilon(1e-9));
    CHECK(c.softmax_scale() == doctest::Approx(1.0 / std::sqrt(192.0)).epsilon(1e-12));
    // rope_type (transformers) is read before type, as io does.
    const auto t = mla_both(R"({"model_type": "deepseek_v3", "rope_scaling": {"rope_type": "yarn", "type": null,
      "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707}})");
    CHECK(t.rope.mscale_all_dim == 0.707);
  }
  SUBCASE("the shipped tiny-v3 checkpoint config") {
    std::ifstream in(attn_test::golden_dir() + "/bf16/config.json");
    REQUIRE(in);
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto c = mla_both(text);
    CHECK(c.q_rank == 192);
    CHECK(c.rope.original_max_positions == 512);
  }
  SUBCASE("errors are moela::error naming the field, as in io") {
    const std::string v3 = R"({"model_type": "deepseek_v3", "rope_scaling": )";
    CHECK(mla_hf_error(v3 + R"({"type": "yarn", "mscale": "big", "factor": 40}})").find("'rope_scaling.mscale'") !=
          std::string::npos);
    CHECK(mla_hf_error(v3 + R"({"type": "yarn"}})").find("'rope_scaling.factor'") != std::string::npos);
    CHECK(mla_hf_error(v3 + R"({"factor": 40}})").find("'rope_scaling.type'") != std::string::npos);
    CHECK(mla_hf_error(v3 + R"({"type": "linear", "factor": 40}})").find("'rope_scaling.type'") != std::string::npos);
    CHECK(mla_hf_error(v3 + R"("yarn"})").find("'rope_scaling'") != std::string::npos);
    CHECK(mla_hf_error(R"({"model_type": "llama"})").find("'model_type'") != std::string::npos);
    CHECK(mla_hf_error(R"({"model_type": "deepseek_v3", "kv_lora_rank": 2.5})").find("'kv_lora_rank'") !=
          std::string::npos);
    // Without model_type the sizes are required.
    CHECK(mla_hf_error(R"({"hidden_size": 64})").find("'num_attention_heads'") != std::string::npos);
    for (const char* bad : {R"({"type": "yarn", "mscale": "big", "factor": 40})", R"({"type": "yarn"})"})
      CHECK_THROWS_AS((void)io::parse_config(v3 + bad + "}"), moela::error);
    // What the layer cannot run is rejected by both readers (else silently wrong outputs).
    for (const std::string& bad : {v3 + R"({"type": "yarn", "factor": 0.5}})",
                                  std::string(R"({"model_type": "deepseek_v3", "rope_interleave": false})"),
                                  std::string(R"({"model_type": "deepseek_v3", "attention_bias": true})")}) {
      CAPTURE(bad);
      CHECK_FALSE(mla_hf_error(bad).empty());
      CHECK_THROWS_AS((void)io::parse_config(bad), moela::error);
    }
    CHECK(mla_hf_error(R"({"model_type": "deepseek_v3", "rope_interleave": false})").find("'rope_interleave'") !=
          std::string::npos);
    CHECK(mla_hf_error(R"({"model_type": "deepseek_v3", "attention_bias": true})").find("'attention_bias'") !=
          std::string::npos);
    CHECK(mla_hf_error(v3 + R"({"type": "yarn", "factor": 0.5}})").find("'rope_scaling.factor' must be >= 1") !=
          std::string::npos);
  }
}
