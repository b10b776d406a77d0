#pragma once
// Helpers shared by the attention tests (not a test itself).

#include <moela/attention.hpp>
#include <moela/io/safetensors.hpp>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <random>
#include <string>

namespace attn_test {

using namespace moela;

inline std::string golden_dir() { return std::string(MOELA_TEST_DATA_DIR) + "/golden/tiny-v3"; }

inline attn::mla_config tiny_config(const std::string& ckpt = "bf16") {
  std::ifstream in(golden_dir() + "/" + ckpt + "/config.json");
  return attn::mla_config_from_hf(nlohmann::json::parse(in));
}

/// e = max|a - b| / max|b| (the golden README's metric).
template <class A, class B>
double rel_err(const A& a, const B& b, index_t n) {
  double num = 0, den = 0;
  for (index_t i = 0; i < n; ++i) {
    num = std::max(num, std::fabs(double(a[i]) - double(b[i])));
    den = std::max(den, std::fabs(double(b[i])));
  }
  return den > 0 ? num / den : num;
}

/// Random FP32 matrix, entries N(0, sd).
inline tensor<float, 2> random_matrix(std::mt19937& rng, index_t r, index_t c, float sd) {
  std::normal_distribution<float> d(0.f, sd);
  tensor<float, 2> t({r, c});
  for (index_t i = 0; i < r * c; ++i) t.data()[i] = d(rng);
  return t;
}

/// Random weights for a config (scaled like a trained layer: N(0, 1/sqrt(fan_in))).
template <class Format>
attn::mla_weights<Format> random_weights(std::mt19937& rng, const attn::mla_config& c) {
  auto m = [&](index_t r, index_t k) {
    auto t = random_matrix(rng, r, k, 1.0f / std::sqrt(float(k)));
    return qmatrix<Format>::quantize(t.cview());
  };
  auto v = [&](index_t n) {
    tensor<float, 1> t({n});
    std::uniform_real_distribution<float> d(0.5f, 1.5f);
    for (index_t i = 0; i < n; ++i) t(i) = d(rng);
    return t;
  };
  attn::mla_weights<Format> w;
  if (c.q_rank > 0) {
    w.q_a_proj = m(c.q_rank, c.hidden);
    w.q_a_norm = v(c.q_rank);
    w.q_b_proj = m(c.heads * c.qk_head_dim(), c.q_rank);
  } else {
    w.q_proj = m(c.heads * c.qk_head_dim(), c.hidden);
  }
  w.kv_a_proj = m(c.latent_width(), c.hidden);
  w.kv_a_norm = v(c.kv_rank);
  w.kv_b_proj = m(c.heads * (c.nope_dim + c.v_dim), c.kv_rank);
  w.o_proj = m(c.hidden, c.heads * c.v_dim);
  return w;
}

/// A small config with odd sizes (q_rank optional).
inline attn::mla_config small_config(index_t q_rank) {
  attn::mla_config c;
  c.hidden = 96; c.heads = 5; c.q_rank = q_rank; c.kv_rank = 40; c.nope_dim = 24; c.rope_dim = 16; c.v_dim = 20;
  c.rope.dim = 16; c.rope.yarn = true; c.rope.factor = 8; c.rope.original_max_positions = 64;
  c.rope.mscale = 1.0; c.rope.mscale_all_dim = 1.0; c.rope.max_positions = 1024;
  return c;
}

}  // namespace attn_test
