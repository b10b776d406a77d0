#pragma once
/// \file moela/attention/config.hpp
/// `attn::mla_config`: the runtime shape of one Multi-head Latent Attention layer, with the
/// DeepSeek `config.json` names next to each field, and the cache-size arithmetic of spec §5.7.
///
/// Derived quantities: `qk_head_dim() = nope_dim + rope_dim`, `latent_width() = kv_rank +
/// rope_dim` (values cached per token per layer), `softmax_scale() = qk_head_dim^-0.5 *
/// yarn_mscale(factor, mscale_all_dim)^2`.
///
/// `hf_mla_defaults_for(model_type)` is the one table of the values Hugging Face gives the
/// attention fields a config.json leaves out; `mla_config_from_hf` (mla_loader.hpp) and
/// `io::parse_config` (io/config.hpp) both take their defaults from it.

#include <cstddef>
#include <optional>
#include <string_view>

#include "moela/attention/rope.hpp"
#include "moela/core/error.hpp"

namespace moela::attn {

/// Hugging Face's value for each attention field of config.json that is absent or null, for
/// one `model_type`. A size (hidden_size, num_attention_heads, kv_lora_rank, the head dims,
/// max_position_embeddings) of 0 means "no default": the reader requires the field.
/// `hf_mla_defaults_for` gives the rows; see there.
struct hf_mla_defaults {
  index_t hidden_size = 0;
  index_t num_attention_heads = 0;
  index_t q_lora_rank = 1536;  ///< when absent; an explicit null means 0 (no query compression)
  index_t kv_lora_rank = 0;
  index_t qk_nope_head_dim = 0;
  index_t qk_rope_head_dim = 0;
  index_t v_head_dim = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  index_t max_position_embeddings = 0;
  // Inside a present `rope_scaling` (YaRN; its `factor` has no default):
  index_t original_max_position_embeddings = 4096;
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;          ///< cos/sin magnitude = yarn_mscale(s, mscale) / yarn_mscale(s, mscale_all_dim)
  double mscale_all_dim = 0.0;  ///< 0: no softmax-scale correction
};

/// The defaults of the attention fields, by `model_type` (transformers' DeepseekV2Config /
/// DeepseekV3Config and DeepSeek's remote code for rope_scaling):
/// | field | deepseek_v2 | deepseek_v3 | "" (no model_type) |
/// |---|---|---|---|
/// | hidden_size / num_attention_heads | 4096 / 32 | 7168 / 128 | required |
/// | q_lora_rank (absent; null = 0) | 1536 | 1536 | 1536 |
/// | kv_lora_rank | 512 | 512 | required |
/// | qk_nope / qk_rope / v_head_dim | 128 / 64 / 128 | 128 / 64 / 128 | required |
/// | rms_norm_eps / rope_theta | 1e-6 / 10000 | 1e-6 / 10000 | 1e-6 / 10000 |
/// | max_position_embeddings | 2048 | 4096 | required |
/// | rope_scaling: original_max_position_embeddings | 4096 | 4096 | 4096 |
/// | rope_scaling: beta_fast / beta_slow | 32 / 1 | 32 / 1 | 32 / 1 |
/// | rope_scaling: mscale / mscale_all_dim | 1 / 0 | 1 / 0 | 1 / 0 |
/// The "" row serves `mla_config_from_hf` on a config without `model_type` (io::parse_config
/// requires one); any other model_type gives nullopt.
constexpr std::optional<hf_mla_defaults> hf_mla_defaults_for(std::string_view model_type) {
  hf_mla_defaults d;
  if (model_type == "deepseek_v2" || model_type == "deepseek_v3") {
    const bool v3 = model_type == "deepseek_v3";
    d.hidden_size = v3 ? 7168 : 4096;
    d.num_attention_heads = v3 ? 128 : 32;
    d.kv_lora_rank = 512;
    d.qk_nope_head_dim = 128;
    d.qk_rope_head_dim = 64;
    d.v_head_dim = 128;
    d.max_position_embeddings = v3 ? 4096 : 2048;
    return d;
  }
  if (model_type.empty()) return d;
  return std::nullopt;
}

struct mla_config {
  index_t hidden = 0;    ///< hidden_size (D)
  index_t heads = 0;     ///< num_attention_heads (H)
  index_t q_rank = 0;    ///< q_lora_rank; 0 = no query compression (`q_proj` path, V2-Lite)
  index_t kv_rank = 0;   ///< kv_lora_rank (dc)
  index_t nope_dim = 0;  ///< qk_nope_head_dim (dn)
  index_t rope_dim = 0;  ///< qk_rope_head_dim (dr)
  index_t v_dim = 0;     ///< v_head_dim (dv)
  float rms_eps = 1e-6f; ///< rms_norm_eps (q_a_layernorm, kv_a_layernorm)
  rope_config rope{};    ///< rope_theta, rope_scaling.*, max_position_embeddings (rope.dim == rope_dim)

  index_t qk_head_dim() const { return nope_dim + rope_dim; }
  index_t latent_width() const { return kv_rank + rope_dim; }
  double softmax_scale() const { return attn::softmax_scale(qk_head_dim(), rope); }
  /// Width of the query projection output: H * (nope + rope).
  index_t q_width() const { return heads * qk_head_dim(); }

  /// Throws moela::error naming the first inconsistent field.
  void validate() const {
    check(hidden > 0 && heads > 0 && kv_rank > 0 && nope_dim > 0 && rope_dim > 0 && v_dim > 0,
          "mla_config: hidden, heads, kv_rank, nope_dim, rope_dim, v_dim must be positive (got hidden=", hidden,
          " heads=", heads, " kv_rank=", kv_rank, " nope_dim=", nope_dim, " rope_dim=", rope_dim, " v_dim=", v_dim,
          ")");
    check(q_rank >= 0, "mla_config: q_rank must be >= 0, got ", q_rank);
    check(rope_dim % 2 == 0, "mla_config: rope_dim must be even, got ", rope_dim);
    check(rope.dim == rope_dim, "mla_config: rope.dim (", rope.dim, ") must equal rope_dim (", rope_dim, ")");
    check(rms_eps >= 0.f, "mla_config: rms_eps must be >= 0");
    rope.validate();
  }

  /// DeepSeek-V3 / R1 (spec §1.1).
  static mla_config deepseek_v3() {
    mla_config c;
    c.hidden = 7168; c.heads = 128; c.q_rank = 1536; c.kv_rank = 512;
    c.nope_dim = 128; c.rope_dim = 64; c.v_dim = 128;
    c.rope = yarn_40x(64, 1.0, 1.0);
    return c;
  }
  /// DeepSeek-V2-Lite (no query compression, 16 heads).
  static mla_config deepseek_v2_lite() {
    mla_config c;
    c.hidden = 2048; c.heads = 16; c.q_rank = 0; c.kv_rank = 512;
    c.nope_dim = 128; c.rope_dim = 64; c.v_dim = 128;
    c.rope = yarn_40x(64, 0.707, 0.707);
    return c;
  }

 private:
  static rope_config yarn_40x(index_t dim, double mscale, double mscale_all_dim) {
    rope_config r;
    r.dim = dim; r.theta = 10000.0; r.yarn = true; r.factor = 40.0; r.original_max_positions = 4096;
    r.beta_fast = 32.0; r.beta_slow = 1.0; r.mscale = mscale; r.mscale_all_dim = mscale_all_dim;
    r.max_positions = 163840;
    return r;
  }
};

/// Per-token, per-layer KV-cache sizes for one MLA configuration (spec §5.7).
struct cache_footprint {
  std::size_t latent = 0;  ///< MLA latent cache: (kv_rank + rope_dim) elements (+ format overhead)
  std::size_t naive = 0;   ///< MLA naive-mode cache: H x (qk_head_dim + v_dim) elements
  std::size_t mha = 0;     ///< standard MHA with the same heads: 2 x H x v_dim elements (K and V)
};

/// The three figures in bytes for `element_bytes`-wide elements (2 for bf16). For V3 in bf16:
/// {1152, 81920, 65536}.
inline cache_footprint footprint(const mla_config& c, std::size_t element_bytes) {
  const auto e = element_bytes;
  return {static_cast<std::size_t>(c.latent_width()) * e,
          static_cast<std::size_t>(c.heads * (c.qk_head_dim() + c.v_dim)) * e,
          static_cast<std::size_t>(2 * c.heads * c.v_dim) * e};
}

}  // namespace moela::attn
