// The MoE layer (layer 1) and the dense FFN (layer 0) of the tiny-v3 golden model against the
// float64 reference outputs in tests/data/golden/tiny-v3 (see its README).
#include <doctest/doctest.h>

#include <moela/io/safetensors.hpp>
#include <moela/moe.hpp>

#include <cmath>
#include <fstream>
#include <map>
#include <string>

using namespace moela;
using namespace moela::moe;

namespace {

const std::string golden_dir = std::string(MOELA_TEST_DATA_DIR) + "/golden/tiny-v3";

nlohmann::json read_json(const std::string& path) {
  std::ifstream f(path);
  REQUIRE(f.good());
  return nlohmann::json::parse(f);
}

// The FFN input of layer L: rmsnorm(input + attn_out; post_attention_layernorm), computed in
// float64 (README: x / sqrt(mean(x^2) + eps) * w, eps 1e-6), rounded once to float.
tensor<float, 2> ffn_input(const io::safetensors_file& model, const io::safetensors_file& expected, int layer) {
  const std::string L = std::to_string(layer);
  const auto h = expected.to_float<2>("layers." + L + ".input");
  const auto a = expected.to_float<2>("layers." + L + ".attn_out");
  const auto w = model.to_float<1>("model.layers." + L + ".post_attention_layernorm.weight");
  const index_t T = h.extent(0), D = h.extent(1);
  tensor<float, 2> x({T, D});
  for (index_t t = 0; t < T; ++t) {
    double ss = 0;
    for (index_t d = 0; d < D; ++d) {
      const double v = double(h(t, d)) + double(a(t, d));
      ss += v * v;
    }
    const double r = 1.0 / std::sqrt(ss / double(D) + 1e-6);
    for (index_t d = 0; d < D; ++d) x(t, d) = float((double(h(t, d)) + double(a(t, d))) * r * double(w(d)));
  }
  return x;
}

// README metric: e = max|c++ - golden| / max|golden| over the tensor.
double rel_err(const_view<float, 2> got, const tensor<float, 2>& want) {
  REQUIRE(got.shape() == want.shape());
  double num = 0, den = 0;
  for (index_t i = 0; i < want.extent(0); ++i)
    for (index_t j = 0; j < want.extent(1); ++j) {
      num = std::max(num, std::abs(double(got(i, j)) - double(want(i, j))));
      den = std::max(den, std::abs(double(want(i, j))));
    }
  return num / den;
}

// README's recommended FP32 bound (about 100x the measured spread of an FP32 implementation).
constexpr double fp32_tol = 1e-4;

template <class Format>
void check_layer1(const char* ckpt, bool borrow = false) {
  CAPTURE(ckpt);
  CAPTURE(borrow);
  const io::safetensors_file model(golden_dir + "/" + ckpt + "/model.safetensors");
  const io::safetensors_file expected(golden_dir + "/expected-" + ckpt + ".safetensors");
  const moe_config cfg = moe_config::from_hf_json(read_json(golden_dir + "/" + ckpt + "/config.json"));
  CHECK(cfg.topk_method == topk_rule::noaux_tc);
  CHECK(cfg.group_limited());
  moe_weights<Format> w =
      borrow ? load_moe_weights<Format>(model, "model.layers.1.mlp", cfg,
                                        [&](const std::string& b) { return borrow_matrix<Format>(model, b); })
             : load_moe_weights<Format>(model, "model.layers.1.mlp", cfg);
  if (borrow) CHECK(!w.experts[0].up_proj.owns_storage());
  moe_layer<cpu<>, Format> layer(cfg, std::move(w));
  const tensor<float, 2> x = ffn_input(model, expected, 1);
  const index_t T = x.extent(0), D = cfg.hidden_size, K = cfg.num_experts_per_tok;

  tensor<float, 2> routed({T, D}), shared({T, D}), full({T, D});
  layer.forward_routed(routed.view(), x.cview());
  layer.forward_shared(shared.view(), x.cview());

  // gate scores: FP32 logits over 256 terms and an FP32 sigmoid, |s| <= 1.
  const auto scores = expected.to_float<2>("layers.1.gate.scores");
  CHECK(rel_err(layer.routing().scores.cview(), scores) <= fp32_tol);

  // top-k as sets keyed by expert id; weights within the README's 1e-5 gate-weight bound.
  const auto idx = expected.to_float<2>("layers.1.gate.topk_idx");
  const auto wts = expected.to_float<2>("layers.1.gate.topk_weight");
  for (index_t t = 0; t < T; ++t) {
    CAPTURE(t);
    std::map<int, float> want, got;
    for (index_t i = 0; i < K; ++i) {
      want[int(idx(t, i))] = wts(t, i);
      got[layer.routing().topk_idx(t, i)] = layer.routing().topk_weight(t, i);
    }
    REQUIRE(got.size() == want.size());
    for (const auto& entry : want) {
      const int e = entry.first;  // not a structured binding: CAPTURE's lambda (Clang 14)
      const float w = entry.second;
      CAPTURE(e);
      REQUIRE(got.count(e) == 1);
      CHECK(std::abs(got[e] - w) <= 1e-5);
    }
    // our order is descending selection score, as the golden order
    for (index_t i = 0; i < K; ++i) CHECK(layer.routing().topk_idx(t, i) == int(idx(t, i)));
  }
  std::vector<index_t> load(static_cast<std::size_t>(cfg.n_routed_experts), 0);
  for (index_t t = 0; t < T; ++t)
    for (index_t i = 0; i < K; ++i) ++load[static_cast<std::size_t>(idx(t, i))];
  for (index_t e = 0; e < cfg.n_routed_experts; ++e) CHECK(layer.last_load()[static_cast<std::size_t>(e)] == load[static_cast<std::size_t>(e)]);

  CHECK(rel_err(routed.cview(), expected.to_float<2>("layers.1.moe_routed_out")) <= fp32_tol);
  CHECK(rel_err(shared.cview(), expected.to_float<2>("layers.1.moe_shared_out")) <= fp32_tol);
  layer.forward(full.view(), x.cview());
  CHECK(rel_err(full.cview(), expected.to_float<2>("layers.1.ffn_out")) <= fp32_tol);

  // decode-shaped calls (one token at a time) route the same and agree with the batch up to FP32
  // reassociation: the matmul may sum a GEMV and a GEMM in different orders, a few ulp of the
  // partial sums, far below 1e-5 of the output's max (a wrong expert would move it by > 1e-2).
  double mx = 0;
  for (float v : full.flat()) mx = std::max(mx, std::abs(double(v)));
  tensor<float, 2> one({1, D});
  for (index_t t : {0, 7, 15}) {
    CAPTURE(t);
    layer.forward(one.view(), x.cview().slice(0, t, t + 1));
    for (index_t i = 0; i < K; ++i) CHECK(layer.routing().topk_idx(0, i) == int(idx(t, i)));
    for (index_t d = 0; d < D; ++d) CHECK(std::abs(double(one(0, d)) - double(full(t, d))) <= 1e-5 * mx);
  }
}

template <class Format>
void check_dense_layer0(const char* ckpt) {
  CAPTURE(ckpt);
  const io::safetensors_file model(golden_dir + "/" + ckpt + "/model.safetensors");
  const io::safetensors_file expected(golden_dir + "/expected-" + ckpt + ".safetensors");
  dense_ffn<cpu<>, Format> ffn(load_swiglu_weights<Format>(model, "model.layers.0.mlp"));
  CHECK(ffn.intermediate_size() == 576);
  const tensor<float, 2> x = ffn_input(model, expected, 0);
  tensor<float, 2> y(x.shape());
  ffn.forward(y.view(), x.cview());
  CHECK(rel_err(y.cview(), expected.to_float<2>("layers.0.ffn_out")) <= fp32_tol);
}

}  // namespace

// The bf16 checkpoint's weights are BF16, so quant::bf16 holds them exactly: both formats must
// meet the FP32 bound. The fp8 checkpoint is dequantised exactly (e4m3 · scale_inv) into FP32.
TEST_CASE_TEMPLATE("golden tiny-v3: MoE layer 1 (gate, routed, shared, output)", F, quant::f32, quant::bf16) {
  check_layer1<F>("bf16");
}
TEST_CASE("golden tiny-v3 fp8 checkpoint (dequantised): MoE layer 1") { check_layer1<quant::f32>("fp8"); }
// Zero-copy over the mapped checkpoints: BF16 as quant::bf16, FP8 blocks as fp8_block<128, 128>
// (the fast matmul decodes exactly e4m3 · scale_inv, so the FP32 bound holds against expected-fp8).
TEST_CASE("golden tiny-v3: MoE layer 1 with borrowed weights (bf16, fp8_block)") {
  check_layer1<quant::bf16>("bf16", true);
  check_layer1<quant::fp8_block<128, 128>>("fp8", true);
}
TEST_CASE("golden tiny-v3: requantised formats keep the routing (int8 rowwise)") {
  // int8 weights move outputs by ~1% (127 levels per row), far above the FP32 bound but the
  // gate stays FP32, so the routing must be identical to the golden one.
  const io::safetensors_file model(golden_dir + "/bf16/model.safetensors");
  const io::safetensors_file expected(golden_dir + "/expected-bf16.safetensors");
  const moe_config cfg = moe_config::from_hf_json(read_json(golden_dir + "/bf16/config.json"));
  using F = quant::int8_rowwise<>;
  moe_layer<cpu<>, F> layer(cfg, load_moe_weights<F>(model, "model.layers.1.mlp", cfg));
  const tensor<float, 2> x = ffn_input(model, expected, 1);
  tensor<float, 2> y(x.shape());
  layer.forward(y.view(), x.cview());
  const auto idx = expected.to_float<2>("layers.1.gate.topk_idx");
  for (index_t t = 0; t < x.extent(0); ++t)
    for (index_t i = 0; i < cfg.num_experts_per_tok; ++i) CHECK(layer.routing().topk_idx(t, i) == int(idx(t, i)));
  // int8 rowwise: per-weight error <= amax/254; through two GEMMs this stays well under 5%.
  CHECK(rel_err(y.cview(), expected.to_float<2>("layers.1.ffn_out")) <= 0.05);
}

TEST_CASE_TEMPLATE("golden tiny-v3: dense FFN of layer 0", F, quant::f32, quant::bf16) { check_dense_layer0<F>("bf16"); }
TEST_CASE("golden tiny-v3 fp8 checkpoint (dequantised): dense FFN of layer 0") { check_dense_layer0<quant::f32>("fp8"); }

TEST_CASE("load: missing or misshapen tensors are named") {
  const io::safetensors_file model(golden_dir + "/bf16/model.safetensors");
  moe_config cfg = moe_config::from_hf_json(read_json(golden_dir + "/bf16/config.json"));
  CHECK_THROWS_WITH_AS(load_moe_weights<quant::f32>(model, "model.layers.0.mlp", cfg),
                       doctest::Contains("model.layers.0.mlp.gate.weight"), moela::error);
  cfg.moe_intermediate_size = 32;
  CHECK_THROWS_WITH_AS(load_moe_weights<quant::f32>(model, "model.layers.1.mlp", cfg),
                       doctest::Contains("model.layers.1.mlp.experts.0"), moela::error);
}
