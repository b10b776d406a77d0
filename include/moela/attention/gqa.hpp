#pragma once
/// \file moela/attention/gqa.hpp
/// `attn::gqa<Backend, WeightFormat, CacheFormat>`: standard multi-head attention with grouped
/// key/value heads (MHA when kv_heads == heads, MQA when kv_heads == 1), built from the same
/// pieces as MLA: the KV caches of kv_cache.hpp (records `[K (kv_heads x head_dim) | V (same)]`,
/// part B empty), the flash kernel of flash.hpp, `rope_table`, `moela::matmul`. It lets users
/// compare MLA with a conventional cache of the same heads, measured rather than claimed.
///
/// Math: `q = x W_q^T [T, H, d]`, `k = x W_k^T`, `v = x W_v^T [T, KV, d]`; RoPE on the first
/// `rope.dim` dims of every q and k head (pairing: `interleaved` as DeepSeek, or `half` as
/// NeoX/Llama); query head h uses kv head `h / (H / KV)`; causal softmax with scale
/// `head_dim^-0.5`; `out = concat_h(o) W_o^T`. No biases.
/// Shapes: x, out `[T, hidden]` FP32, rows of the step's chunks concatenated (as attn::mla).
/// Weights (`gqa_weights`): q_proj `[H*d, hidden]`, k_proj and v_proj `[KV*d, hidden]`, o_proj
/// `[hidden, H*d]`. Errors as attn::mla.

#include <cmath>
#include <span>
#include <vector>

#include "moela/attention/flash.hpp"
#include "moela/attention/kv_cache.hpp"
#include "moela/attention/rope.hpp"
#include "moela/backend/tags.hpp"
#include "moela/core/workspace.hpp"
#include "moela/ops/matmul.hpp"

namespace moela::attn {

/// Which dims RoPE rotates together: (2i, 2i+1) as DeepSeek, or (i, i + dim/2) as NeoX/Llama.
enum class rope_pairing { interleaved, half };

/// The shape of a gqa layer. `validate()` throws moela::error naming the field at fault.
struct gqa_config {
  index_t hidden = 0, heads = 0, kv_heads = 0, head_dim = 0;
  rope_config rope{};  ///< rope.dim <= head_dim (partial rotary allowed)
  rope_pairing pairing = rope_pairing::half;

  void validate() const {
    check(hidden > 0 && heads > 0 && kv_heads > 0 && head_dim > 0, "gqa_config: sizes must be positive");
    check(heads % kv_heads == 0, "gqa_config: heads (", heads, ") must be a multiple of kv_heads (", kv_heads, ")");
    check(rope.dim <= head_dim, "gqa_config: rope.dim (", rope.dim, ") exceeds head_dim (", head_dim, ")");
    check(head_dim % 2 == 0, "gqa_config: head_dim must be even");
    rope.validate();
  }
  /// Cache layout: part A = K and V of every kv head.
  cache_layout layout(index_t layers = 1) const { return {2 * kv_heads * head_dim, 0, layers}; }
};

/// The four projections of a gqa layer (shapes in the file comment), any weight format.
template <class Format>
struct gqa_weights {
  qmatrix<Format> q_proj, k_proj, v_proj, o_proj;
};

/// A grouped-query attention layer over a KV cache of `CacheFormat` records (see the file
/// comment). One instance per layer; one call at a time.
template <class Backend, class WeightFormat, class CacheFormat = cache_bf16>
class gqa {
  static_assert(cpu_backend<Backend>, "attn::gqa: only the CPU backend is implemented");

 public:
  using arch = typename Backend::arch;

  /// Takes the weights; throws moela::error for an invalid config or a weight of the wrong shape.
  gqa(const gqa_config& cfg, gqa_weights<WeightFormat> w) : cfg_(cfg), w_(std::move(w)) {
    cfg_.validate();
    const index_t H = cfg_.heads, KV = cfg_.kv_heads, d = cfg_.head_dim;
    auto chk = [](const char* n, const auto& m, index_t r, index_t c) {
      check(m.rows() == r && m.cols() == c, "gqa: weight ", n, " is [", m.rows(), ", ", m.cols(), "] but [", r, ", ",
            c, "] is needed");
    };
    chk("q_proj", w_.q_proj, H * d, cfg_.hidden);
    chk("k_proj", w_.k_proj, KV * d, cfg_.hidden);
    chk("v_proj", w_.v_proj, KV * d, cfg_.hidden);
    chk("o_proj", w_.o_proj, cfg_.hidden, H * d);
    rope_ptr_ = shared_rope_table(cfg_.rope);
  }

  const gqa_config& config() const { return cfg_; }
  std::size_t cache_bytes_per_token() const { return CacheFormat::record_bytes(2 * cfg_.kv_heads * cfg_.head_dim, 0); }

  /// One step of a single-layer model: prepares the cache for `chunks`, runs the layer
  /// (forward_layer with layer 0) and commits, or rolls back and rethrows on error.
  template <kv_cache Cache>
  void forward(Cache& cache, std::span<const seq_chunk> chunks, const_view<float, 2> x, tensor_view<float, 2> out) {
    cache.prepare(chunks);
    try {
      forward_layer(cache, 0, chunks, x, out);
    } catch (...) {
      cache.rollback();
      throw;
    }
    cache.commit();
  }

  /// `out [T, hidden]` = attention of `x [T, hidden]` (the chunks' new tokens, concatenated)
  /// for cache layer `layer`, inside a step the caller prepared: writes the new tokens' K and V
  /// records, attends causally over each sequence's cached and new tokens. Errors
  /// (moela::error): a cache layout or layer that does not fit, shapes, chunks that do not
  /// match the step or pass the RoPE table's positions.
  template <kv_cache Cache>
  void forward_layer(Cache& cache, index_t layer, std::span<const seq_chunk> chunks, const_view<float, 2> x,
                     tensor_view<float, 2> out) {
    static_assert(std::is_same_v<typename Cache::format, CacheFormat>, "attn::gqa: cache format mismatch");
    const index_t T = x.extent(0), H = cfg_.heads, KV = cfg_.kv_heads, d = cfg_.head_dim;
    check(cache.layout().a == 2 * KV * d && cache.layout().b == 0, "gqa::forward: cache records are [",
          cache.layout().a, " | ", cache.layout().b, "] but the layer needs [", 2 * KV * d, " | 0]");
    check(layer >= 0 && layer < cache.layout().layers, "gqa::forward: layer ", layer, " outside the cache");
    check(x.extent(1) == cfg_.hidden && out.extent(0) == T && out.extent(1) == cfg_.hidden,
          "gqa::forward: x is ", to_string(x.shape()), ", out is ", to_string(out.shape()), ", hidden is ", cfg_.hidden);
    index_t total = 0;
    for (const auto& c : chunks) {
      check(cache.live(c.seq) && cache.pending(c.seq) == c.tokens && c.tokens > 0, "gqa::forward: sequence ", c.seq,
            " is not prepared for ", c.tokens, " new tokens");
      check(cache.length(c.seq) + c.tokens <= rope_ptr_->positions(), "gqa::forward: sequence ", c.seq,
            " would reach position ", cache.length(c.seq) + c.tokens - 1, " but max positions is ", rope_ptr_->positions());
      total += c.tokens;
    }
    check(total == T, "gqa::forward: the chunks hold ", total, " tokens but x has ", T, " rows");
    auto& sc = moela::detail::thread_workspace<scratch>();
    auto q = moela::detail::scratch_view(sc.q, T, H * d);
    auto kv = moela::detail::scratch_view(sc.kv, T, 2 * KV * d);
    matmul(q, x, w_.q_proj);
    matmul(kv.slice(1, 0, KV * d), x, w_.k_proj);
    matmul(kv.slice(1, KV * d, 2 * KV * d), x, w_.v_proj);
    index_t t = 0;
    for (const auto& c : chunks)
      for (index_t i = 0; i < c.tokens; ++i, ++t) {
        const index_t p = cache.length(c.seq) + i;
        for (index_t h = 0; h < H; ++h) rot(q.data() + (t * H + h) * d, p);
        for (index_t g = 0; g < KV; ++g) rot(kv.data() + t * 2 * KV * d + g * d, p);
        write_record(cache, layer, c.seq, p, kv.data() + t * 2 * KV * d, nullptr);
      }
    attend_shape sh;
    sh.heads = H; sh.kv_heads = KV; sh.dk = d; sh.dv = d;
    sh.key_offset = 0; sh.key_step = d; sh.value_offset = KV * d; sh.value_step = d;
    sh.q_ld = d; sh.o_ld = d; sh.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(d)));
    auto o = moela::detail::scratch_view(sc.o, T, H * d);
    attend<arch>(cache, layer, chunks, sh, q.data(), o.data(), nullptr, work_);
    matmul(out, const_view<float, 2>(o), w_.o_proj);
  }

 private:
  void rot(float* u, index_t p) const {
    if (cfg_.pairing == rope_pairing::interleaved) rope_ptr_->rotate(u, p);
    else rope_ptr_->rotate_half(u, p);
  }
  /// The step's temporaries, shared by every gqa on the calling thread (core/workspace.hpp).
  struct scratch {
    std::vector<float> q, kv, o;
    std::size_t bytes() const { return moela::detail::capacity_bytes(q, kv, o); }
  };
  gqa_config cfg_;
  gqa_weights<WeightFormat> w_;
  std::shared_ptr<const rope_table> rope_ptr_;
  attend_work work_;
};

}  // namespace moela::attn
