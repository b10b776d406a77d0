#pragma once
/// \file moela/model/parts.hpp
/// The parts a `decoder_layer` is built from, as moela ships them. Each wraps the layer of its
/// area and adds what the model needs: loading from a checkpoint through `io::weight_loader`
/// (zero copy where the stored format is the target format) and the part interface of
/// model/layer.hpp.
///
/// | part | wraps | checkpoint tensors (prefix `model.layers.<i>.`) |
/// |---|---|---|
/// | `rms_norm<Backend>` | ops/rmsnorm.hpp | `input_layernorm`, `post_attention_layernorm`, `model.norm` |
/// | `mla_attention<Backend, Format, CacheFormat>` | attn::mla | `self_attn.*` |
/// | `dense_mlp<Backend, Format>` | moe::dense_ffn | `mlp.{gate,up,down}_proj` |
/// | `moe_mlp<Backend, Format, Router>` | moe::moe_layer | `mlp.gate.*`, `mlp.experts.*`, `mlp.shared_experts.*` |
/// | `gqa_attention<Backend, Format, CacheFormat>` | attn::gqa | `self_attn.{q,k,v,o}_proj` (Llama-style names) |
///
/// Also: `to_mla_config(model_config)` and `to_moe_config(model_config)` map config.json onto
/// the parts' own configs.

#include <string>

#include "moela/attention.hpp"
#include "moela/io/config.hpp"
#include "moela/io/weights.hpp"
#include "moela/model/layer.hpp"
#include "moela/moe.hpp"
#include "moela/ops/rmsnorm.hpp"

namespace moela {

/// The MLA shape and RoPE of a config (rope table sized for `max_position_embeddings`).
inline attn::mla_config to_mla_config(const io::model_config& c) {
  attn::mla_config m;
  m.hidden = c.hidden_size;
  m.heads = c.num_attention_heads;
  m.q_rank = c.q_lora_rank;
  m.kv_rank = c.kv_lora_rank;
  m.nope_dim = c.qk_nope_head_dim;
  m.rope_dim = c.qk_rope_head_dim;
  m.v_dim = c.v_head_dim;
  m.rms_eps = static_cast<float>(c.rms_norm_eps);
  m.rope.dim = c.qk_rope_head_dim;
  m.rope.theta = c.rope_theta;
  m.rope.max_positions = c.max_position_embeddings;
  if (c.rope_scaling.type == "yarn") {
    m.rope.yarn = true;
    m.rope.factor = c.rope_scaling.factor;
    m.rope.original_max_positions = c.rope_scaling.original_max_position_embeddings;
    m.rope.beta_fast = c.rope_scaling.beta_fast;
    m.rope.beta_slow = c.rope_scaling.beta_slow;
    m.rope.mscale = c.rope_scaling.mscale;
    m.rope.mscale_all_dim = c.rope_scaling.mscale_all_dim;
  }
  m.validate();
  return m;
}

/// The routing and expert shapes of a config. Throws moela::error for a `scoring_func` or
/// `topk_method` that config.json cannot hold (a model_config made by hand).
inline moe::moe_config to_moe_config(const io::model_config& c) {
  moe::moe_config m;
  m.hidden_size = c.hidden_size;
  m.n_routed_experts = c.n_routed_experts;
  m.num_experts_per_tok = c.num_experts_per_tok;
  m.n_group = c.n_group;
  m.topk_group = c.topk_group;
  // The spellings io::parse_config accepts; a hand-made config with another one is an error.
  const auto scoring = moe::score_fn_from_hf(c.scoring_func);
  const auto method = moe::topk_rule_from_hf(c.topk_method);
  check(scoring.has_value(), "to_moe_config: scoring_func '", c.scoring_func, "' (expected softmax or sigmoid)");
  check(method.has_value(), "to_moe_config: topk_method '", c.topk_method,
        "' (expected greedy, group_limited_greedy or noaux_tc)");
  m.scoring_func = *scoring;
  m.topk_method = *method;
  m.norm_topk_prob = c.norm_topk_prob;
  m.routed_scaling_factor = static_cast<float>(c.routed_scaling_factor);
  m.n_shared_experts = c.n_shared_experts;
  m.moe_intermediate_size = c.moe_intermediate_size;
  m.validate();
  return m;
}

/// RMSNorm with a learned FP32 weight: `y = x / sqrt(mean(x^2) + eps) * w`.
template <class Backend = cpu<>>
class rms_norm {
 public:
  rms_norm() = default;
  rms_norm(tensor<float, 1> w, float eps) : w_(std::move(w)), eps_(eps) {}
  /// `name` is the tensor name without `.weight` (e.g. `model.layers.0.input_layernorm`).
  static rms_norm load(io::weight_loader& w, const io::model_config& c, const std::string& name) {
    return rms_norm(w.vector(name + ".weight", c.hidden_size), static_cast<float>(c.rms_norm_eps));
  }
  void forward(tensor_view<float, 2> y, const_view<float, 2> x) const {
    rmsnorm<typename Backend::arch>(y, x, w_.cview(), eps_);
  }
  const tensor<float, 1>& weight() const { return w_; }

 private:
  tensor<float, 1> w_;
  float eps_ = 1e-6f;
};

/// Multi-head Latent Attention over a latent cache of `CacheFormat` (attn::cache_f32 / cache_bf16
/// / cache_fp8), weights in `Format`. `set_mode(attn::mla_mode::naive)` switches to the
/// reference (up-projected) attention.
template <class Backend, class Format, class CacheFormat = attn::cache_bf16>
class mla_attention {
 public:
  using impl_type = attn::mla<Backend, Format, CacheFormat>;
  using cache_format = CacheFormat;

  explicit mla_attention(impl_type impl) : impl_(std::move(impl)) {}

  /// `prefix` = `model.layers.<i>.self_attn`.
  static mla_attention load(io::weight_loader& w, const io::model_config& c, const std::string& prefix) {
    const auto m = to_mla_config(c);
    const std::string p = prefix + ".";
    const index_t qk = m.heads * m.qk_head_dim();
    attn::mla_weights<Format> mw;
    if (m.q_rank > 0) {
      mw.q_a_proj = w.matrix<Format>(p + "q_a_proj.weight", m.q_rank, m.hidden);
      mw.q_a_norm = w.vector(p + "q_a_layernorm.weight", m.q_rank);
      mw.q_b_proj = w.matrix<Format>(p + "q_b_proj.weight", qk, m.q_rank);
    } else {
      mw.q_proj = w.matrix<Format>(p + "q_proj.weight", qk, m.hidden);
    }
    mw.kv_a_proj = w.matrix<Format>(p + "kv_a_proj_with_mqa.weight", m.latent_width(), m.hidden);
    mw.kv_a_norm = w.vector(p + "kv_a_layernorm.weight", m.kv_rank);
    mw.kv_b_proj = w.matrix<Format>(p + "kv_b_proj.weight", m.heads * (m.nope_dim + m.v_dim), m.kv_rank);
    mw.o_proj = w.matrix<Format>(p + "o_proj.weight", m.hidden, m.heads * m.v_dim);
    return mla_attention(impl_type(m, std::move(mw)));
  }

  /// Cache records of this attention for config `c`: `[kv_lora_rank | qk_rope_head_dim]`.
  static attn::cache_layout cache_layout(const io::model_config& c) {
    return {c.kv_lora_rank, c.qk_rope_head_dim, c.num_hidden_layers};
  }

  template <class Cache>
  void forward(tensor_view<float, 2> y, const_view<float, 2> x, Cache& cache, index_t layer,
               std::span<const step_chunk> chunks) {
    impl_.forward_layer(cache, layer, chunks, x, y, mode_);
  }

  void set_mode(attn::mla_mode m) { mode_ = m; }
  attn::mla_mode mode() const { return mode_; }
  impl_type& impl() { return impl_; }
  const impl_type& impl() const { return impl_; }

 private:
  impl_type impl_;
  attn::mla_mode mode_ = attn::mla_mode::absorbed;
};

/// Standard multi-head attention with grouped K/V heads (attn::gqa), for models that mix a
/// conventional attention with DeepSeek's FFNs. From a config: heads = num_attention_heads,
/// kv_heads = num_key_value_heads, head_dim = hidden_size / heads, RoPE over the whole head
/// (NeoX half pairing), rope_theta; tensors `self_attn.{q,k,v,o}_proj.weight`. Its cache holds
/// K and V: 2 x kv_heads x head_dim values per token and layer.
template <class Backend, class Format, class CacheFormat = attn::cache_bf16>
class gqa_attention {
 public:
  using impl_type = attn::gqa<Backend, Format, CacheFormat>;
  using cache_format = CacheFormat;
  explicit gqa_attention(impl_type impl) : impl_(std::move(impl)) {}

  static attn::gqa_config to_gqa_config(const io::model_config& c) {
    attn::gqa_config g;
    g.hidden = c.hidden_size;
    g.heads = c.num_attention_heads;
    g.kv_heads = c.num_key_value_heads > 0 ? c.num_key_value_heads : c.num_attention_heads;
    check(c.hidden_size % c.num_attention_heads == 0, "gqa_attention: hidden_size (", c.hidden_size,
          ") is not a multiple of num_attention_heads (", c.num_attention_heads, ")");
    g.head_dim = c.hidden_size / c.num_attention_heads;
    g.rope.dim = g.head_dim;
    g.rope.theta = c.rope_theta;
    g.rope.max_positions = c.max_position_embeddings;
    g.pairing = attn::rope_pairing::half;
    g.validate();
    return g;
  }
  static attn::cache_layout cache_layout(const io::model_config& c) {
    return to_gqa_config(c).layout(c.num_hidden_layers);
  }
  /// `prefix` = `model.layers.<i>.self_attn`.
  static gqa_attention load(io::weight_loader& w, const io::model_config& c, const std::string& prefix) {
    const auto g = to_gqa_config(c);
    const index_t q = g.heads * g.head_dim, kv = g.kv_heads * g.head_dim;
    attn::gqa_weights<Format> gw{w.matrix<Format>(prefix + ".q_proj.weight", q, g.hidden),
                                 w.matrix<Format>(prefix + ".k_proj.weight", kv, g.hidden),
                                 w.matrix<Format>(prefix + ".v_proj.weight", kv, g.hidden),
                                 w.matrix<Format>(prefix + ".o_proj.weight", g.hidden, q)};
    return gqa_attention(impl_type(g, std::move(gw)));
  }
  template <class Cache>
  void forward(tensor_view<float, 2> y, const_view<float, 2> x, Cache& cache, index_t layer,
               std::span<const step_chunk> chunks) {
    impl_.forward_layer(cache, layer, chunks, x, y);
  }
  impl_type& impl() { return impl_; }

 private:
  impl_type impl_;
};

/// The dense SwiGLU MLP of the first `first_k_dense_replace` layers (width intermediate_size).
template <class Backend, class Format>
class dense_mlp {
 public:
  static constexpr bool is_moe = false;
  using impl_type = moe::dense_ffn<Backend, Format>;
  explicit dense_mlp(impl_type impl) : impl_(std::move(impl)) {}

  /// `prefix` = `model.layers.<i>.mlp`.
  static dense_mlp load(io::weight_loader& w, const io::model_config& c, const std::string& prefix) {
    const index_t D = c.hidden_size, I = c.intermediate_size;
    moe::swiglu_weights<Format> sw{w.matrix<Format>(prefix + ".gate_proj.weight", I, D),
                                   w.matrix<Format>(prefix + ".up_proj.weight", I, D),
                                   w.matrix<Format>(prefix + ".down_proj.weight", D, I)};
    return dense_mlp(impl_type(std::move(sw)));
  }
  void forward(tensor_view<float, 2> y, const_view<float, 2> x) { impl_.forward(y, x); }
  impl_type& impl() { return impl_; }
  const impl_type& impl() const { return impl_; }

 private:
  impl_type impl_;
};

/// DeepSeekMoE: router, routed experts and shared experts, experts in `Format`.
template <class Backend, class Format, class Router = moe::config_router>
class moe_mlp {
 public:
  static constexpr bool is_moe = true;
  using impl_type = moe::moe_layer<Backend, Format, Router>;
  explicit moe_mlp(impl_type impl) : impl_(std::move(impl)) {}

  /// `prefix` = `model.layers.<i>.mlp`.
  static moe_mlp load(io::weight_loader& w, const io::model_config& c, const std::string& prefix) {
    const auto m = to_moe_config(c);
    const index_t D = c.hidden_size, I = c.moe_intermediate_size, E = c.n_routed_experts;
    moe::moe_weights<Format> mw;
    mw.gate = w.floats(prefix + ".gate.weight", E, D);
    if (m.has_bias()) {
      const std::string b = prefix + ".gate.e_score_correction_bias";
      if (!w.is_random()) {
        const auto& e = w.source().at(b);
        check(e.type == io::dtype::f32, "checkpoint: '", w.source().file_of(b).path(), "' tensor '", b, "' is ",
              io::dtype_name(e.type), "; the routing bias must be F32 (rounding it changes the routing)");
      }
      mw.bias = w.vector(b, E);
    }
    auto swiglu = [&](const std::string& p, index_t inter) {
      return moe::swiglu_weights<Format>{w.matrix<Format>(p + ".gate_proj.weight", inter, D),
                                         w.matrix<Format>(p + ".up_proj.weight", inter, D),
                                         w.matrix<Format>(p + ".down_proj.weight", D, inter)};
    };
    mw.experts.reserve(static_cast<std::size_t>(E));
    for (index_t e = 0; e < E; ++e) mw.experts.push_back(swiglu(prefix + ".experts." + std::to_string(e), I));
    if (m.n_shared_experts > 0) mw.shared = swiglu(prefix + ".shared_experts", m.shared_intermediate_size());
    return moe_mlp(impl_type(m, std::move(mw)));
  }
  void forward(tensor_view<float, 2> y, const_view<float, 2> x) { impl_.forward(y, x); }
  impl_type& impl() { return impl_; }
  const impl_type& impl() const { return impl_; }

 private:
  impl_type impl_;
};

}  // namespace moela
