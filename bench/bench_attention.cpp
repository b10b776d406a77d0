// MLA attention benchmarks (moela-bench), named mla/<mode>/<shape>/<context>/<batch>/<cache>.
//
//  - mla/absorbed/...: one decode step of the absorbed-mode attention kernel of one layer: the
//    absorbed queries [batch, heads, kv_rank + rope] attend over the latent cache (online
//    softmax over 64-token tiles) and produce o_lat [batch, heads, kv_rank], as FlashMLA's
//    decode kernel does. FLOPs = batch x heads x keys x 2 x (576 + 512); bytes = the cache
//    records read (batch x keys x record bytes).
//  - mla/naive/...: one decode step of the naive-mode attention of one layer (queries after
//    RoPE -> per-head outputs before o_proj): the cached latents are up-projected to K and V
//    with kv_b_proj (bf16 weights) for every key, then standard attention. FLOPs include the
//    up-projection; bytes = cache records + kv_b_proj.
//  - mla/prefill-absorbed/..., mla/prefill-naive/...: causal prefill of 2048 tokens into an
//    empty cache through the same layer attention (queries -> per-head outputs).
//
// Counters: flop_ratio = FLOP/s over the FMA peak, bw_ratio = bytes/s over the triad bandwidth
// (both measured by the same binary, bench/support.hpp), roofline_ratio = max(FLOPs / peak,
// bytes / triad) / measured time (1 = at the roofline).
#include <benchmark/benchmark.h>

#include "support.hpp"

#include <moela/attention.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace {

using namespace moela;

struct shape_def {
  const char* name;
  attn::mla_config cfg;
};

shape_def shape_of(const std::string& n) {
  auto c = n == "v3" ? attn::mla_config::deepseek_v3() : attn::mla_config::deepseek_v2_lite();
  return {n == "v3" ? "v3" : "v2lite", c};
}

// Cheap deterministic pseudo-random values in [-1, 1).
struct lcg {
  std::uint64_t s;
  float next() {
    s = s * 6364136223846793005ULL + 1442695040888963407ULL;
    return float(std::int32_t(s >> 32)) * 0x1p-31f;
  }
};

template <class F>
void fill_cache(attn::paged_cache<F>& c, std::vector<attn::seq_chunk>& chunks, index_t batch, index_t ctx) {
  const auto& lay = c.layout();
  std::vector<float> a(static_cast<std::size_t>(lay.a)), b(static_cast<std::size_t>(lay.b));
  lcg r{42};
  for (index_t i = 0; i < batch; ++i) {
    const index_t s = c.add_sequence();
    if (ctx > 0) {
      attn::seq_chunk ch{s, ctx};
      c.prepare(std::span(&ch, 1));
      for (index_t t = 0; t < ctx; ++t) {
        for (auto& v : a) v = r.next();
        for (auto& v : b) v = r.next();
        attn::write_record(c, 0, s, t, a.data(), b.data());
      }
      c.commit();
    }
    chunks.push_back({s, 1});
  }
}

void set_counters(benchmark::State& st, double seconds, double flops, double bytes) {
  const double it = double(st.iterations());
  const double peak = moela_bench::fma_peak_flops(), bw = moela_bench::triad_bytes_per_s();
  const double t = seconds / it;
  st.counters["flop_ratio"] = flops / t / peak;
  st.counters["bw_ratio"] = bytes / t / bw;
  st.counters["roofline_ratio"] = std::max(flops / peak, bytes / bw) / t;
  st.counters["GFLOP/s"] = flops / t * 1e-9;
  st.counters["GB/s"] = bytes / t * 1e-9;
}

template <class F>
void bm_absorbed(benchmark::State& st, std::string shape, index_t ctx, index_t batch) {
  const auto sd = shape_of(shape);
  const auto& c = sd.cfg;
  const index_t H = c.heads, W = c.latent_width(), R = c.kv_rank;
  const index_t keys = ctx + 1, pages = batch * ((keys + 63) / 64);
  attn::paged_cache<F> cache(attn::mla_cache_layout(c), pages);
  std::vector<attn::seq_chunk> chunks;
  fill_cache(cache, chunks, batch, ctx);
  cache.prepare(chunks);  // the new token of every sequence, written below
  lcg r{7};
  std::vector<float> a(static_cast<std::size_t>(W));
  for (const auto& ch : chunks) {
    for (auto& v : a) v = r.next();
    attn::write_record(cache, 0, ch.seq, ctx, a.data(), a.data() + R);
  }
  tensor<float, 2> q({batch * H, W}), o({batch * H, R});
  for (index_t i = 0; i < q.size(); ++i) q.data()[i] = r.next();
  attn::attend_shape sh;
  sh.heads = H; sh.kv_heads = 1; sh.dk = W; sh.dv = R; sh.q_ld = W; sh.o_ld = R;
  sh.scale = static_cast<float>(c.softmax_scale());
  attn::attend_work work;
  attn::attend(cache, 0, chunks, sh, q.data(), o.data(), nullptr, work);  // warm-up
  double secs = 0;
  for (auto _ : st) {
    const double t0 = moela_bench::now_s();
    attn::attend(cache, 0, chunks, sh, q.data(), o.data(), nullptr, work);
    secs += moela_bench::now_s() - t0;
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  cache.rollback();
  const double flops = double(batch) * double(H) * double(keys) * 2.0 * double(W + R);
  const double bytes = double(batch) * double(keys) * double(cache.record_bytes());
  set_counters(st, secs, flops, bytes);
  st.SetLabel(xsimd::default_arch::name());
}

// A layer with the real attention shapes; the hidden size only sizes the projections that these
// benchmarks do not run (queries are given after projection).
template <class F>
attn::mla<cpu<>, quant::bf16, F> make_layer(attn::mla_config c) {
  c.hidden = 128;
  c.q_rank = 0;
  attn::mla_weights<quant::bf16> w;
  lcg r{3};
  auto m = [&](index_t rows, index_t cols) {
    tensor<float, 2> t({rows, cols});
    const float s = 1.0f / std::sqrt(float(cols));
    for (index_t i = 0; i < t.size(); ++i) t.data()[i] = r.next() * s;
    return qmatrix<quant::bf16>::quantize(t.cview());
  };
  w.q_proj = m(c.q_width(), c.hidden);
  w.kv_a_proj = m(c.latent_width(), c.hidden);
  w.kv_a_norm = tensor<float, 1>({c.kv_rank});
  for (index_t i = 0; i < c.kv_rank; ++i) w.kv_a_norm(i) = 1.f;
  w.kv_b_proj = m(c.heads * (c.nope_dim + c.v_dim), c.kv_rank);
  w.o_proj = m(c.hidden, c.heads * c.v_dim);
  return attn::mla<cpu<>, quant::bf16, F>(c, std::move(w));
}

template <class F>
void bm_layer_attention(benchmark::State& st, std::string shape, index_t ctx, index_t batch, index_t new_tokens,
                        attn::mla_mode mode) {
  const auto sd = shape_of(shape);
  auto layer = make_layer<F>(sd.cfg);
  const auto& c = layer.config();
  const index_t H = c.heads, keys = ctx + new_tokens;
  attn::paged_cache<F> cache(attn::mla_cache_layout(c), batch * ((keys + 63) / 64));
  std::vector<attn::seq_chunk> chunks;
  fill_cache(cache, chunks, batch, ctx);
  for (auto& ch : chunks) ch.tokens = new_tokens;
  cache.prepare(chunks);
  lcg r{9};
  std::vector<float> a(static_cast<std::size_t>(c.latent_width()));
  for (const auto& ch : chunks)
    for (index_t t = ctx; t < keys; ++t) {
      for (auto& v : a) v = r.next();
      attn::write_record(cache, 0, ch.seq, t, a.data(), a.data() + c.kv_rank);
    }
  const index_t T = batch * new_tokens;
  tensor<float, 2> q({T, c.q_width()}), o({T, H * c.v_dim});
  for (index_t i = 0; i < q.size(); ++i) q.data()[i] = r.next();
  if (new_tokens == 1) layer.attention(cache, 0, chunks, q.view(), o.view(), mode);  // warm-up (decode only)
  double secs = 0;
  for (auto _ : st) {
    const double t0 = moela_bench::now_s();
    layer.attention(cache, 0, chunks, q.view(), o.view(), mode);
    secs += moela_bench::now_s() - t0;
    benchmark::DoNotOptimize(o.data());
    benchmark::ClobberMemory();
  }
  cache.rollback();
  // Score/value pairs: causal within the new tokens.
  const double pairs = double(batch) * (double(new_tokens) * double(ctx) + double(new_tokens) * double(new_tokens + 1) / 2);
  const double B = double(batch), Hd = double(H), R = double(c.kv_rank), nope = double(c.nope_dim),
               v = double(c.v_dim), rd = double(c.rope_dim), Tn = double(T);
  double flops = 0, bytes = B * double(keys) * double(cache.record_bytes());
  if (mode == attn::mla_mode::naive) {
    flops = B * double(keys) * 2 * R * Hd * (nope + v)  // up-projection of every cached latent
            + pairs * Hd * 2 * (nope + rd + v);
    bytes += double(layer.weights().kv_b_proj.bytes());
  } else {
    flops = Tn * Hd * 2 * (nope * R + v * R)  // W_UK into q, W_UV out of o_lat
            + pairs * Hd * 2 * (R + rd + R);
    bytes += double(layer.weights().kv_b_proj.bytes());
  }
  set_counters(st, secs, flops, bytes);
  st.SetLabel(xsimd::default_arch::name());
}

template <class F>
const char* cname() {
  return F::name;
}

template <class F>
void register_absorbed(const std::string& shape, index_t ctx, index_t batch) {
  const std::string name = "mla/absorbed/" + std::string(shape_of(shape).name) + "/" + std::to_string(ctx) + "/" +
                           std::to_string(batch) + "/" + cname<F>();
  // Few iterations for the large shapes: one V3 step at 32768 x 8 is ~73 GFLOP.
  const double gflop = double(batch) * double(shape_of(shape).cfg.heads) * double(ctx) * 2 * 1088 * 1e-9;
  auto* b = benchmark::RegisterBenchmark(name.c_str(), [shape, ctx, batch](benchmark::State& st) {
    bm_absorbed<F>(st, shape, ctx, batch);
  });
  b->Unit(benchmark::kMillisecond)->UseRealTime();
  b->Iterations(gflop > 20 ? 1 : gflop > 2 ? 3 : 20);
}

template <class F>
void register_layer(const std::string& mode_name, attn::mla_mode mode, const std::string& shape, index_t ctx,
                    index_t batch, index_t new_tokens, int iters) {
  const std::string name = "mla/" + mode_name + "/" + std::string(shape_of(shape).name) + "/" +
                           std::to_string(ctx + (new_tokens > 1 ? new_tokens : 0)) + "/" + std::to_string(batch) +
                           "/" + cname<F>();
  auto* b = benchmark::RegisterBenchmark(name.c_str(), [=](benchmark::State& st) {
    bm_layer_attention<F>(st, shape, ctx, batch, new_tokens, mode);
  });
  b->Unit(benchmark::kMillisecond)->UseRealTime()->Iterations(iters);
}

template <class F>
void register_decode_all() {
  for (const char* s : {"v3", "v2lite"})
    for (index_t ctx : {512, 4096, 32768})
      for (index_t batch : {1, 8}) register_absorbed<F>(s, ctx, batch);
}

const bool registered = [] {
  register_decode_all<attn::cache_bf16>();
  register_decode_all<attn::cache_f32>();
  register_decode_all<attn::cache_fp8>();
  // Naive vs absorbed side by side (the layer's attention from projected queries).
  register_layer<attn::cache_bf16>("naive", attn::mla_mode::naive, "v3", 512, 1, 1, 3);
  register_layer<attn::cache_bf16>("naive", attn::mla_mode::naive, "v2lite", 512, 1, 1, 10);
  register_layer<attn::cache_bf16>("naive", attn::mla_mode::naive, "v2lite", 512, 8, 1, 3);
  register_layer<attn::cache_bf16>("naive", attn::mla_mode::naive, "v2lite", 4096, 1, 1, 3);
  register_layer<attn::cache_bf16>("absorbed-layer", attn::mla_mode::absorbed, "v3", 512, 1, 1, 10);
  register_layer<attn::cache_bf16>("absorbed-layer", attn::mla_mode::absorbed, "v2lite", 512, 1, 1, 20);
  register_layer<attn::cache_bf16>("absorbed-layer", attn::mla_mode::absorbed, "v2lite", 512, 8, 1, 10);
  register_layer<attn::cache_bf16>("absorbed-layer", attn::mla_mode::absorbed, "v2lite", 4096, 1, 1, 10);
  // Prefill of 2048 tokens into an empty cache.
  register_layer<attn::cache_bf16>("prefill-absorbed", attn::mla_mode::absorbed, "v2lite", 0, 1, 2048, 1);
  register_layer<attn::cache_bf16>("prefill-naive", attn::mla_mode::naive, "v2lite", 0, 1, 2048, 1);
  register_layer<attn::cache_bf16>("prefill-absorbed", attn::mla_mode::absorbed, "v3", 0, 1, 2048, 1);
  register_layer<attn::cache_bf16>("prefill-naive", attn::mla_mode::naive, "v3", 0, 1, 2048, 1);
  return true;
}();

}  // namespace
