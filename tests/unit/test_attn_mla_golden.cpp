// MLA layer against the float64 golden reference of tiny-v3 (tests/data/golden/README.md):
// layers 0 and 1, prompt of 12 tokens prefilled in one call then 4 decode steps, both modes,
// bf16 checkpoint vs expected-bf16 and fp8 checkpoint (dequantised exactly) vs expected-fp8.
#include <doctest/doctest.h>

#include "test_attn_support.hpp"

#include <string>

using namespace moela;
using attn_test::rel_err;

namespace {

// Golden README "Tolerances": an FP32 implementation of the same math measured e ~ 1e-6 against
// the float64 reference; the recommended FP32 bound is e <= 1e-4 (100x for summation order,
// FP32 RoPE tables and exp). Every step here is FP32 with FP32-exact weights.
constexpr double fp32_bound = 1e-4;

template <class Format>
void run_layer(const std::string& ckpt, const std::string& expected, int L, attn::mla_mode mode) {
  CAPTURE(ckpt);
  CAPTURE(L);
  INFO("mode ", std::string(attn::mode_name(mode)));  // std::string: doctest prints a const char* as a pointer
  io::safetensors_file model(attn_test::golden_dir() + "/" + ckpt + "/model.safetensors");
  io::safetensors_file exp(attn_test::golden_dir() + "/" + expected);
  const auto cfg = attn_test::tiny_config(ckpt);
  const std::string pre = "model.layers." + std::to_string(L) + ".";
  attn::mla<cpu<>, Format, attn::cache_f32> layer(cfg, attn::load_mla_weights<Format>(model, pre + "self_attn.", cfg));

  // Attention input: rmsnorm(residual stream entering layer L, input_layernorm).
  auto h = exp.to_float<2>("layers." + std::to_string(L) + ".input");
  const auto ln = model.to_float<1>(pre + "input_layernorm.weight");
  tensor<float, 2> x({16, cfg.hidden});
  rmsnorm(x.view(), h.cview(), ln.cview(), cfg.rms_eps);

  attn::paged_cache<attn::cache_f32> cache(attn::mla_cache_layout(cfg), 4, 8, cfg.rope.max_positions);
  const index_t s = cache.add_sequence();
  tensor<float, 2> out({16, cfg.hidden});
  attn::seq_chunk pre_chunk{s, 12};
  layer.forward(cache, std::span(&pre_chunk, 1), x.view().slice(0, 0, 12), out.view().slice(0, 0, 12), mode);
  for (index_t t = 12; t < 16; ++t) {
    attn::seq_chunk d{s, 1};
    layer.forward(cache, std::span(&d, 1), x.view().slice(0, t, t + 1), out.view().slice(0, t, t + 1), mode);
  }
  const auto want = exp.to_float<2>("layers." + std::to_string(L) + ".attn_out");
  const double e_all = rel_err(out.data(), want.data(), 16 * cfg.hidden);
  CHECK(e_all <= fp32_bound);
  // Every decode step separately (rows 12..15).
  for (index_t t = 12; t < 16; ++t) {
    CAPTURE(t);
    CHECK(rel_err(out.data() + t * cfg.hidden, want.data() + t * cfg.hidden, cfg.hidden) <= fp32_bound);
  }

  // Cache contents: kv_latent and k_pe.
  const auto lat = exp.to_float<2>("layers." + std::to_string(L) + ".attn.kv_latent");
  const auto kpe = exp.to_float<2>("layers." + std::to_string(L) + ".attn.k_pe");
  tensor<float, 2> got({16, cfg.latent_width()});
  for (index_t t = 0; t < 16; ++t)
    attn::read_record(cache, 0, s, t, std::span<float>(got.data() + t * cfg.latent_width(), cfg.latent_width()));
  double e_lat = 0, e_kpe = 0, m_lat = 0, m_kpe = 0;
  for (index_t t = 0; t < 16; ++t) {
    for (index_t c = 0; c < cfg.kv_rank; ++c) {
      e_lat = std::max(e_lat, std::fabs(double(got(t, c)) - lat(t, c)));
      m_lat = std::max(m_lat, std::fabs(double(lat(t, c))));
    }
    for (index_t c = 0; c < cfg.rope_dim; ++c) {
      e_kpe = std::max(e_kpe, std::fabs(double(got(t, cfg.kv_rank + c)) - kpe(t, c)));
      m_kpe = std::max(m_kpe, std::fabs(double(kpe(t, c))));
    }
  }
  CHECK(e_lat / m_lat <= fp32_bound);
  CHECK(e_kpe / m_kpe <= fp32_bound);

  // Queries: the RoPE part after rotation, all 16 positions at once.
  std::vector<index_t> pos(16);
  for (index_t t = 0; t < 16; ++t) pos[static_cast<std::size_t>(t)] = t;
  tensor<float, 2> q({16, cfg.q_width()});
  layer.project_q(x.cview(), pos, q.view());
  const auto qpe = exp.to_float<3>("layers." + std::to_string(L) + ".attn.q_pe");
  double e_q = 0, m_q = 0;
  for (index_t t = 0; t < 16; ++t)
    for (index_t hh = 0; hh < cfg.heads; ++hh)
      for (index_t c = 0; c < cfg.rope_dim; ++c) {
        e_q = std::max(e_q, std::fabs(double(q(t, hh * cfg.qk_head_dim() + cfg.nope_dim + c)) - qpe(t, hh, c)));
        m_q = std::max(m_q, std::fabs(double(qpe(t, hh, c))));
      }
  CHECK(e_q / m_q <= fp32_bound);
}

}  // namespace

TEST_CASE("mla golden: bf16 checkpoint, layers 0 and 1, absorbed and naive") {
  for (int L : {0, 1})
    for (auto m : {attn::mla_mode::absorbed, attn::mla_mode::naive})
      run_layer<quant::bf16>("bf16", "expected-bf16.safetensors", L, m);
}

TEST_CASE("mla golden: fp8 checkpoint dequantised, layers 0 and 1, absorbed and naive") {
  // expected-fp8 uses the FP8 weights dequantised exactly (code x scale_inv); the products are
  // rounded once to FP32 by the loader and held in an FP32 qmatrix, so the same FP32 bound holds.
  for (int L : {0, 1})
    for (auto m : {attn::mla_mode::absorbed, attn::mla_mode::naive})
      run_layer<quant::f32>("fp8", "expected-fp8.safetensors", L, m);
}

TEST_CASE("mla golden: fp8 checkpoint kept in FP8 (fp8_block<128, 128> weights), layer 0 and 1") {
  // matmul's default (fast) mode multiplies by exactly the dequantised weights, in FP32: the
  // same FP32 bound as above applies.
  for (int L : {0, 1})
    for (auto m : {attn::mla_mode::absorbed, attn::mla_mode::naive})
      run_layer<quant::fp8_block<128, 128>>("fp8", "expected-fp8.safetensors", L, m);
}
