#pragma once
/// \file moela/attention/mla_loader.hpp
/// Building an MLA layer from a Hugging Face DeepSeek checkpoint.
///
/// - `mla_config_from_hf(json)`: reads `hidden_size`, `num_attention_heads`, `q_lora_rank`,
///   `kv_lora_rank`, `qk_nope_head_dim`, `qk_rope_head_dim`, `v_head_dim`, `rms_norm_eps`,
///   `rope_theta`, `max_position_embeddings` and `rope_scaling` (YaRN) with the same defaults
///   and the same null handling as `io::parse_config`: see the function.
/// - `load_mla_weights<Format>(file, prefix, cfg)`: reads `<prefix>q_proj.weight` or
///   `<prefix>q_a_proj.weight`, `q_a_layernorm`, `q_b_proj`, `kv_a_proj_with_mqa`,
///   `kv_a_layernorm`, `kv_b_proj`, `o_proj` (prefix e.g. `"model.layers.0.self_attn."`),
///   converts them to FP32 (F8_E4M3 weights with a `<name>_scale_inv` tensor are dequantised with
///   the 128x128 block scales: `w = e4m3(q) * scale_inv[r / 128, c / 128]`) and encodes them in
///   `Format` with `qmatrix<Format>::quantize`; with `Format = quant::fp8_block<128, 128>` the
///   checkpoint's FP8 codes and scales are taken as they are. Shapes are checked by the `mla`
///   constructor.
///
/// Typical use:
/// ```
/// io::safetensors_file f("model.safetensors");
/// auto cfg = attn::mla_config_from_hf(nlohmann::json::parse(std::ifstream("config.json")));
/// attn::mla<cpu<>, quant::bf16, attn::cache_bf16> layer(cfg, attn::load_mla_weights<quant::bf16>(f, "model.layers.0.self_attn.", cfg));
/// ```

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "moela/attention/mla.hpp"
#include "moela/io/json_value.hpp"
#include "moela/io/safetensors.hpp"

namespace moela::attn {

namespace detail {
/// Throws "mla_config_from_hf: config field '<field>' <why...>".
template <class... Why>
[[noreturn]] void hf_field_error(const std::string& field, const Why&... why) {
  fail("mla_config_from_hf: config field '", field, "' ", why...);
}
}  // namespace detail

/// The MLA shape and RoPE of a Hugging Face DeepSeek `config.json`, read exactly as
/// `io::parse_config` followed by `to_mla_config` (model/parts.hpp) reads them:
/// - a field that is absent or null takes the value of `hf_mla_defaults_for(model_type)`
///   (attention/config.hpp): for `deepseek_v2` / `deepseek_v3` every field has a default
///   (V3: hidden 7168, 128 heads, q_lora_rank 1536, kv_lora_rank 512, 128 / 64 / 128 head dims,
///   max_position_embeddings 4096); without `model_type` the sizes (hidden_size,
///   num_attention_heads, kv_lora_rank, the three head dims, max_position_embeddings) must be
///   given, and the rest takes the same defaults;
/// - `q_lora_rank`: absent = 1536 (Hugging Face's default), an explicit null = 0 (no query
///   compression, the `q_proj` path of V2-Lite);
/// - `rope_scaling`: absent or null = plain RoPE; otherwise an object whose `rope_type` (or
///   else `type`) is "yarn" and with a `factor`; its other fields, absent or null, default to
///   original_max_position_embeddings 4096, beta_fast 32, beta_slow 1, mscale 1,
///   mscale_all_dim 0 (so the cos/sin magnitude is yarn_mscale(factor, 1), 1.368887945 at
///   factor 40, and the softmax scale has no correction).
/// Integers may be written as integral floats (2048.0). Throws moela::error naming the field for
/// an unknown model_type, a missing required size, a mistyped value, a rope_scaling that is
/// not YaRN or has a factor below 1, `rope_interleave: false` or `attention_bias: true` (what
/// io::parse_config rejects for the attention); the result is validated.
inline mla_config mla_config_from_hf(const nlohmann::json& j) {
  check(j.is_object(), "mla_config_from_hf: config is not a JSON object");
  auto present = [](const nlohmann::json& o, const char* k) { return o.contains(k) && !o[k].is_null(); };
  auto string = [&](const nlohmann::json& o, const std::string& field, const char* k) -> std::string {
    if (!present(o, k)) return "";
    if (!o[k].is_string()) detail::hf_field_error(field, "must be a string, got ", o[k].dump());
    return o[k].get<std::string>();
  };
  // An integer of `o`; `dflt` when absent or null, where a `required` default of 0 means none.
  auto integer = [&](const nlohmann::json& o, const std::string& field, const char* k, index_t dflt,
                     bool required = false) -> index_t {
    if (!present(o, k)) {
      if (required && dflt == 0) fail("mla_config_from_hf: config has no '", field, "'");
      return dflt;
    }
    const auto& v = o[k];
    if (const auto i = io::json_index(v)) return *i;
    detail::hf_field_error(field, "must be an integer, got ", v.dump());
  };
  auto number = [&](const nlohmann::json& o, const std::string& field, const char* k, double dflt) -> double {
    if (!present(o, k)) return dflt;
    if (!o[k].is_number()) detail::hf_field_error(field, "must be a number, got ", o[k].dump());
    return o[k].get<double>();
  };

  const std::string model_type = string(j, "model_type", "model_type");
  const auto d = hf_mla_defaults_for(model_type);
  if (!d) detail::hf_field_error("model_type", "is '", model_type, "' (expected deepseek_v2 or deepseek_v3)");

  mla_config c;
  c.hidden = integer(j, "hidden_size", "hidden_size", d->hidden_size, true);
  c.heads = integer(j, "num_attention_heads", "num_attention_heads", d->num_attention_heads, true);
  c.q_rank = j.contains("q_lora_rank") && j["q_lora_rank"].is_null()
                 ? 0
                 : integer(j, "q_lora_rank", "q_lora_rank", d->q_lora_rank);
  c.kv_rank = integer(j, "kv_lora_rank", "kv_lora_rank", d->kv_lora_rank, true);
  c.nope_dim = integer(j, "qk_nope_head_dim", "qk_nope_head_dim", d->qk_nope_head_dim, true);
  c.rope_dim = integer(j, "qk_rope_head_dim", "qk_rope_head_dim", d->qk_rope_head_dim, true);
  c.v_dim = integer(j, "v_head_dim", "v_head_dim", d->v_head_dim, true);
  c.rms_eps = static_cast<float>(number(j, "rms_norm_eps", "rms_norm_eps", d->rms_norm_eps));
  c.rope.dim = c.rope_dim;
  c.rope.theta = number(j, "rope_theta", "rope_theta", d->rope_theta);
  c.rope.max_positions =
      integer(j, "max_position_embeddings", "max_position_embeddings", d->max_position_embeddings, true);
  if (present(j, "rope_scaling")) {
    const auto& r = j["rope_scaling"];
    if (!r.is_object()) detail::hf_field_error("rope_scaling", "must be an object or null, got ", r.dump());
    // transformers writes "rope_type", older configs "type".
    const std::string type = present(r, "rope_type") ? string(r, "rope_scaling.rope_type", "rope_type")
                                                     : string(r, "rope_scaling.type", "type");
    if (type.empty()) detail::hf_field_error("rope_scaling.type", "is missing");
    if (type != "yarn") detail::hf_field_error("rope_scaling.type", "is '", type, "'; only 'yarn' is supported");
    if (!present(r, "factor")) detail::hf_field_error("rope_scaling.factor", "is missing");
    c.rope.yarn = true;
    c.rope.factor = number(r, "rope_scaling.factor", "factor", 1.0);
    c.rope.original_max_positions = integer(r, "rope_scaling.original_max_position_embeddings",
                                            "original_max_position_embeddings", d->original_max_position_embeddings);
    c.rope.beta_fast = number(r, "rope_scaling.beta_fast", "beta_fast", d->beta_fast);
    c.rope.beta_slow = number(r, "rope_scaling.beta_slow", "beta_slow", d->beta_slow);
    c.rope.mscale = number(r, "rope_scaling.mscale", "mscale", d->mscale);
    c.rope.mscale_all_dim = number(r, "rope_scaling.mscale_all_dim", "mscale_all_dim", d->mscale_all_dim);
    if (!(c.rope.factor >= 1.0) || !std::isfinite(c.rope.factor))
      detail::hf_field_error("rope_scaling.factor", "must be >= 1, got ", c.rope.factor);
  }
  // What this layer cannot run, rejected as io::parse_config rejects it (else the weights would
  // load and the outputs be silently wrong).
  auto flag = [&](const char* k, bool dflt) {
    if (!present(j, k)) return dflt;
    if (!j[k].is_boolean()) detail::hf_field_error(k, "must be a boolean, got ", j[k].dump());
    return j[k].get<bool>();
  };
  if (!flag("rope_interleave", true))
    detail::hf_field_error("rope_interleave", "is false; DeepSeek checkpoints store interleaved rotary pairs");
  if (flag("attention_bias", false))
    detail::hf_field_error("attention_bias", "is true; DeepSeek models have no attention biases");
  c.validate();
  return c;
}

namespace detail {
/// FP32 copy of a 2-D weight, dequantising FP8 with its `_scale_inv` block grid when present.
inline tensor<float, 2> load_weight_f32(const io::safetensors_file& f, const std::string& name) {
  tensor<float, 2> w = f.to_float<2>(name);
  const std::string sname = name + "_scale_inv";
  if (f.at(name).type == io::dtype::f8_e4m3 && f.contains(sname)) {
    const tensor<float, 2> s = f.to_float<2>(sname);
    const index_t R = w.extent(0), C = w.extent(1);
    check(s.extent(0) == (R + 127) / 128 && s.extent(1) == (C + 127) / 128, "load_mla_weights: '", sname, "' is ",
          to_string(s.shape()), " but '", name, "' is ", to_string(w.shape()), " (128x128 blocks)");
    for (index_t r = 0; r < R; ++r)
      for (index_t c = 0; c < C; ++c) w(r, c) *= s(r / 128, c / 128);
  }
  return w;
}
}  // namespace detail

template <class Format>
mla_weights<Format> load_mla_weights(const io::safetensors_file& f, const std::string& prefix, const mla_config& cfg) {
  auto mat = [&](const char* n) {
    const std::string name = prefix + n + ".weight";
    if constexpr (quant::deepseek_fp8_format<Format>) {
      // The checkpoint's own FP8 codes and block scales, copied as they are.
      if (f.at(name).type == io::dtype::f8_e4m3 && f.contains(name + "_scale_inv")) {
        const auto c = f.view<fp8_e4m3, 2>(name);
        const auto s = f.to_float<2>(name + "_scale_inv");
        tensor<fp8_e4m3, 2> codes({c.extent(0), c.extent(1)});
        std::memcpy(codes.data(), c.data(), codes.bytes());
        return qmatrix<Format>(std::move(codes), tensor<float, 2>(s));
      }
    }
    const auto w = detail::load_weight_f32(f, name);
    return qmatrix<Format>::quantize(w.cview());
  };
  auto vec = [&](const char* n) { return f.to_float<1>(prefix + n + ".weight"); };
  mla_weights<Format> w;
  if (cfg.q_rank > 0) {
    w.q_a_proj = mat("q_a_proj");
    w.q_a_norm = vec("q_a_layernorm");
    w.q_b_proj = mat("q_b_proj");
  } else {
    w.q_proj = mat("q_proj");
  }
  w.kv_a_proj = mat("kv_a_proj_with_mqa");
  w.kv_a_norm = vec("kv_a_layernorm");
  w.kv_b_proj = mat("kv_b_proj");
  w.o_proj = mat("o_proj");
  return w;
}

}  // namespace moela::attn
