#pragma once
/// \file moela/model/model.hpp
/// `model<Backend, HeadFormat, Layer...>`: token embedding, a stack of decoder layers, the final
/// RMSNorm and the LM head, composed at compile time.
///
/// Layer types: the model holds `num_hidden_layers` layers, each one of `Layer...`. Layer i gets
/// the first listed type whose FFN kind (`Layer::is_moe`) matches `config.is_moe_layer(i)`
/// (spec §1.3: dense FFN for the first `first_k_dense_replace` layers, MoE after). A model type
/// with only dense layers serves configs without experts, and so on; a config that needs a kind
/// the type lacks is an error at load time. The final norm is the first layer type's norm.
///
/// One forward step (`forward`) runs new tokens of several sequences (a batch of chunks of
/// different lengths: prefill chunks, single decode tokens, or both) through every layer over a
/// KV cache that follows the prepare / commit / rollback protocol of attention/kv_cache.hpp,
/// and writes logits for the last token of each chunk or for every token.
///
/// Shapes and dtypes: tokens are int32 ids in [0, vocab); activations FP32 `[T, hidden]`;
/// logits FP32 `[rows, vocab]`. The embedding table stays in the checkpoint (BF16, zero copy)
/// or is widened to FP32 when stored otherwise; the LM head is a `qmatrix<HeadFormat>`.
///
/// Errors: a token id outside the vocabulary, chunks whose token counts do not add up to the
/// tokens given, and every cache error (capacity, unknown sequence) throw `moela::error`
/// before any cache state changes (a failure inside a layer rolls the step back).

#include <memory>
#include <span>
#include <string>
#include <tuple>
#include <variant>
#include <vector>

#include "moela/core/minifloat.hpp"
#include "moela/io/checkpoint.hpp"
#include "moela/io/config.hpp"
#include "moela/io/weights.hpp"
#include "moela/model/layer.hpp"
#include "moela/ops/matmul.hpp"

namespace moela {

/// Which rows of logits a forward step produces.
enum class logits_rows {
  last,  ///< one row per chunk: its last token (what generation needs)
  all,   ///< one row per token (validation, scoring)
  none,  ///< no logits (cache warm-up)
};

/// The token embedding table [vocab, hidden]: borrowed BF16 rows from the checkpoint, or FP32.
class embedding {
 public:
  embedding() = default;
  explicit embedding(tensor<float, 2> table) : f32_(std::move(table)) {
    rows_ = f32_.extent(0);
    cols_ = f32_.extent(1);
  }
  explicit embedding(const_view<moela::bf16, 2> table) : bf16_(table), rows_(table.extent(0)), cols_(table.extent(1)) {}

  explicit embedding(tensor<moela::bf16, 2> table) : own_bf16_(std::move(table)) {
    bf16_ = own_bf16_.cview();
    rows_ = bf16_.extent(0);
    cols_ = bf16_.extent(1);
  }

  static embedding load(io::weight_loader& w, const io::model_config& c, const std::string& name) {
    if (w.is_random()) {
      const auto f = w.floats(name, c.vocab_size, c.hidden_size);
      tensor<moela::bf16, 2> b({c.vocab_size, c.hidden_size});
      for (index_t i = 0; i < f.size(); ++i) b.data()[i] = moela::bf16(f.data()[i]);
      return embedding(std::move(b));
    }
    const auto& e = w.source().expect(name, {c.vocab_size, c.hidden_size});
    if (e.type == io::dtype::bf16 && reinterpret_cast<std::uintptr_t>(e.data) % 2 == 0)
      return embedding(w.source().view<moela::bf16, 2>(name));
    return embedding(w.floats(name, c.vocab_size, c.hidden_size));
  }

  index_t vocab() const { return rows_; }
  index_t hidden() const { return cols_; }
  /// Bytes of the table (borrowed or owned).
  std::size_t bytes() const { return f32_.empty() ? static_cast<std::size_t>(rows_ * cols_) * 2 : f32_.bytes(); }
  bool borrowed() const { return f32_.empty() && own_bf16_.empty(); }

  /// Row `token` as FP32 into `out` [hidden].
  void lookup(index_t token, float* out) const {
    check(token >= 0 && token < rows_, "embedding: token id ", token, " is outside the vocabulary [0, ", rows_, ")");
    if (!f32_.empty()) {
      std::memcpy(out, f32_.data() + token * cols_, sizeof(float) * static_cast<std::size_t>(cols_));
    } else {
      const moela::bf16* r = &bf16_(token, 0);
      for (index_t j = 0; j < cols_; ++j) out[j] = static_cast<float>(r[j]);
    }
  }

 private:
  tensor<float, 2> f32_;
  tensor<moela::bf16, 2> own_bf16_;
  const_view<moela::bf16, 2> bf16_;
  index_t rows_ = 0, cols_ = 0;
};

namespace detail {
template <class... L>
struct first_of;
template <class L0, class... L>
struct first_of<L0, L...> {
  using type = L0;
};
}  // namespace detail

template <class Backend, class HeadFormat, class... Layers>
class model {
  static_assert(sizeof...(Layers) >= 1, "model: give at least one layer type");

 public:
  using backend = Backend;
  using head_format = HeadFormat;
  using layer_variant = std::variant<Layers...>;
  using norm_type = typename detail::first_of<Layers...>::type::norm_type;

  model() = default;

  /// Loads every tensor the config names from `ckpt` (see the class comment for layer types).
  /// The model keeps the checkpoint alive: weights used in place point into its mappings.
  static model load(const io::model_config& c, std::shared_ptr<const io::checkpoint> ckpt,
                    io::progress_bar* progress = nullptr) {
    check(ckpt != nullptr, "model::load: no checkpoint");
    io::weight_loader w(*ckpt, c.quantization.block_rows, c.quantization.block_cols, progress);
    model m = build(c, w);
    m.ckpt_ = ckpt;
    return m;
  }

  /// Builds every part through `w` (a checkpoint loader, or `io::random_weights`).
  static model build(const io::model_config& c, io::weight_loader& w) {
    model m;
    m.cfg_ = c;
    m.embed_ = embedding::load(w, c, "model.embed_tokens.weight");
    m.layers_.reserve(static_cast<std::size_t>(c.num_hidden_layers));
    for (index_t i = 0; i < c.num_hidden_layers; ++i) m.layers_.push_back(load_layer(w, c, i));
    m.norm_ = norm_type::load(w, c, "model.norm");
    const std::string head = c.tie_word_embeddings ? "model.embed_tokens.weight" : "lm_head.weight";
    m.head_ = w.template matrix<HeadFormat>(head, c.vocab_size, c.hidden_size);
    m.stats_ = w.stats();
    return m;
  }

  /// Assembles a model from parts built elsewhere (random weights in benchmarks, user code).
  model(io::model_config c, embedding e, std::vector<layer_variant> layers, norm_type norm, qmatrix<HeadFormat> head)
      : cfg_(std::move(c)), embed_(std::move(e)), layers_(std::move(layers)), norm_(std::move(norm)),
        head_(std::move(head)) {
    check(static_cast<index_t>(layers_.size()) == cfg_.num_hidden_layers, "model: ", layers_.size(),
          " layers given but the config has ", cfg_.num_hidden_layers);
    check(embed_.vocab() == cfg_.vocab_size && embed_.hidden() == cfg_.hidden_size, "model: embedding is [",
          embed_.vocab(), ", ", embed_.hidden(), "] but the config needs [", cfg_.vocab_size, ", ", cfg_.hidden_size,
          "]");
    check(head_.rows() == cfg_.vocab_size && head_.cols() == cfg_.hidden_size, "model: lm_head is [", head_.rows(),
          ", ", head_.cols(), "] but the config needs [", cfg_.vocab_size, ", ", cfg_.hidden_size, "]");
  }

  const io::model_config& config() const { return cfg_; }
  index_t num_layers() const { return static_cast<index_t>(layers_.size()); }
  const std::vector<layer_variant>& layers() const { return layers_; }
  std::vector<layer_variant>& layers() { return layers_; }
  const embedding& embed() const { return embed_; }
  const qmatrix<HeadFormat>& head() const { return head_; }
  /// What loading used in place and what it converted.
  const io::load_stats& load_stats() const { return stats_; }
  /// The checkpoint the weights come from (null for models assembled from parts).
  const io::checkpoint* checkpoint() const { return ckpt_.get(); }
  /// Bytes of the LM head weights.
  std::size_t head_bytes() const { return head_.bytes(); }

  /// Convenience generation for one prompt with a cache made for the call (see generate.hpp
  /// for the cache-reusing, batched and stats-returning forms): samples up to `max_new_tokens`
  /// tokens with `sampling`, stops at the config's EOS ids, calls `on_token(token)` for each
  /// (return false to stop) and returns the generated tokens. Errors as `moela::generate`:
  /// among them `max_new_tokens < 0` and prompt + max_new_tokens - 1 past the config's
  /// `max_position_embeddings`.
  template <class Sampling, class OnToken>
  std::vector<int> generate(const std::vector<int>& prompt, index_t max_new_tokens, const Sampling& sampling,
                            OnToken&& on_token) {
    using attention = typename detail::first_of<Layers...>::type::attention_type;
    using cache_type = attn::paged_cache<typename attention::cache_format>;
    check(max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", max_new_tokens);
    check(!prompt.empty(), "generate: prompt 0 is empty");
    const index_t limit = cfg_.max_position_embeddings, n = static_cast<index_t>(prompt.size());
    check(n <= limit && max_new_tokens - 1 <= limit - n, "generate: prompt 0 needs ", n, " + ", max_new_tokens,
          " - 1 positions but the model's max_position_embeddings is ", limit);
    const index_t need = n + std::max<index_t>(max_new_tokens - 1, 0);
    cache_type cache(attention::cache_layout(cfg_), (need + 63) / 64, 64, cfg_.max_position_embeddings);
    auto o = make_generate_options(*this, max_new_tokens, on_token);
    auto smp = make_sampler(*this, sampling);
    return generate_one(*this, cache, prompt, o, smp);
  }

  /// One forward step. `tokens` holds the new tokens of every chunk, concatenated in chunk
  /// order. Appends them to `cache` (committed on success) and writes logits into `logits`
  /// (resized: [chunks, vocab] for `last`, [tokens, vocab] for `all`).
  template <class Cache>
  void forward(Cache& cache, std::span<const step_chunk> chunks, std::span<const int> tokens, tensor<float, 2>& logits,
               logits_rows rows = logits_rows::last, const trace_fn& trace = {}) {
    const index_t T = static_cast<index_t>(tokens.size()), D = cfg_.hidden_size;
    index_t sum = 0;
    for (const auto& ch : chunks) {
      check(ch.tokens >= 1, "model::forward: chunk for sequence ", ch.seq, " has ", ch.tokens, " tokens");
      sum += ch.tokens;
    }
    check(sum == T, "model::forward: the chunks hold ", sum, " tokens but ", T, " token ids were given");
    check(T > 0, "model::forward: no tokens");
    for (index_t t = 0; t < T; ++t)
      check(tokens[static_cast<std::size_t>(t)] >= 0 && tokens[static_cast<std::size_t>(t)] < cfg_.vocab_size,
            "model::forward: token id ", tokens[static_cast<std::size_t>(t)], " at index ", t,
            " is outside the vocabulary [0, ", cfg_.vocab_size, ")");
    if (h_.extent(0) < T || h_.extent(1) != D) h_ = tensor<float, 2>({T, D});
    auto h = tensor_view<float, 2>(h_.data(), {T, D});
    for (index_t t = 0; t < T; ++t) embed_.lookup(tokens[static_cast<std::size_t>(t)], &h(t, 0));

    cache.prepare(chunks);
    try {
      for (index_t i = 0; i < num_layers(); ++i)
        std::visit([&](auto& layer) { layer.forward(h, cache, i, chunks, scratch_, trace); },
                   layers_[static_cast<std::size_t>(i)]);
    } catch (...) {
      cache.rollback();
      throw;
    }
    cache.commit();

    if (rows == logits_rows::none) return;
    const index_t R = rows == logits_rows::all ? T : static_cast<index_t>(chunks.size());
    if (normed_.extent(0) < R || normed_.extent(1) != D) normed_ = tensor<float, 2>({R, D});
    auto xn = tensor_view<float, 2>(normed_.data(), {R, D});
    if (rows == logits_rows::all) {
      norm_.forward(xn, h);
    } else {
      // gather the last row of every chunk, then normalise
      if (last_.extent(0) < R || last_.extent(1) != D) last_ = tensor<float, 2>({R, D});
      auto g = tensor_view<float, 2>(last_.data(), {R, D});
      index_t row = 0;
      for (std::size_t b = 0; b < chunks.size(); ++b) {
        row += chunks[b].tokens;
        std::memcpy(&g(static_cast<index_t>(b), 0), &h(row - 1, 0), sizeof(float) * static_cast<std::size_t>(D));
      }
      norm_.forward(xn, g);
    }
    if (trace) trace("final_hidden", xn);
    if (logits.extent(0) != R || logits.extent(1) != cfg_.vocab_size) logits = tensor<float, 2>({R, cfg_.vocab_size});
    matmul(logits.view(), xn, head_);
  }

 private:
  template <std::size_t I = 0>
  static layer_variant load_layer(io::weight_loader& w, const io::model_config& c, index_t i) {
    if constexpr (I == sizeof...(Layers)) {
      fail("model: config '", c.source, "' makes layer ", i, (c.is_moe_layer(i) ? " an MoE" : " a dense"),
           " layer, but the model type has no layer type with ", (c.is_moe_layer(i) ? "an MoE" : "a dense"), " FFN");
    } else {
      using L = std::variant_alternative_t<I, layer_variant>;
      if (L::is_moe == c.is_moe_layer(i)) return layer_variant(std::in_place_index<I>, L::load(w, c, i));
      return load_layer<I + 1>(w, c, i);
    }
  }

  std::shared_ptr<const io::checkpoint> ckpt_;
  io::model_config cfg_;
  embedding embed_;
  std::vector<layer_variant> layers_;
  norm_type norm_;
  qmatrix<HeadFormat> head_;
  io::load_stats stats_;
  layer_scratch scratch_;
  tensor<float, 2> h_, normed_, last_;
};

}  // namespace moela
