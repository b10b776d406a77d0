#pragma once
/// \file moela/attention/mla_loader.hpp
/// Building an MLA layer from a Hugging Face DeepSeek checkpoint.
///
/// - `mla_config_from_hf(json)`: reads `hidden_size`, `num_attention_heads`, `q_lora_rank`
///   (null or absent = 0), `kv_lora_rank`, `qk_nope_head_dim`, `qk_rope_head_dim`, `v_head_dim`,
///   `rms_norm_eps`, `rope_theta`, `max_position_embeddings` and `rope_scaling` (YaRN when its
///   `type` / `rope_type` is "yarn"). Missing required fields throw `moela::error`.
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

#include <cstring>
#include <string>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "moela/attention/mla.hpp"
#include "moela/io/safetensors.hpp"

namespace moela::attn {

inline mla_config mla_config_from_hf(const nlohmann::json& j) {
  auto need = [&](const char* k) -> const nlohmann::json& {
    check(j.contains(k) && j[k].is_number(), "mla_config_from_hf: config has no numeric '", k, "'");
    return j[k];
  };
  mla_config c;
  c.hidden = need("hidden_size").get<index_t>();
  c.heads = need("num_attention_heads").get<index_t>();
  c.q_rank = j.contains("q_lora_rank") && j["q_lora_rank"].is_number() ? j["q_lora_rank"].get<index_t>() : 0;
  c.kv_rank = need("kv_lora_rank").get<index_t>();
  c.nope_dim = need("qk_nope_head_dim").get<index_t>();
  c.rope_dim = need("qk_rope_head_dim").get<index_t>();
  c.v_dim = need("v_head_dim").get<index_t>();
  c.rms_eps = j.contains("rms_norm_eps") ? j["rms_norm_eps"].get<float>() : 1e-6f;
  c.rope.dim = c.rope_dim;
  c.rope.theta = j.contains("rope_theta") ? j["rope_theta"].get<double>() : 10000.0;
  c.rope.max_positions = need("max_position_embeddings").get<index_t>();
  if (j.contains("rope_scaling") && j["rope_scaling"].is_object()) {
    const auto& r = j["rope_scaling"];
    std::string type = r.contains("type") ? r["type"].get<std::string>()
                                          : (r.contains("rope_type") ? r["rope_type"].get<std::string>() : "");
    check(type == "yarn", "mla_config_from_hf: rope_scaling type '", type, "' is not supported (only 'yarn')");
    c.rope.yarn = true;
    c.rope.factor = r.value("factor", 1.0);
    c.rope.original_max_positions = r.value("original_max_position_embeddings", index_t{4096});
    c.rope.beta_fast = r.value("beta_fast", 32.0);
    c.rope.beta_slow = r.value("beta_slow", 1.0);
    c.rope.mscale = r.value("mscale", 1.0);
    c.rope.mscale_all_dim = r.value("mscale_all_dim", 0.0);
  }
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
