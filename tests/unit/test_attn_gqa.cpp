// Standard MHA / GQA / MQA attention against a float64 reference written here.
#include <doctest/doctest.h>

#include "test_attn_support.hpp"

using namespace moela;

namespace {

// Float64 causal attention for one sequence of T tokens at positions 0..T-1.
std::vector<double> reference(const attn::gqa_config& c, const tensor<float, 2>& x, const tensor<float, 2>& wq,
                              const tensor<float, 2>& wk, const tensor<float, 2>& wv, const tensor<float, 2>& wo) {
  const index_t T = x.extent(0), H = c.heads, KV = c.kv_heads, d = c.head_dim, D = c.hidden;
  auto proj = [&](const tensor<float, 2>& w) {
    std::vector<double> y(static_cast<std::size_t>(T * w.extent(0)));
    for (index_t t = 0; t < T; ++t)
      for (index_t n = 0; n < w.extent(0); ++n) {
        double a = 0;
        for (index_t k = 0; k < D; ++k) a += double(x(t, k)) * w(n, k);
        y[static_cast<std::size_t>(t * w.extent(0) + n)] = a;
      }
    return y;
  };
  auto q = proj(wq), k = proj(wk), v = proj(wv);
  const auto f = attn::rope_inv_freq(c.rope);
  auto rot = [&](double* u, index_t p) {
    const index_t half = c.rope.dim / 2;
    for (index_t i = 0; i < half; ++i) {
      const double ang = double(float(p) * f[static_cast<std::size_t>(i)]);
      const index_t ia = c.pairing == attn::rope_pairing::half ? i : 2 * i;
      const index_t ib = c.pairing == attn::rope_pairing::half ? i + half : 2 * i + 1;
      const double a = u[ia], b = u[ib];
      u[ia] = a * std::cos(ang) - b * std::sin(ang);
      u[ib] = a * std::sin(ang) + b * std::cos(ang);
    }
  };
  for (index_t t = 0; t < T; ++t) {
    for (index_t h = 0; h < H; ++h) rot(q.data() + (t * H + h) * d, t);
    for (index_t g = 0; g < KV; ++g) rot(k.data() + (t * KV + g) * d, t);
  }
  std::vector<double> o(static_cast<std::size_t>(T * H * d), 0.0), out(static_cast<std::size_t>(T * D), 0.0);
  for (index_t t = 0; t < T; ++t)
    for (index_t h = 0; h < H; ++h) {
      const index_t g = h / (H / KV);
      std::vector<double> s(static_cast<std::size_t>(t + 1));
      double mx = -1e300, sum = 0;
      for (index_t u = 0; u <= t; ++u) {
        double a = 0;
        for (index_t j = 0; j < d; ++j) a += q[static_cast<std::size_t>((t * H + h) * d + j)] * k[static_cast<std::size_t>((u * KV + g) * d + j)];
        s[static_cast<std::size_t>(u)] = a / std::sqrt(double(d));
        mx = std::max(mx, s[static_cast<std::size_t>(u)]);
      }
      for (auto& e : s) sum += (e = std::exp(e - mx));
      for (index_t u = 0; u <= t; ++u)
        for (index_t j = 0; j < d; ++j)
          o[static_cast<std::size_t>((t * H + h) * d + j)] += s[static_cast<std::size_t>(u)] / sum * v[static_cast<std::size_t>((u * KV + g) * d + j)];
    }
  for (index_t t = 0; t < T; ++t)
    for (index_t n = 0; n < D; ++n) {
      double a = 0;
      for (index_t k2 = 0; k2 < H * d; ++k2) a += o[static_cast<std::size_t>(t * H * d + k2)] * wo(n, k2);
      out[static_cast<std::size_t>(t * D + n)] = a;
    }
  return out;
}

}  // namespace

TEST_CASE("gqa: MHA, GQA and MQA against float64, prefill then decode, both RoPE pairings") {
  struct variant { index_t heads, kv_heads; attn::rope_pairing p; index_t rope_dim; };
  for (auto vr : {variant{4, 4, attn::rope_pairing::half, 16}, variant{6, 2, attn::rope_pairing::interleaved, 8},
                  variant{4, 1, attn::rope_pairing::half, 16}}) {
    CAPTURE(vr.heads);
    CAPTURE(vr.kv_heads);
    attn::gqa_config c;
    c.hidden = 48; c.heads = vr.heads; c.kv_heads = vr.kv_heads; c.head_dim = 16; c.pairing = vr.p;
    c.rope.dim = vr.rope_dim; c.rope.max_positions = 512;
    std::mt19937 rng(13);
    const index_t T = 90;
    const auto x = attn_test::random_matrix(rng, T, c.hidden, 1.f);
    const auto wq = attn_test::random_matrix(rng, c.heads * 16, c.hidden, 0.2f);
    const auto wk = attn_test::random_matrix(rng, c.kv_heads * 16, c.hidden, 0.2f);
    const auto wv = attn_test::random_matrix(rng, c.kv_heads * 16, c.hidden, 0.2f);
    const auto wo = attn_test::random_matrix(rng, c.hidden, c.heads * 16, 0.2f);
    attn::gqa_weights<quant::f32> w{qmatrix<quant::f32>::quantize(wq.cview()), qmatrix<quant::f32>::quantize(wk.cview()),
                                    qmatrix<quant::f32>::quantize(wv.cview()), qmatrix<quant::f32>::quantize(wo.cview())};
    attn::gqa<cpu<>, quant::f32, attn::cache_f32> layer(c, std::move(w));
    attn::paged_cache<attn::cache_f32> cache(c.layout(), 4);
    const index_t s = cache.add_sequence();
    tensor<float, 2> out({T, c.hidden});
    attn::seq_chunk pre{s, 70};
    layer.forward(cache, std::span(&pre, 1), x.cview().slice(0, 0, 70), out.view().slice(0, 0, 70));
    for (index_t t = 70; t < T; ++t) {
      attn::seq_chunk d{s, 1};
      layer.forward(cache, std::span(&d, 1), x.cview().slice(0, t, t + 1), out.view().slice(0, t, t + 1));
    }
    const auto ref = reference(c, x, wq, wk, wv, wo);
    // FP32 projections and attention against float64: a few hundred roundings of 2^-24 per
    // output at these widths; 1e-5 of max|out| leaves a wide margin.
    CHECK(attn_test::rel_err(out.data(), ref.data(), T * c.hidden) <= 1e-5);
  }
}

TEST_CASE("gqa: cache bytes per token are 2 x kv_heads x head_dim elements; MLA is smaller") {
  attn::gqa_config c;
  c.hidden = 7168; c.heads = 128; c.kv_heads = 128; c.head_dim = 128; c.rope.dim = 64;
  CHECK(attn::cache_bf16::record_bytes(c.layout().a, c.layout().b) == 65536);
  c.kv_heads = 8;  // GQA with 8 groups
  CHECK(attn::cache_bf16::record_bytes(c.layout().a, c.layout().b) == 4096);
  CHECK(attn::footprint(attn::mla_config::deepseek_v3(), 2).latent == 1152);
}
