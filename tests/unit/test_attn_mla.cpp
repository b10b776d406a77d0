// MLA properties on random weights: naive == absorbed, paged == contiguous (bit-identical),
// prefill n == prefill k + decode n - k, batches of ragged sequences, multi-token decode,
// FP8/bf16 caches within their bounds, and errors that leave the cache untouched.
#include <doctest/doctest.h>

#include "test_attn_support.hpp"

#include <cstring>

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
    CAPTURE(attn::mode_name(mode));
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
