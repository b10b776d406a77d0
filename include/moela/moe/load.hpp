#pragma once
/// \file moela/moe/load.hpp
/// Filling the MoE / FFN weight structs from Hugging Face DeepSeek checkpoint tensors.
///
/// A `Source` is anything with `bool contains(const std::string&)` and
/// `tensor<float, R> to_float<R>(const std::string&)`, e.g. `io::safetensors_file` (a
/// multi-shard model can pass a wrapper that forwards to the shard holding each name).
///
/// Tensor names, relative to the `prefix` given (for example `model.layers.3.mlp`):
/// ```
/// gate.weight                           [E, D]   BF16 -> widened exactly to FP32
/// gate.e_score_correction_bias          [E]      F32, must stay F32 (noaux_tc only)
/// experts.{e}.{gate,up}_proj.weight     [I, D]   \  any float dtype, or F8_E4M3 with
/// experts.{e}.down_proj.weight          [D, I]    > `<name>_scale_inv` [ceil(rows/128),
/// shared_experts.{gate,up,down}_proj.*           /  ceil(cols/128)] (DeepSeek FP8 blocks)
/// {gate,up,down}_proj.weight                     the dense MLP (`load_swiglu_weights(src, prefix)`)
/// ```
/// Two ways to get a `qmatrix<Format>` from `base` (e.g. `model.layers.1.mlp.experts.0.up_proj`):
/// - `load_matrix<Format>(src, base)` (the default of every loader) reads `base.weight` as
///   FP32 (FP8 blocks dequantised as `e4m3 · scale_inv[r/128, c/128]`) and converts it with
///   `qmatrix<Format>::quantize`: any checkpoint dtype into any format; the result owns its memory.
/// - `borrow_matrix<Format>(file, base)`: zero-copy over the mapped file when the stored dtype
///   is the format's (BF16 -> `quant::bf16`, F32 -> `quant::f32`, F16 -> `quant::fp16`,
///   F8_E4M3 + `weight_scale_inv` -> `quant::fp8_block<128, 128>`); the file object (or a copy
///   of it) must outlive the layer. Pass it as the `MatrixLoader`:
///   `load_moe_weights<F>(file, prefix, cfg, [&](const std::string& b) { return borrow_matrix<F>(file, b); })`.
/// Every loader takes such a `MatrixLoader` callable `(const std::string& base) -> qmatrix<Format>`.
///
/// Errors: `moela::error` naming the tensor when it is missing, has the wrong rank / shape /
/// dtype, or the bias is not F32.

#include <string>
#include <utility>

#include "moela/core/error.hpp"
#include "moela/core/tensor.hpp"
#include "moela/io/safetensors.hpp"
#include "moela/moe/config.hpp"
#include "moela/moe/ffn.hpp"
#include "moela/moe/layer.hpp"

namespace moela::moe {

/// Reads `base.weight` as an FP32 `[rows, cols]` matrix, dequantising DeepSeek FP8 blocks when a
/// `base.weight_scale_inv` exists.
template <class Source>
tensor<float, 2> load_float_matrix(const Source& src, const std::string& base) {
  tensor<float, 2> w = src.template to_float<2>(base + ".weight");
  const std::string sname = base + ".weight_scale_inv";
  if (!src.contains(sname)) return w;
  const tensor<float, 2> s = src.template to_float<2>(sname);
  const index_t R = w.extent(0), C = w.extent(1), blk = 128;
  check(s.extent(0) == (R + blk - 1) / blk && s.extent(1) == (C + blk - 1) / blk, "moe::load: '", sname, "' is ",
        to_string(s.shape()), " but [", (R + blk - 1) / blk, ", ", (C + blk - 1) / blk, "] is needed for a ",
        to_string(w.shape()), " weight in 128x128 blocks");
  for (index_t r = 0; r < R; ++r)
    for (index_t c = 0; c < C; ++c) w(r, c) *= s(r / blk, c / blk);
  return w;
}

/// `qmatrix<Format>` from `base.weight` (see load_float_matrix).
template <class Format, class Source>
qmatrix<Format> load_matrix(const Source& src, const std::string& base) {
  const tensor<float, 2> w = load_float_matrix(src, base);
  return qmatrix<Format>::quantize(w.cview());
}

/// Zero-copy `qmatrix<Format>` over `base.weight` (and `base.weight_scale_inv` for FP8 blocks).
/// Throws naming the tensor when its dtype is not the format's code type.
template <class Format>
qmatrix<Format> borrow_matrix(const io::safetensors_file& f, const std::string& base) {
  using code = typename Format::code_type;
  if constexpr (Format::kind == quant::format_kind::dense) {
    return qmatrix<Format>::borrow(f.view<code, 2>(base + ".weight"));
  } else if constexpr (Format::kind == quant::format_kind::fp8_block) {
    static_assert(quant::deepseek_fp8_format<Format>,
                  "borrow_matrix: DeepSeek FP8 checkpoints use 128x128 blocks of E4M3 codes");
    return qmatrix<Format>::borrow(f.view<code, 2>(base + ".weight"), f.view<float, 2>(base + ".weight_scale_inv"));
  } else {
    static_assert(Format::kind == quant::format_kind::dense, "borrow_matrix: no checkpoint stores this format; use load_matrix");
  }
}

/// The three projections under `prefix` (`prefix.gate_proj`, `.up_proj`, `.down_proj`).
template <class Format, class Source, class MatrixLoader>
swiglu_weights<Format> load_swiglu_weights(const Source&, const std::string& prefix, MatrixLoader&& load) {
  swiglu_weights<Format> w{load(prefix + ".gate_proj"), load(prefix + ".up_proj"), load(prefix + ".down_proj")};
  w.validate("moe::load: " + prefix);
  return w;
}
template <class Format, class Source>
swiglu_weights<Format> load_swiglu_weights(const Source& src, const std::string& prefix) {
  return load_swiglu_weights<Format>(src, prefix, [&](const std::string& b) { return load_matrix<Format>(src, b); });
}

/// All weights of the MoE layer under `prefix` (e.g. `model.layers.1.mlp`), checked against `cfg`.
template <class Format, class Source, class MatrixLoader>
moe_weights<Format> load_moe_weights(const Source& src, const std::string& prefix, const moe_config& cfg,
                                     MatrixLoader&& load) {
  cfg.validate();
  moe_weights<Format> w;
  w.gate = src.template to_float<2>(prefix + ".gate.weight");
  check(w.gate.extent(0) == cfg.n_routed_experts && w.gate.extent(1) == cfg.hidden_size, "moe::load: '", prefix,
        ".gate.weight' is ", to_string(w.gate.shape()), " but [", cfg.n_routed_experts, ", ", cfg.hidden_size,
        "] (n_routed_experts, hidden_size) was expected");
  const std::string bname = prefix + ".gate.e_score_correction_bias";
  if (cfg.has_bias()) {
    if constexpr (requires { src.at(bname).type; }) {
      check(src.at(bname).type == io::dtype::f32, "moe::load: '", bname, "' must be F32 (it is ",
            io::dtype_name(src.at(bname).type), "); a rounded bias changes the routing");
    }
    w.bias = src.template to_float<1>(bname);
    check(w.bias.extent(0) == cfg.n_routed_experts, "moe::load: '", bname, "' is ", to_string(w.bias.shape()),
          " but [", cfg.n_routed_experts, "] was expected");
  }
  w.experts.reserve(static_cast<std::size_t>(cfg.n_routed_experts));
  for (index_t e = 0; e < cfg.n_routed_experts; ++e) {
    w.experts.push_back(load_swiglu_weights<Format>(src, prefix + ".experts." + std::to_string(e), load));
    w.experts.back().validate("moe::load: " + prefix + ".experts." + std::to_string(e), cfg.hidden_size,
                              cfg.moe_intermediate_size);
  }
  if (cfg.n_shared_experts > 0) {
    w.shared = load_swiglu_weights<Format>(src, prefix + ".shared_experts", load);
    w.shared.validate("moe::load: " + prefix + ".shared_experts", cfg.hidden_size, cfg.shared_intermediate_size());
  }
  return w;
}
template <class Format, class Source>
moe_weights<Format> load_moe_weights(const Source& src, const std::string& prefix, const moe_config& cfg) {
  return load_moe_weights<Format>(src, prefix, cfg, [&](const std::string& b) { return load_matrix<Format>(src, b); });
}

}  // namespace moela::moe
