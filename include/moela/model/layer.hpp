#pragma once
/// \file moela/model/layer.hpp
/// `decoder_layer<Backend, Attention, FFN, Norm>`: one pre-norm transformer block,
///     h += Attention(Norm_attn(h));  h += FFN(Norm_ffn(h))
/// composed at compile time from three parts. The concepts below say what a part must provide;
/// moela's own parts (model/parts.hpp) wrap the MLA, MoE and dense SwiGLU layers, and users can
/// plug their own.
///
/// Shapes: `h` is `[T, hidden]` FP32, the T tokens of every sequence of the step, concatenated
/// in the order of `step.chunks` (chunk b owns rows `[row_begin(b), row_begin(b) + tokens)`).
///
/// A part is loaded from a checkpoint with `P::load(weight_loader&, const io::model_config&,
/// const std::string& prefix)` where prefix is `model.layers.<i>.self_attn` (attention),
/// `model.layers.<i>.mlp` (FFN) or the norm's full tensor name without `.weight`.

#include <concepts>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "moela/attention/kv_cache.hpp"
#include "moela/backend/tags.hpp"
#include "moela/core/tensor.hpp"
#include "moela/io/config.hpp"
#include "moela/io/weights.hpp"

namespace moela {

/// New tokens of one sequence in a forward step: `{seq, tokens}` (the KV caches' chunk type).
using step_chunk = attn::seq_chunk;

/// Called with the name and value of intermediate tensors (`layers.<i>.input`,
/// `layers.<i>.attn_out`, `layers.<i>.ffn_out`, `layers.<i>.output`, `final_hidden`), rows in
/// step order. Empty: no tracing (the default; costs nothing).
using trace_fn = std::function<void(const std::string& name, const_view<float, 2> value)>;

/// A norm part: `forward(y, x)` writes the normalised rows of x into y ([T, n] each).
template <class N>
concept norm_part = requires(const N& n, tensor_view<float, 2> y, const_view<float, 2> x) { n.forward(y, x); };

/// An FFN part: `forward(y, x)`, y and x [T, hidden]; `is_moe` says which layers it serves
/// (spec §1.3: dense for the first first_k_dense_replace layers, MoE after).
template <class F>
concept ffn_part = requires(F& f, tensor_view<float, 2> y, const_view<float, 2> x) {
  f.forward(y, x);
  { F::is_moe } -> std::convertible_to<bool>;
};

/// An attention part over cache type `Cache`: `forward(y, x, cache, layer, chunks)` reads the
/// normalised input x [T, hidden], appends the step's tokens to `cache` for `layer` and writes
/// the attention output (after the output projection) into y [T, hidden].
template <class A, class Cache>
concept attention_part = requires(A& a, tensor_view<float, 2> y, const_view<float, 2> x, Cache& c, index_t layer,
                                  std::span<const step_chunk> chunks) { a.forward(y, x, c, layer, chunks); };

/// Scratch rows shared by the layers of one model (grown on demand, reused across steps).
struct layer_scratch {
  tensor<float, 2> normed, out;
  void ensure(index_t rows, index_t hidden) {
    if (normed.extent(0) < rows || normed.extent(1) != hidden) {
      normed = tensor<float, 2>({rows, hidden});
      out = tensor<float, 2>({rows, hidden});
    }
  }
};

template <class Backend, class Attention, class FFN, class Norm>
  requires ffn_part<FFN> && norm_part<Norm>
class decoder_layer {
 public:
  using backend = Backend;
  using attention_type = Attention;
  using ffn_type = FFN;
  using norm_type = Norm;
  static constexpr bool is_moe = FFN::is_moe;

  decoder_layer() = default;
  decoder_layer(Norm attn_norm, Attention attn, Norm ffn_norm, FFN ffn)
      : attn_norm_(std::move(attn_norm)), attn_(std::move(attn)), ffn_norm_(std::move(ffn_norm)), ffn_(std::move(ffn)) {}

  /// Loads layer `i` (tensors `model.layers.<i>.*`).
  static decoder_layer load(io::weight_loader& w, const io::model_config& c, index_t i) {
    const std::string p = "model.layers." + std::to_string(i);
    return decoder_layer(Norm::load(w, c, p + ".input_layernorm"), Attention::load(w, c, p + ".self_attn"),
                         Norm::load(w, c, p + ".post_attention_layernorm"), FFN::load(w, c, p + ".mlp"));
  }

  /// h [T, hidden] in place: one block over the tokens of `chunks`, appending them to `cache`.
  template <class Cache>
    requires attention_part<Attention, Cache>
  void forward(tensor_view<float, 2> h, Cache& cache, index_t layer, std::span<const step_chunk> chunks,
               layer_scratch& s, const trace_fn& trace = {}) {
    const index_t T = h.extent(0), D = h.extent(1);
    s.ensure(T, D);
    auto normed = tensor_view<float, 2>(s.normed.data(), {T, D});
    auto out = tensor_view<float, 2>(s.out.data(), {T, D});
    const std::string p = trace ? "layers." + std::to_string(layer) + "." : std::string();
    if (trace) trace(p + "input", h);
    attn_norm_.forward(normed, h);
    attn_.forward(out, normed, cache, layer, chunks);
    if (trace) trace(p + "attn_out", out);
    add_rows(h, out);
    ffn_norm_.forward(normed, h);
    ffn_.forward(out, normed);
    if (trace) trace(p + "ffn_out", out);
    add_rows(h, out);
    if (trace) trace(p + "output", h);
  }

  Attention& attention() { return attn_; }
  const Attention& attention() const { return attn_; }
  FFN& ffn() { return ffn_; }
  const FFN& ffn() const { return ffn_; }

 private:
  static void add_rows(tensor_view<float, 2> h, const_view<float, 2> d) {
    for (index_t t = 0; t < h.extent(0); ++t) {
      float* a = &h(t, 0);
      const float* b = &d(t, 0);
      for (index_t j = 0; j < h.extent(1); ++j) a[j] += b[j];
    }
  }

  Norm attn_norm_;
  Attention attn_;
  Norm ffn_norm_;
  FFN ffn_;
};

}  // namespace moela
