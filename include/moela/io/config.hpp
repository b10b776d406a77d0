#pragma once
/// \file moela/io/config.hpp
/// Hugging Face `config.json` of DeepSeek-V2 / V3 / R1 checkpoints -> `moela::io::model_config`.
///
/// `parse_config(text, label)` reads the JSON text, fills every field of the spec's config
/// table (§1.1) and applies the defaults Hugging Face applies when a field is absent or null
/// (per `model_type`, see `model_config` below), then `validate()`s the result. `load_config(path)`
/// does the same for a file, or for a directory holding `config.json`.
///
/// The defaults of the MoE fields come from `moe::hf_moe_defaults_for` (moe/config.hpp), those
/// of the attention fields from `attn::hf_mla_defaults_for` (attention/config.hpp): the same
/// tables `moe::moe_config::from_hf_json` and `attn::mla_config_from_hf` read, so the part
/// readers and this one agree on every input.
///
/// Errors: broken JSON, an unknown `model_type`, a field of the wrong JSON type, a missing
/// required value or an inconsistent one (for example `n_routed_experts` not divisible by
/// `n_group`) throw `moela::error` with a message that names the file and the field.
///
/// Nothing here allocates model memory; the model code maps the config onto its parts.

#include <cmath>
#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "moela/attention/config.hpp"
#include "moela/core/config.hpp"
#include "moela/core/error.hpp"
#include "moela/io/json_value.hpp"
#include "moela/moe/config.hpp"

namespace moela::io {

/// `rope_scaling` of the config. `type == "none"` when the config has no rope_scaling
/// (plain RoPE); otherwise `"yarn"` (the only scaling DeepSeek checkpoints use).
struct rope_scaling_config {
  std::string type = "none";
  double factor = 1.0;                             ///< YaRN s
  index_t original_max_position_embeddings = 4096; ///< pre-extension context
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;          ///< scales cos/sin (as the ratio mscale_fn(mscale)/mscale_fn(mscale_all_dim))
  double mscale_all_dim = 0.0;  ///< drives the softmax-scale correction; 0 (HF default) = none
};

/// `quantization_config` of FP8 checkpoints (DeepSeek-V3 style block quantization).
struct quantization_config {
  bool present = false;
  std::string quant_method;          ///< "fp8"
  std::string fmt = "e4m3";          ///< "e4m3"
  std::string activation_scheme = "dynamic";
  index_t block_rows = 128, block_cols = 128;  ///< weight_block_size
  std::string scale_fmt;             ///< "" (fp32 scales) or "ue8m0" (V3.1 / V3.2)
};

// hidden_size is in both part tables: they must agree.
static_assert(moe::hf_moe_defaults_for("deepseek_v2")->hidden_size ==
                  attn::hf_mla_defaults_for("deepseek_v2")->hidden_size &&
              moe::hf_moe_defaults_for("deepseek_v3")->hidden_size ==
                  attn::hf_mla_defaults_for("deepseek_v3")->hidden_size,
              "moe::hf_moe_defaults_for and attn::hf_mla_defaults_for disagree on hidden_size");

/// The YaRN magnitude function of DeepSeek's reference (attention/rope.hpp), also under io.
using attn::yarn_mscale;

/// Every config.json field that matters for inference (spec §1.1), with Hugging Face defaults.
///
/// Defaults when a field is absent or null, by model_type (transformers' DeepseekV2Config /
/// DeepseekV3Config; where the two disagree with DeepSeek's own remote code the transformers
/// value is used). The MoE rows (hidden_size, moe_intermediate_size, the experts and routing)
/// are `moe::hf_moe_defaults_for`, the attention rows (heads, ranks, head dims, rms_norm_eps,
/// rope_theta, max_position_embeddings, rope_scaling) `attn::hf_mla_defaults_for`; the rest is
/// set here. Null differs from absent for `q_lora_rank` (null = 0, no query compression),
/// `n_routed_experts` (null = 0, every layer dense), `bos_token_id` (-1) and `eos_token_id`
/// (none). validate() checks n_group / topk_group only with group_limited_greedy or noaux_tc;
/// greedy ignores them, as in Hugging Face and `moe::moe_config::validate`.
/// | field | deepseek_v2 | deepseek_v3 |
/// |---|---|---|
/// | vocab_size | 32000 | 129280 |
/// | hidden_size / intermediate_size | 4096 / 11008 | 7168 / 18432 |
/// | moe_intermediate_size | 1407 | 2048 |
/// | num_hidden_layers / num_attention_heads | 32 / 32 | 61 / 128 |
/// | num_key_value_heads | = num_attention_heads | 128 |
/// | q_lora_rank (null = 0) / kv_lora_rank | 1536 / 512 | 1536 / 512 |
/// | qk_nope / qk_rope / v_head_dim | 128 / 64 / 128 | 128 / 64 / 128 |
/// | n_routed_experts / n_shared_experts | 64 / 2 | 256 / 1 |
/// | num_experts_per_tok | required when MoE | 8 |
/// | n_group / topk_group | 1 / 1 (null) | 8 / 4 |
/// | topk_method / scoring_func | greedy ("gready" too) / softmax | noaux_tc / sigmoid |
/// | norm_topk_prob / routed_scaling_factor | false / 1.0 | true / 2.5 |
/// | first_k_dense_replace / moe_layer_freq | 0 / 1 | 3 / 1 |
/// | max_position_embeddings | 2048 | 4096 |
/// | bos / eos | 1 / 2 | 0 / 1 |
/// | rms_norm_eps, rope_theta, hidden_act | 1e-6, 10000, silu | same |
/// | rope_scaling: original_max_position_embeddings | 4096 | 4096 |
/// | rope_scaling: beta_fast / beta_slow / mscale / mscale_all_dim | 32 / 1 / 1 / 0 | same |
struct model_config {
  std::string source = "<config>";  ///< file the config came from (for messages)
  std::string model_type;           ///< "deepseek_v2" or "deepseek_v3"
  std::vector<std::string> architectures;

  index_t vocab_size = 0;
  index_t hidden_size = 0;
  index_t intermediate_size = 0;
  index_t moe_intermediate_size = 0;
  index_t num_hidden_layers = 0;
  index_t num_attention_heads = 0;
  index_t num_key_value_heads = 0;
  index_t q_lora_rank = 0;  ///< 0 when `q_lora_rank` is null (no query compression)
  index_t kv_lora_rank = 0;
  index_t qk_nope_head_dim = 0;
  index_t qk_rope_head_dim = 0;
  index_t v_head_dim = 0;

  index_t n_routed_experts = 0;  ///< 0 when null: every layer dense
  index_t n_shared_experts = 0;
  index_t num_experts_per_tok = 0;
  index_t n_group = 1;       ///< used and checked only with group_limited_greedy / noaux_tc
  index_t topk_group = 1;    ///< used and checked only with group_limited_greedy / noaux_tc
  std::string topk_method;   ///< "greedy" (also for "gready"), "group_limited_greedy" or "noaux_tc"
  std::string scoring_func;  ///< "softmax" or "sigmoid"
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
  index_t first_k_dense_replace = 0;
  index_t moe_layer_freq = 1;

  std::string hidden_act = "silu";
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  rope_scaling_config rope_scaling;
  bool rope_interleave = true;
  index_t max_position_embeddings = 0;
  bool attention_bias = false;
  bool tie_word_embeddings = false;
  std::int64_t bos_token_id = -1;          ///< -1 when null
  std::vector<std::int64_t> eos_token_ids; ///< `eos_token_id` (an int or a list)
  index_t num_nextn_predict_layers = 0;
  std::string torch_dtype;
  quantization_config quantization;

  // ---- derived quantities (spec §1.2) ----
  index_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  /// Width of the cached latent per token and layer: kv_lora_rank + qk_rope_head_dim.
  index_t latent_width() const { return kv_lora_rank + qk_rope_head_dim; }
  index_t shared_intermediate_size() const { return n_shared_experts * moe_intermediate_size; }
  bool has_moe() const { return n_routed_experts > 0; }
  /// Spec §1.3: layer i is MoE iff experts exist, i >= first_k_dense_replace and i % moe_layer_freq == 0.
  bool is_moe_layer(index_t i) const {
    return n_routed_experts > 0 && i >= first_k_dense_replace && i % moe_layer_freq == 0;
  }
  /// `qk_head_dim^-0.5 * yarn_mscale(factor, mscale_all_dim)^2` (only when mscale_all_dim is set,
  /// as in the reference code).
  double softmax_scale() const {
    double s = 1.0 / std::sqrt(static_cast<double>(qk_head_dim()));
    if (rope_scaling.type == "yarn" && rope_scaling.mscale_all_dim != 0.0) {
      const double m = yarn_mscale(rope_scaling.factor, rope_scaling.mscale_all_dim);
      s *= m * m;
    }
    return s;
  }
  bool is_fp8() const { return quantization.present && quantization.quant_method == "fp8"; }

  /// Checks every value and every relation between values; throws naming the field.
  void validate() const;
};

/// Parses config.json text. `label` names the source in error messages.
inline model_config parse_config(const std::string& text, const std::string& label = "<config>") {
  nlohmann::json j = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  check(!j.is_discarded(), "config: '", label, "' is not valid JSON");
  check(j.is_object(), "config: '", label, "' is not a JSON object");
  const json_fields r(j, "config: '" + label + "'");

  model_config c;
  c.source = label;
  check(r.has("model_type"), "config: '", label, "' field 'model_type' is missing (expected deepseek_v2 or deepseek_v3)");
  c.model_type = r.string("model_type", "");
  if (c.model_type != "deepseek_v2" && c.model_type != "deepseek_v3")
    r.bad("model_type", "is '" + c.model_type + "'; moela reads deepseek_v2 and deepseek_v3");
  const bool v3 = c.model_type == "deepseek_v3";
  // The parts' default tables (one source for every reader of these fields).
  const moe::moe_config md = *moe::hf_moe_defaults_for(c.model_type);
  const attn::hf_mla_defaults ad = *attn::hf_mla_defaults_for(c.model_type);

  if (r.has("architectures")) {
    const auto& a = j.at("architectures");
    if (!a.is_array()) r.bad("architectures", "must be a list of strings");
    for (const auto& e : a) {
      if (!e.is_string()) r.bad("architectures", "must be a list of strings");
      c.architectures.push_back(e.get<std::string>());
    }
  }

  c.vocab_size = r.integer("vocab_size", v3 ? 129280 : 32000);
  c.hidden_size = r.integer("hidden_size", md.hidden_size);
  c.intermediate_size = r.integer("intermediate_size", v3 ? 18432 : 11008);
  c.moe_intermediate_size = r.integer("moe_intermediate_size", md.moe_intermediate_size);
  c.num_hidden_layers = r.integer("num_hidden_layers", v3 ? 61 : 32);
  c.num_attention_heads = r.integer("num_attention_heads", ad.num_attention_heads);
  c.num_key_value_heads = r.integer("num_key_value_heads", v3 ? 128 : c.num_attention_heads);
  // q_lora_rank: null means "no query compression"; absent means the HF default 1536.
  if (r.is_null("q_lora_rank")) c.q_lora_rank = 0;
  else c.q_lora_rank = r.integer("q_lora_rank", ad.q_lora_rank);
  c.kv_lora_rank = r.integer("kv_lora_rank", ad.kv_lora_rank);
  c.qk_nope_head_dim = r.integer("qk_nope_head_dim", ad.qk_nope_head_dim);
  c.qk_rope_head_dim = r.integer("qk_rope_head_dim", ad.qk_rope_head_dim);
  c.v_head_dim = r.integer("v_head_dim", ad.v_head_dim);

  if (r.is_null("n_routed_experts")) c.n_routed_experts = 0;
  else c.n_routed_experts = r.integer("n_routed_experts", md.n_routed_experts);
  c.n_shared_experts = r.integer("n_shared_experts", md.n_shared_experts);
  c.num_experts_per_tok = r.integer("num_experts_per_tok", md.num_experts_per_tok);
  c.n_group = r.integer("n_group", md.n_group);
  c.topk_group = r.integer("topk_group", md.topk_group);
  // Known spellings (the misspelt "gready" of DeepSeek's remote code included) are stored in
  // their canonical form; an unknown one is kept for validate() to report.
  c.topk_method = r.string("topk_method", moe::to_string(md.topk_method));
  if (const auto rule = moe::topk_rule_from_hf(c.topk_method)) c.topk_method = moe::to_string(*rule);
  c.scoring_func = r.string("scoring_func", moe::to_string(md.scoring_func));
  c.norm_topk_prob = r.boolean("norm_topk_prob", md.norm_topk_prob);
  c.routed_scaling_factor = r.number("routed_scaling_factor", md.routed_scaling_factor);
  c.first_k_dense_replace = r.integer("first_k_dense_replace", v3 ? 3 : 0);
  c.moe_layer_freq = r.integer("moe_layer_freq", 1);

  c.hidden_act = r.string("hidden_act", "silu");
  c.rms_norm_eps = r.number("rms_norm_eps", ad.rms_norm_eps);
  c.rope_theta = r.number("rope_theta", ad.rope_theta);
  c.rope_interleave = r.boolean("rope_interleave", true);
  c.max_position_embeddings = r.integer("max_position_embeddings", ad.max_position_embeddings);
  c.attention_bias = r.boolean("attention_bias", false);
  c.tie_word_embeddings = r.boolean("tie_word_embeddings", false);
  c.bos_token_id = r.integer("bos_token_id", v3 ? 0 : 1);
  if (r.is_null("bos_token_id")) c.bos_token_id = -1;
  if (r.has("eos_token_id") && j.at("eos_token_id").is_array()) {
    for (const auto& e : j.at("eos_token_id")) {
      if (!e.is_number_integer()) r.bad("eos_token_id", "must be an integer or a list of integers");
      c.eos_token_ids.push_back(e.get<std::int64_t>());
    }
  } else if (!r.is_null("eos_token_id")) {
    c.eos_token_ids.push_back(r.integer("eos_token_id", v3 ? 1 : 2));
  }
  c.num_nextn_predict_layers = r.integer("num_nextn_predict_layers", 0);
  c.torch_dtype = r.string("torch_dtype", "");

  if (r.has("rope_scaling")) {
    const json_fields rr = r.object("rope_scaling");
    // transformers writes "rope_type", older configs "type".
    std::string type = rr.has("rope_type") ? rr.string("rope_type", "") : rr.string("type", "");
    if (type.empty()) r.bad("rope_scaling.type", "is missing");
    if (type != "yarn") r.bad("rope_scaling.type", "is '" + type + "'; DeepSeek models use 'yarn'");
    c.rope_scaling.type = type;
    if (!rr.has("factor")) r.bad("rope_scaling.factor", "is missing");
    c.rope_scaling.factor = rr.number("factor", 1.0);
    c.rope_scaling.original_max_position_embeddings =
        rr.integer("original_max_position_embeddings", ad.original_max_position_embeddings);
    c.rope_scaling.beta_fast = rr.number("beta_fast", ad.beta_fast);
    c.rope_scaling.beta_slow = rr.number("beta_slow", ad.beta_slow);
    c.rope_scaling.mscale = rr.number("mscale", ad.mscale);
    c.rope_scaling.mscale_all_dim = rr.number("mscale_all_dim", ad.mscale_all_dim);
  }

  if (r.has("quantization_config")) {
    const json_fields qr = r.object("quantization_config");
    auto& qc = c.quantization;
    qc.present = true;
    qc.quant_method = qr.string("quant_method", "");
    if (qc.quant_method != "fp8")
      r.bad("quantization_config.quant_method", "is '" + qc.quant_method + "'; moela reads 'fp8' block quantization");
    qc.fmt = qr.string("fmt", "e4m3");
    if (qc.fmt != "e4m3") r.bad("quantization_config.fmt", "is '" + qc.fmt + "'; only 'e4m3' is supported");
    qc.activation_scheme = qr.string("activation_scheme", "dynamic");
    if (qr.has("weight_block_size")) {
      const auto& b = qr.at("weight_block_size");
      if (!b.is_array() || b.size() != 2 || !b[0].is_number_integer() || !b[1].is_number_integer())
        r.bad("quantization_config.weight_block_size", "must be two integers, got " + json_excerpt(b));
      qc.block_rows = static_cast<index_t>(b[0].get<std::int64_t>());
      qc.block_cols = static_cast<index_t>(b[1].get<std::int64_t>());
      if (qc.block_rows <= 0 || qc.block_cols <= 0)
        r.bad("quantization_config.weight_block_size", "must be positive, got " + json_excerpt(b));
    }
    if (qr.has("scale_fmt")) qc.scale_fmt = qr.string("scale_fmt", "");
  }
  if (r.has("scale_fmt")) c.quantization.scale_fmt = r.string("scale_fmt", "");

  c.validate();
  return c;
}

inline void model_config::validate() const {
  auto bad = [&](const char* field, auto&&... why) { fail("config: '", source, "' field '", field, "' ", why...); };
  auto positive = [&](const char* field, index_t v) {
    if (v <= 0) bad(field, "must be positive, got ", v);
  };
  positive("vocab_size", vocab_size);
  positive("hidden_size", hidden_size);
  positive("num_hidden_layers", num_hidden_layers);
  positive("num_attention_heads", num_attention_heads);
  positive("kv_lora_rank", kv_lora_rank);
  positive("qk_nope_head_dim", qk_nope_head_dim);
  positive("qk_rope_head_dim", qk_rope_head_dim);
  positive("v_head_dim", v_head_dim);
  positive("max_position_embeddings", max_position_embeddings);
  if (num_key_value_heads < 0) bad("num_key_value_heads", "must not be negative, got ", num_key_value_heads);
  if (q_lora_rank < 0) bad("q_lora_rank", "must be positive or null, got ", q_lora_rank);
  if (qk_rope_head_dim % 2 != 0) bad("qk_rope_head_dim", "must be even (RoPE rotates pairs), got ", qk_rope_head_dim);
  const constexpr index_t big = index_t{1} << 24;
  for (auto [name, v] : {std::pair{"vocab_size", vocab_size}, {"hidden_size", hidden_size},
                         {"intermediate_size", intermediate_size}, {"moe_intermediate_size", moe_intermediate_size},
                         {"num_hidden_layers", num_hidden_layers}, {"num_attention_heads", num_attention_heads},
                         {"q_lora_rank", q_lora_rank}, {"kv_lora_rank", kv_lora_rank},
                         {"qk_nope_head_dim", qk_nope_head_dim}, {"qk_rope_head_dim", qk_rope_head_dim},
                         {"v_head_dim", v_head_dim}, {"n_routed_experts", n_routed_experts},
                         {"n_shared_experts", n_shared_experts}})
    if (v > big) bad(name, "is implausibly large (", v, ")");
  if (hidden_act != "silu") bad("hidden_act", "is '", hidden_act, "'; DeepSeek models use 'silu'");
  if (!(rms_norm_eps > 0.0) || !std::isfinite(rms_norm_eps)) bad("rms_norm_eps", "must be positive, got ", rms_norm_eps);
  if (!(rope_theta > 0.0) || !std::isfinite(rope_theta)) bad("rope_theta", "must be positive, got ", rope_theta);
  if (!rope_interleave) bad("rope_interleave", "is false; DeepSeek checkpoints store interleaved rotary pairs");
  if (attention_bias) bad("attention_bias", "is true; DeepSeek models have no attention biases");
  if (first_k_dense_replace < 0) bad("first_k_dense_replace", "must not be negative, got ", first_k_dense_replace);
  if (moe_layer_freq <= 0) bad("moe_layer_freq", "must be positive, got ", moe_layer_freq);
  if (n_routed_experts < 0) bad("n_routed_experts", "must not be negative, got ", n_routed_experts);
  bool any_dense = false;
  for (index_t i = 0; i < num_hidden_layers && i <= first_k_dense_replace + moe_layer_freq; ++i)
    any_dense = any_dense || !is_moe_layer(i);
  if (any_dense) positive("intermediate_size", intermediate_size);
  if (has_moe()) {
    positive("moe_intermediate_size", moe_intermediate_size);
    if (n_shared_experts < 0) bad("n_shared_experts", "must not be negative, got ", n_shared_experts);
    if (num_experts_per_tok <= 0) bad("num_experts_per_tok", "must be set (positive) when n_routed_experts is set");
    if (num_experts_per_tok > n_routed_experts)
      bad("num_experts_per_tok", "(", num_experts_per_tok, ") exceeds n_routed_experts (", n_routed_experts, ")");
    const auto rule = moe::topk_rule_from_hf(topk_method);
    if (!rule) bad("topk_method", "is '", topk_method, "'; expected greedy, group_limited_greedy or noaux_tc");
    // As moe::moe_config::validate: greedy ignores n_group / topk_group (HF), so only the
    // group-limited methods check them.
    if (moe::uses_groups(*rule)) {
      if (n_group <= 0) bad("n_group", "must be positive, got ", n_group);
      if (n_routed_experts % n_group != 0)
        bad("n_group", "(", n_group, ") must divide n_routed_experts (", n_routed_experts, ")");
      if (topk_group <= 0 || topk_group > n_group)
        bad("topk_group", "must be in [1, n_group = ", n_group, "], got ", topk_group);
      if (num_experts_per_tok > topk_group * (n_routed_experts / n_group))
        bad("num_experts_per_tok", "(", num_experts_per_tok, ") exceeds the experts in topk_group groups (",
            topk_group * (n_routed_experts / n_group), " = topk_group ", topk_group, " x ",
            n_routed_experts / n_group, " experts in each of n_group ", n_group, ")");
      if (*rule == moe::topk_rule::noaux_tc && n_group > 1 && n_routed_experts / n_group < 2)
        bad("n_group", "leaves fewer than 2 experts per group, which noaux_tc's top-2 group score needs");
    }
    if (!moe::score_fn_from_hf(scoring_func))
      bad("scoring_func", "is '", scoring_func, "'; expected softmax or sigmoid");
    if (!std::isfinite(routed_scaling_factor) || routed_scaling_factor <= 0.0)
      bad("routed_scaling_factor", "must be positive, got ", routed_scaling_factor);
  }
  if (rope_scaling.type == "yarn") {
    if (!(rope_scaling.factor >= 1.0) || !std::isfinite(rope_scaling.factor))
      bad("rope_scaling.factor", "must be >= 1, got ", rope_scaling.factor);
    if (rope_scaling.original_max_position_embeddings <= 0)
      bad("rope_scaling.original_max_position_embeddings", "must be positive, got ",
          rope_scaling.original_max_position_embeddings);
    if (!std::isfinite(rope_scaling.beta_fast) || !std::isfinite(rope_scaling.beta_slow) ||
        !(rope_scaling.beta_fast > 0.0) || !(rope_scaling.beta_slow > 0.0))
      bad("rope_scaling.beta_fast", "and beta_slow must be positive, got ", rope_scaling.beta_fast, " and ",
          rope_scaling.beta_slow);
    if (!std::isfinite(rope_scaling.mscale) || !std::isfinite(rope_scaling.mscale_all_dim))
      bad("rope_scaling.mscale", "and mscale_all_dim must be finite");
  }
  if (bos_token_id >= vocab_size) bad("bos_token_id", "(", bos_token_id, ") is not below vocab_size (", vocab_size, ")");
  for (auto e : eos_token_ids)
    if (e < 0 || e >= vocab_size) bad("eos_token_id", "(", e, ") is not in [0, vocab_size = ", vocab_size, ")");
}

/// Reads `path` (a config.json, or a directory containing one) and parses it.
inline model_config load_config(const std::string& path) {
  std::string file = path;
  {
    std::ifstream probe(file + "/config.json");
    if (probe) file += "/config.json";
  }
  std::ifstream in(file, std::ios::binary);
  check(static_cast<bool>(in), "config: cannot open '", file, "'");
  std::ostringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), file);
}

}  // namespace moela::io
