#pragma once
/// \file moela/model/deepseek.hpp
/// The DeepSeek-V2 / V3 / R1 model as one type, and loading it from a Hugging Face directory.
///
///   using M = moela::deepseek_model<moela::quant::fp8_block<128, 128>, moela::attn::cache_bf16>;
///   M m = moela::load_model<M>("path/to/DeepSeek-V3");      // config.json + safetensors
///   auto cache = moela::make_cache(m, /*tokens=*/8192);      // paged latent cache
///
/// `deepseek_model<Format, CacheFormat, Backend>`: MLA attention and RMSNorms in every layer,
/// a dense SwiGLU MLP for the first `first_k_dense_replace` layers and DeepSeekMoE after (spec
/// §1.3); all linear weights in `Format`; the latent cache in `CacheFormat`. The LM head uses
/// `Format` too, except for FP8 formats where it stays BF16 as DeepSeek ships it.
///
/// `load_model<M>(dir, options)`: reads `dir/config.json` (io::load_config) and the checkpoint
/// (single or sharded safetensors, memory-mapped), shows a progress bar on a terminal, and
/// loads every tensor. `options.max_positions` caps the positions the RoPE tables cover (and
/// so the longest sequence): 0 means min(max_position_embeddings, 16384), which keeps the
/// tables small for configs that declare 160K positions.
///
/// `make_cache(model, tokens, page_size)`: a paged latent cache of the model's CacheFormat for
/// all layers, with room for `tokens` tokens in total over all sequences.

#include <memory>
#include <string>
#include <type_traits>

#include "moela/io/checkpoint.hpp"
#include "moela/io/config.hpp"
#include "moela/model/model.hpp"
#include "moela/model/parts.hpp"

namespace moela {

/// The LM-head format for a layer weight format: BF16 for FP8 formats, else the format itself.
template <class Format>
using deepseek_head_format = std::conditional_t<quant::fp8_format<Format>, quant::bf16, Format>;

template <class Format = quant::bf16, class CacheFormat = attn::cache_bf16, class Backend = cpu<>>
using deepseek_model =
    model<Backend, deepseek_head_format<Format>,
          decoder_layer<Backend, mla_attention<Backend, Format, CacheFormat>, dense_mlp<Backend, Format>,
                        rms_norm<Backend>>,
          decoder_layer<Backend, mla_attention<Backend, Format, CacheFormat>, moe_mlp<Backend, Format>,
                        rms_norm<Backend>>>;

/// How `load_model` builds a model.
struct load_options {
  /// Longest sequence the model runs (its RoPE tables and every cache made by make_cache are
  /// sized for it): min(this, the config's max_position_embeddings); 0: min(config, 16384).
  index_t max_positions = 0;
  bool progress = true;  ///< progress bar on stderr when it is a terminal
};

/// The config with the position limit of `o` applied.
inline io::model_config apply_options(io::model_config c, const load_options& o) {
  const index_t cap = o.max_positions > 0 ? o.max_positions : index_t{16384};
  c.max_position_embeddings = std::min(c.max_position_embeddings, cap);
  return c;
}

/// Builds `Model` for config `c` with random weights (benchmarks, examples, tests).
template <class Model>
Model random_model(const io::model_config& c, std::uint64_t seed = 1) {
  io::weight_loader w(io::random_weights{seed});
  return Model::build(c, w);
}

/// Loads `Model` from a Hugging Face checkpoint directory (see the file comment).
template <class Model>
Model load_model(const std::string& dir, const load_options& o = {}) {
  const auto cfg = apply_options(io::load_config(dir), o);
  auto ckpt = std::make_shared<const io::checkpoint>(dir);
  io::progress_bar bar("loading " + dir, ckpt->data_bytes(), false);
  return Model::load(cfg, ckpt, o.progress && bar.enabled() ? &bar : nullptr);
}

/// The attention part of a model type (its first layer type's): `model_attention<M>::cache_layout(cfg)`
/// is the layout a cache for M needs (see make_cache).
template <class Model>
using model_attention = typename std::variant_alternative_t<0, typename Model::layer_variant>::attention_type;
/// The cache format of a model type.
template <class Model>
using model_cache_format = typename model_attention<Model>::cache_format;

/// Loads a DeepSeek checkpoint with BF16 weights (converted where stored otherwise) and a BF16
/// latent cache: the one-line entry point.
inline deepseek_model<quant::bf16, attn::cache_bf16> load_model(const std::string& dir, const load_options& o = {}) {
  return load_model<deepseek_model<quant::bf16, attn::cache_bf16>>(dir, o);
}

/// A paged KV cache for every layer of `m` (latent records for MLA, K and V for standard
/// attention), room for `tokens` tokens over all sequences (rounded up to whole pages of
/// `page_size` tokens), each sequence limited to the config's `max_position_embeddings`.
/// Errors (`moela::error`): `tokens` or `page_size` < 1, a pool too large to address.
template <class Model>
attn::paged_cache<model_cache_format<Model>> make_cache(const Model& m, index_t tokens,
                                                        index_t page_size = attn::paged_cache<model_cache_format<Model>>::default_page_size) {
  check(tokens > 0 && page_size > 0, "make_cache: tokens and page_size must be positive (got ", tokens, ", ",
        page_size, ")");
  const auto& c = m.config();
  const attn::cache_layout layout = model_attention<Model>::cache_layout(c);
  const index_t pages = (tokens + page_size - 1) / page_size;
  return attn::paged_cache<model_cache_format<Model>>(layout, pages, page_size, c.max_position_embeddings);
}

}  // namespace moela
