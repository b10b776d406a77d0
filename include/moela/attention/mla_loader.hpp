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
  const io::json_fields f(j, "mla_config_from_hf: config");
  const std::string model_type = f.string("model_type", "");
  const auto d = hf_mla_defaults_for(model_type);
  if (!d) f.bad("model_type", "is '", model_type, "' (expected deepseek_v2 or deepseek_v3)");

  // Sizes whose default is 0 (no default table: model_type absent) must be given.
  mla_config c;
  c.hidden = f.required_integer("hidden_size", d->hidden_size);
  c.heads = f.required_integer("num_attention_heads", d->num_attention_heads);
  c.q_rank = f.is_null("q_lora_rank") ? 0 : f.integer("q_lora_rank", d->q_lora_rank);
  c.kv_rank = f.required_integer("kv_lora_rank", d->kv_lora_rank);
  c.nope_dim = f.required_integer("qk_nope_head_dim", d->qk_nope_head_dim);
  c.rope_dim = f.required_integer("qk_rope_head_dim", d->qk_rope_head_dim);
  c.v_dim = f.required_integer("v_head_dim", d->v_head_dim);
  c.rms_eps = static_cast<float>(f.number("rms_norm_eps", d->rms_norm_eps));
  c.rope.dim = c.rope_dim;
  c.rope.theta = f.number("rope_theta", d->rope_theta);
  c.rope.max_positions = f.required_integer("max_position_embeddings", d->max_position_embeddings);
  if (f.has("rope_scaling")) {
    const io::json_fields r = f.object("rope_scaling");
    // transformers writes "rope_type", older configs "type".
    const std::string type = r.has("rope_type") ? r.string("rope_type", "") : r.string("type", "");
    if (type.empty()) f.bad("rope_scaling.type", "is missing");
    if (type != "yarn") f.bad("rope_scaling.type", "is '", type, "'; only 'yarn' is supported");
    if (!r.has("factor")) f.bad("rope_scaling.factor", "is missing");
    c.rope.yarn = true;
    c.rope.factor = r.number("factor", 1.0);
    c.rope.original_max_positions = r.integer("original_max_position_embeddings", d->original_max_position_embeddings);
    c.rope.beta_fast = r.number("beta_fast", d->beta_fast);
    c.rope.beta_slow = r.number("beta_slow", d->beta_slow);
    c.rope.mscale = r.number("mscale", d->mscale);
    c.rope.mscale_all_dim = r.number("mscale_all_dim", d->mscale_all_dim);
    if (!(c.rope.factor >= 1.0) || !std::isfinite(c.rope.factor))
      f.bad("rope_scaling.factor", "must be >= 1, got ", c.rope.factor);
  }
  // What this layer cannot run, rejected as io::parse_config rejects it (else the weights would
  // load and the outputs be silently wrong).
  if (!f.boolean("rope_interleave", true))
    f.bad("rope_interleave", "is false; DeepSeek checkpoints store interleaved rotary pairs");
  if (f.boolean("attention_bias", false))
    f.bad("attention_bias", "is true; DeepSeek models have no attention biases");
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
