#pragma once
/// \file moela/attention/mla.hpp
/// `attn::mla<Backend, WeightFormat, CacheFormat>`: one Multi-head Latent Attention layer
/// (DeepSeek-V2/V3, spec §5), with a latent KV cache.
///
/// Construction: `mla(config, weights)`, where `config` is an `mla_config` (config.hpp; from a
/// Hugging Face config.json via `mla_config_from_hf`, mla_loader.hpp) and `weights` an
/// `mla_weights<WeightFormat>` filled from the checkpoint tensors (`load_mla_weights`, or by
/// hand: see the member comments for the HF names and shapes). Weights are taken by value.
///
/// Input and output: `x [T, hidden]` FP32 is the attention input (already `input_layernorm`ed),
/// the rows of all sequences of the step concatenated in `chunks` order; `out [T, hidden]` FP32
/// is the attention output after `o_proj` (before the residual add). Each new token of chunk
/// `c` sits at absolute position `cache.length(c.seq) + i`.
///
/// Math (FP32 activations, projections through `moela::matmul` on `qmatrix<WeightFormat>`):
///   q      = q_b(rmsnorm(q_a(x), q_a_norm))  or  q_proj(x)            [T, H, nope + rope]
///   q_pe   = rope(q[:, h, nope:]) (interleaved pairs, YaRN)
///   latent = kv_a(x) -> ckv = rmsnorm(latent[:, :kv_rank], kv_a_norm), kpe = rope(latent[:, kv_rank:])
///   cache <- (ckv, kpe) at the new positions (in CacheFormat)
///   naive:    k_nope | v = kv_b(ckv) per head for every cached token (the naive-mode cache,
///             rebuilt per call), scores = scale * (<q_nope, k_nope> + <q_pe, kpe>), through the
///             same flash kernel as a standard attention with H kv heads
///   absorbed: q_lat = q_nope . W_UK(h); scores = scale * (<q_lat, ckv> + <q_pe, kpe>);
///             o_lat = softmax . ckv; o = o_lat . W_UV(h)^T
///   out = o_proj(concat_h o)
/// Causal: the query at position p sees keys at positions <= p; scale = softmax_scale().
/// Both modes read the keys back from the cache, so they agree to FP32 rounding.
///
/// Absorbed mode multiplies, per head, by `W_UK(h)^T [kv_rank, nope]` and `W_UV(h) [v, kv_rank]`.
/// `W_UV(h)` is rows `[h (nope + v) + nope, (h + 1)(nope + v))` of `kv_b_proj`: read in place
/// (`row_slice`, no copy, in the weight's format, fp32 activations) when the format's scale
/// block rows divide `nope` and `nope + v` (every DeepSeek config), else copied once to FP32.
/// `W_UK(h)^T` is a transpose and is built once from the dequantised `kv_b_proj`: in
/// `WeightFormat` when it is dense (exact), else in FP32 (`absorb_format`; V3: 32 MiB per
/// layer). Both modes so use identical weight values.
///
/// Errors (moela::error, nothing written to the cache): wrong shapes, chunks that do not match
/// the cache's prepared step, a position at or past `config.rope.max_positions`.
/// Threading: the kernels use the moela thread pool; one layer object must not run two forward
/// calls at once. The temporaries that grow with a step's rows live in the calling thread's
/// scratch, shared by every `mla` on that thread (moela/core/workspace.hpp), so a model's layers
/// hold one set between them; steady-state calls do not allocate in the attention kernel.

#include <algorithm>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "moela/attention/config.hpp"
#include "moela/attention/flash.hpp"
#include "moela/attention/kv_cache.hpp"
#include "moela/attention/rope.hpp"
#include "moela/backend/tags.hpp"
#include "moela/core/workspace.hpp"
#include "moela/ops/matmul.hpp"
#include "moela/ops/rmsnorm.hpp"

namespace moela::attn {

/// How the attention over the cache is computed.
enum class mla_mode {
  absorbed,  ///< attend over the latent directly (W_UK folded into q, W_UV into the output)
  naive      ///< up-project the cached latents to per-head K and V (reference)
};

inline const char* mode_name(mla_mode m) { return m == mla_mode::absorbed ? "absorbed" : "naive"; }

/// The weights of one MLA layer (HF names `model.layers.N.self_attn.*`).
template <class Format>
struct mla_weights {
  qmatrix<Format> q_proj;     ///< `q_proj` [H*(nope+rope), hidden]; only when q_rank == 0
  qmatrix<Format> q_a_proj;   ///< `q_a_proj` [q_rank, hidden]; only when q_rank > 0
  tensor<float, 1> q_a_norm;  ///< `q_a_layernorm` [q_rank]; only when q_rank > 0
  qmatrix<Format> q_b_proj;   ///< `q_b_proj` [H*(nope+rope), q_rank]; per head [nope | rope]
  qmatrix<Format> kv_a_proj;  ///< `kv_a_proj_with_mqa` [kv_rank+rope, hidden]; [latent | rope]
  tensor<float, 1> kv_a_norm; ///< `kv_a_layernorm` [kv_rank]
  qmatrix<Format> kv_b_proj;  ///< `kv_b_proj` [H*(nope+v), kv_rank]; per head [nope | v]
  qmatrix<Format> o_proj;     ///< `o_proj` [hidden, H*v]
};

namespace detail {
/// One sequence's FP32 records in a dense buffer, seen through the cache interface: `committed`
/// old tokens then `pending` new ones (the naive mode runs the shared kernel over it).
class dense_records {
 public:
  using format = cache_f32;
  dense_records(float* data, cache_layout lay, index_t committed, index_t pending)
      : data_(data), lay_(lay), len_(committed), pend_(pending) {}
  const cache_layout& layout() const { return lay_; }
  std::byte* record(index_t, index_t, index_t pos) { return reinterpret_cast<std::byte*>(data_ + pos * lay_.width()); }
  const std::byte* record(index_t, index_t, index_t pos) const {
    return reinterpret_cast<const std::byte*>(data_ + pos * lay_.width());
  }
  bool live(index_t s) const { return s == 0; }
  index_t length(index_t) const { return len_; }
  index_t pending(index_t) const { return pend_; }
  index_t max_positions() const { return len_ + pend_; }
  void prepare(std::span<const seq_chunk>) {}
  void commit() {}
  void rollback() {}

 private:
  float* data_;
  cache_layout lay_;
  index_t len_, pend_;
};

inline void check_matrix(const char* name, index_t rows, index_t cols, index_t want_r, index_t want_c) {
  check(rows == want_r && cols == want_c, "mla: weight ", name, " is [", rows, ", ", cols, "] but the config needs [",
        want_r, ", ", want_c, "]");
}
using moela::detail::scratch_view;
/// The step's temporaries of every `attn::mla` on one thread (moela/core/workspace.hpp).
struct mla_scratch {
  std::vector<float> q, cq, lat, o, qa, ol, rec, ckv, kv, full;
  std::size_t bytes() const { return moela::detail::capacity_bytes(q, cq, lat, o, qa, ol, rec, ckv, kv, full); }
};
inline mla_scratch& scratch() { return moela::detail::thread_workspace<mla_scratch>(); }
}  // namespace detail

/// Format of the per-head absorbed matrices: the weight format itself for dense formats, FP32
/// otherwise (the exact dequantised values, so both modes see the same weights).
template <class WeightFormat>
using absorb_format =
    std::conditional_t<WeightFormat::kind == quant::format_kind::dense, WeightFormat, quant::f32>;

template <class Backend, class WeightFormat, class CacheFormat = cache_bf16>
class mla {
  static_assert(cpu_backend<Backend>, "attn::mla: only the CPU backend is implemented");
  static_assert(cache_format<CacheFormat>);

 public:
  using backend = Backend;
  using arch = typename Backend::arch;
  using weight_format = WeightFormat;
  using cache_format_type = CacheFormat;
  using absorb_matrix = qmatrix<absorb_format<WeightFormat>>;

  /// Validates `cfg` and every weight shape against it; builds the RoPE table for
  /// `cfg.rope.max_positions` positions and the absorbed per-head matrices.
  mla(const mla_config& cfg, mla_weights<WeightFormat> w) : cfg_(cfg), w_(std::move(w)) {
    cfg_.validate();
    const index_t H = cfg_.heads, qk = cfg_.qk_head_dim();
    if (cfg_.q_rank > 0) {
      detail::check_matrix("q_a_proj", w_.q_a_proj.rows(), w_.q_a_proj.cols(), cfg_.q_rank, cfg_.hidden);
      check(w_.q_a_norm.size() == cfg_.q_rank, "mla: q_a_layernorm has ", w_.q_a_norm.size(), " values, q_rank is ",
            cfg_.q_rank);
      detail::check_matrix("q_b_proj", w_.q_b_proj.rows(), w_.q_b_proj.cols(), H * qk, cfg_.q_rank);
    } else {
      detail::check_matrix("q_proj", w_.q_proj.rows(), w_.q_proj.cols(), H * qk, cfg_.hidden);
    }
    detail::check_matrix("kv_a_proj_with_mqa", w_.kv_a_proj.rows(), w_.kv_a_proj.cols(), cfg_.latent_width(),
                         cfg_.hidden);
    check(w_.kv_a_norm.size() == cfg_.kv_rank, "mla: kv_a_layernorm has ", w_.kv_a_norm.size(),
          " values, kv_rank is ", cfg_.kv_rank);
    detail::check_matrix("kv_b_proj", w_.kv_b_proj.rows(), w_.kv_b_proj.cols(), H * (cfg_.nope_dim + cfg_.v_dim),
                         cfg_.kv_rank);
    detail::check_matrix("o_proj", w_.o_proj.rows(), w_.o_proj.cols(), cfg_.hidden, H * cfg_.v_dim);
    rope_ptr_ = shared_rope_table(cfg_.rope);
    scale_ = static_cast<float>(cfg_.softmax_scale());
    // Absorbed matrices.
    const tensor<float, 2> kvb = w_.kv_b_proj.dequantize();
    const index_t per = cfg_.nope_dim + cfg_.v_dim;
    tensor<float, 2> ukt({cfg_.kv_rank, cfg_.nope_dim}), uv({wuv_in_place() ? 0 : cfg_.v_dim, cfg_.kv_rank});
    wuk_t_.reserve(static_cast<std::size_t>(H));
    wuv_.reserve(static_cast<std::size_t>(H));
    for (index_t h = 0; h < H; ++h) {
      for (index_t n = 0; n < cfg_.nope_dim; ++n)
        for (index_t c = 0; c < cfg_.kv_rank; ++c) ukt(c, n) = kvb(h * per + n, c);
      wuk_t_.push_back(absorb_matrix::quantize(ukt.cview()));
      if (wuv_in_place()) continue;
      for (index_t j = 0; j < cfg_.v_dim; ++j)
        for (index_t c = 0; c < cfg_.kv_rank; ++c) uv(j, c) = kvb(h * per + cfg_.nope_dim + j, c);
      wuv_.push_back(absorb_matrix::quantize(uv.cview()));
    }
  }

  /// True when absorbed mode reads `W_UV(h)` in place from `kv_b_proj` (see the file comment).
  bool wuv_in_place() const {
    constexpr index_t br = slice_rows_of<WeightFormat>;
    return cfg_.nope_dim % br == 0 && (cfg_.nope_dim + cfg_.v_dim) % br == 0;
  }

  /// Weight bytes absorbed mode reads per step besides the projections: every `W_UK(h)^T` and
  /// `W_UV(h)` (in place: the `v` rows of each head in `kv_b_proj`).
  std::size_t absorbed_bytes() const {
    std::size_t b = 0;
    for (const auto& m : wuk_t_) b += m.bytes();
    for (const auto& m : wuv_) b += m.bytes();
    if (wuv_in_place())
      for (index_t h = 0; h < cfg_.heads; ++h) b += wuv_slice(h).bytes();
    return b;
  }

  const mla_config& config() const { return cfg_; }
  const mla_weights<WeightFormat>& weights() const { return w_; }
  const rope_table& rope() const { return *rope_ptr_; }
  float softmax_scale() const { return scale_; }
  /// Bytes per token per layer of this layer's cache format (the latent record).
  std::size_t cache_bytes_per_token() const { return CacheFormat::record_bytes(cfg_.kv_rank, cfg_.rope_dim); }

  /// One step for a single-layer cache: `cache.prepare(chunks)`, `forward_layer(cache, 0, ...)`,
  /// `cache.commit()`; on any error the step is rolled back and the error rethrown.
  template <kv_cache Cache>
  void forward(Cache& cache, std::span<const seq_chunk> chunks, const_view<float, 2> x, tensor_view<float, 2> out,
               mla_mode mode = mla_mode::absorbed) {
    cache.prepare(chunks);
    try {
      forward_layer(cache, 0, chunks, x, out, mode);
    } catch (...) {
      cache.rollback();
      throw;
    }
    cache.commit();
  }

  /// Layer `layer` of a step already `prepare`d on `cache` (model use: prepare once, run every
  /// layer, commit once).
  template <kv_cache Cache>
  void forward_layer(Cache& cache, index_t layer, std::span<const seq_chunk> chunks, const_view<float, 2> x,
                     tensor_view<float, 2> out, mla_mode mode = mla_mode::absorbed) {
    static_assert(std::is_same_v<typename Cache::format, CacheFormat>,
                  "attn::mla: the cache's format differs from the layer's CacheFormat");
    const index_t T = x.extent(0);
    check_step(cache, layer, chunks, T);
    check(x.extent(1) == cfg_.hidden, "mla::forward: x is ", to_string(x.shape()), " but hidden is ", cfg_.hidden);
    check(out.extent(0) == T && out.extent(1) == cfg_.hidden, "mla::forward: out is ", to_string(out.shape()),
          " but [", T, ", ", cfg_.hidden, "] was expected");
    const index_t H = cfg_.heads, qk = cfg_.qk_head_dim(), W = cfg_.latent_width();
    // Positions.
    pos_.resize(static_cast<std::size_t>(T));
    {
      index_t t = 0;
      for (const auto& c : chunks)
        for (index_t i = 0; i < c.tokens; ++i) pos_[static_cast<std::size_t>(t++)] = cache.length(c.seq) + i;
    }
    auto& sc = detail::scratch();
    auto q = detail::scratch_view(sc.q, T, H * qk);
    project_q(x, pos_, q);
    auto lat = detail::scratch_view(sc.lat, T, W);
    project_kv(x, pos_, lat);
    {
      index_t t = 0;
      for (const auto& c : chunks)
        for (index_t i = 0; i < c.tokens; ++i, ++t)
          write_record(cache, layer, c.seq, cache.length(c.seq) + i, lat.data() + t * W, lat.data() + t * W + cfg_.kv_rank);
    }
    auto o = detail::scratch_view(sc.o, T, H * cfg_.v_dim);
    attention(cache, layer, chunks, q, o, mode);
    matmul(out, const_view<float, 2>(o), w_.o_proj);
  }

  /// The attention proper, between the projections: queries `q [T, H*(nope+rope)]` (RoPE
  /// applied, as `project_q` writes them) attend over the prepared cache (the new records
  /// already written) and give the per-head outputs `o [T, H*v]` (heads concatenated, the
  /// input of `o_proj`).
  template <kv_cache Cache>
  void attention(const Cache& cache, index_t layer, std::span<const seq_chunk> chunks, tensor_view<float, 2> q,
                 tensor_view<float, 2> o, mla_mode mode = mla_mode::absorbed) {
    const index_t T = q.extent(0);
    check_step(cache, layer, chunks, T);
    check(q.extent(1) == cfg_.q_width() && q.is_contiguous(), "mla::attention: q is ", to_string(q.shape()),
          ", expected contiguous [", T, ", ", cfg_.q_width(), "]");
    check(o.extent(0) == T && o.extent(1) == cfg_.heads * cfg_.v_dim && o.is_contiguous(), "mla::attention: o is ",
          to_string(o.shape()), ", expected contiguous [", T, ", ", cfg_.heads * cfg_.v_dim, "]");
    if (mode == mla_mode::absorbed)
      attend_absorbed(cache, layer, chunks, q, o);
    else
      attend_naive(cache, layer, chunks, q, o);
  }

  /// Queries with RoPE applied: `q [T, H*(nope+rope)]`, per head `[q_nope | q_pe]`.
  /// `pos[t]` is token t's absolute position (checked against the RoPE table).
  void project_q(const_view<float, 2> x, std::span<const index_t> pos, tensor_view<float, 2> q) {
    const index_t T = x.extent(0), H = cfg_.heads, qk = cfg_.qk_head_dim();
    check_positions("mla::project_q", pos, T);
    check(q.extent(0) == T && q.extent(1) == H * qk && q.is_contiguous(), "mla::project_q: q is ",
          to_string(q.shape()), ", expected contiguous [", T, ", ", H * qk, "]");
    if (cfg_.q_rank > 0) {
      auto cq = detail::scratch_view(detail::scratch().cq, T, cfg_.q_rank);
      matmul(cq, x, w_.q_a_proj);
      rmsnorm<arch>(cq, w_.q_a_norm.cview(), cfg_.rms_eps);
      matmul(q, const_view<float, 2>(cq), w_.q_b_proj);
    } else {
      matmul(q, x, w_.q_proj);
    }
    for (index_t t = 0; t < T; ++t)
      for (index_t h = 0; h < H; ++h) rope_ptr_->rotate(q.data() + (t * H + h) * qk + cfg_.nope_dim, pos[static_cast<std::size_t>(t)]);
  }

  /// Cache records: `latent [T, kv_rank + rope]` = `[rmsnorm(ckv) | rope(kpe)]`.
  void project_kv(const_view<float, 2> x, std::span<const index_t> pos, tensor_view<float, 2> latent) {
    const index_t T = x.extent(0), W = cfg_.latent_width();
    check_positions("mla::project_kv", pos, T);
    check(latent.extent(0) == T && latent.extent(1) == W && latent.is_contiguous(), "mla::project_kv: latent is ",
          to_string(latent.shape()), ", expected contiguous [", T, ", ", W, "]");
    matmul(latent, x, w_.kv_a_proj);
    rmsnorm<arch>(latent.slice(1, 0, cfg_.kv_rank), w_.kv_a_norm.cview(), cfg_.rms_eps);
    for (index_t t = 0; t < T; ++t) rope_ptr_->rotate(latent.data() + t * W + cfg_.kv_rank, pos[static_cast<std::size_t>(t)]);
  }

 private:
  template <class Cache>
  void check_step(const Cache& cache, index_t layer, std::span<const seq_chunk> chunks, index_t T) const {
    check(layer >= 0 && layer < cache.layout().layers, "mla::forward: layer ", layer, " outside the cache's [0, ",
          cache.layout().layers, ")");
    check(cache.layout().a == cfg_.kv_rank && cache.layout().b == cfg_.rope_dim, "mla::forward: cache records are [",
          cache.layout().a, " | ", cache.layout().b, "] but the layer needs [", cfg_.kv_rank, " | ", cfg_.rope_dim, "]");
    index_t total = 0;
    for (const auto& c : chunks) {
      check(cache.live(c.seq) && cache.pending(c.seq) == c.tokens && c.tokens > 0, "mla::forward: sequence ", c.seq,
            " is not prepared in the cache for ", c.tokens, " new tokens (call cache.prepare first)");
      check(cache.length(c.seq) + c.tokens <= rope_ptr_->positions(), "mla::forward: sequence ", c.seq, " would reach position ",
            cache.length(c.seq) + c.tokens - 1, " but max_position_embeddings is ", rope_ptr_->positions());
      total += c.tokens;
    }
    check(total == T, "mla::forward: the chunks hold ", total, " tokens but x has ", T, " rows");
  }
  void check_positions(const char* who, std::span<const index_t> pos, index_t T) const {
    check(static_cast<index_t>(pos.size()) == T, who, ": ", pos.size(), " positions for ", T, " rows");
    for (auto p : pos)
      check(p >= 0 && p < rope_ptr_->positions(), who, ": position ", p, " is outside [0, ", rope_ptr_->positions(), ")");
  }

  template <class Cache>
  void attend_absorbed(const Cache& cache, index_t layer, std::span<const seq_chunk> chunks, tensor_view<float, 2> q,
                       tensor_view<float, 2> o) {
    const index_t T = q.extent(0), H = cfg_.heads, qk = cfg_.qk_head_dim(), R = cfg_.kv_rank, W = cfg_.latent_width();
    const index_t nope = cfg_.nope_dim, v = cfg_.v_dim;
    auto& sc = detail::scratch();
    auto qa = detail::scratch_view(sc.qa, T * H, W);
    auto ol = detail::scratch_view(sc.ol, T * H, R);
    // q_lat[t, h] = W_UK(h)^T q_nope[t, h]; q_pe copied behind it.
    parallel_for(H, [&](index_t h0, index_t h1) {
      thread_local std::vector<float> a, b;
      auto xin = detail::scratch_view(a, T, nope);
      auto y = detail::scratch_view(b, T, R);
      for (index_t h = h0; h < h1; ++h) {
        for (index_t t = 0; t < T; ++t) std::memcpy(&xin(t, 0), q.data() + (t * H + h) * qk, sizeof(float) * nope);
        matmul(y, const_view<float, 2>(xin), wuk_t_[static_cast<std::size_t>(h)]);
        for (index_t t = 0; t < T; ++t) {
          float* dst = qa.data() + (t * H + h) * W;
          std::memcpy(dst, &y(t, 0), sizeof(float) * R);
          std::memcpy(dst + R, q.data() + (t * H + h) * qk + nope, sizeof(float) * cfg_.rope_dim);
        }
      }
    });
    attend_shape sh;
    sh.heads = H; sh.kv_heads = 1; sh.dk = W; sh.dv = R; sh.q_ld = W; sh.o_ld = R; sh.scale = scale_;
    attend<arch>(cache, layer, chunks, sh, qa.data(), ol.data(), nullptr, work_);
    // o[t, h] = W_UV(h) o_lat[t, h].
    const bool in_place = wuv_in_place();
    parallel_for(H, [&](index_t h0, index_t h1) {
      thread_local std::vector<float> a, b;
      auto xin = detail::scratch_view(a, T, R);
      auto y = detail::scratch_view(b, T, v);
      for (index_t h = h0; h < h1; ++h) {
        for (index_t t = 0; t < T; ++t) std::memcpy(&xin(t, 0), ol.data() + (t * H + h) * R, sizeof(float) * R);
        if (in_place)
          matmul(y, const_view<float, 2>(xin), wuv_slice(h), quant::mode::fast{});
        else
          matmul(y, const_view<float, 2>(xin), wuv_[static_cast<std::size_t>(h)]);
        for (index_t t = 0; t < T; ++t) std::memcpy(o.data() + t * H * v + h * v, &y(t, 0), sizeof(float) * v);
      }
    });
  }

  /// `W_UV(h)` in place: rows [h (nope + v) + nope, (h + 1)(nope + v)) of kv_b_proj.
  qmatrix<WeightFormat> wuv_slice(index_t h) const {
    const index_t per = cfg_.nope_dim + cfg_.v_dim;
    return row_slice(w_.kv_b_proj, h * per + cfg_.nope_dim, (h + 1) * per);
  }

  template <class Cache>
  void attend_naive(const Cache& cache, index_t layer, std::span<const seq_chunk> chunks, tensor_view<float, 2> q,
                    tensor_view<float, 2> o) {
    const index_t H = cfg_.heads, qk = cfg_.qk_head_dim(), R = cfg_.kv_rank, W = cfg_.latent_width();
    const index_t nope = cfg_.nope_dim, v = cfg_.v_dim, per = nope + v, rd = cfg_.rope_dim;
    const index_t KW = H * qk + H * v;  // one up-projected record: K of every head, then V
    auto& sc = detail::scratch();
    index_t tok0 = 0;
    for (const auto& c : chunks) {
      const index_t n = cache.length(c.seq) + c.tokens, first = cache.length(c.seq);
      auto rec = detail::scratch_view(sc.rec, n, W);
      auto ckv = detail::scratch_view(sc.ckv, n, R);
      parallel_for(n, [&](index_t t0, index_t t1) {
        for (index_t t = t0; t < t1; ++t) {
          CacheFormat::template decode<arch>(cache.record(layer, c.seq, t), R, rd, rec.data() + t * W);
          std::memcpy(&ckv(t, 0), rec.data() + t * W, sizeof(float) * R);
        }
      });
      // k_nope | v for every head and key: the naive-mode cache, rebuilt from the latent.
      auto kv = detail::scratch_view(sc.kv, n, H * per);
      matmul(kv, const_view<float, 2>(ckv), w_.kv_b_proj);
      auto full = detail::scratch_view(sc.full, n, KW);
      parallel_for(n, [&](index_t t0, index_t t1) {
        for (index_t t = t0; t < t1; ++t)
          for (index_t h = 0; h < H; ++h) {
            float* k = full.data() + t * KW + h * qk;
            std::memcpy(k, kv.data() + t * H * per + h * per, sizeof(float) * nope);
            std::memcpy(k + nope, rec.data() + t * W + R, sizeof(float) * rd);
            std::memcpy(full.data() + t * KW + H * qk + h * v, kv.data() + t * H * per + h * per + nope,
                        sizeof(float) * v);
          }
      });
      // Standard attention (H kv heads of width qk, values of width v) with the shared kernel.
      detail::dense_records view(full.data(), {KW, 0, 1}, first, c.tokens);
      const seq_chunk one{0, c.tokens};
      attend_shape sh;
      sh.heads = H; sh.kv_heads = H; sh.dk = qk; sh.dv = v;
      sh.key_offset = 0; sh.key_step = qk; sh.value_offset = H * qk; sh.value_step = v;
      sh.q_ld = qk; sh.o_ld = v; sh.scale = scale_;
      attend<arch>(view, 0, std::span(&one, 1), sh, q.data() + tok0 * H * qk, o.data() + tok0 * H * v, nullptr, work_);
      tok0 += c.tokens;
    }
  }

  mla_config cfg_;
  mla_weights<WeightFormat> w_;
  std::shared_ptr<const rope_table> rope_ptr_;
  float scale_ = 1.f;
  std::vector<absorb_matrix> wuk_t_, wuv_;
  // Workspaces (grow only).
  std::vector<index_t> pos_;
  attend_work work_;  // the temporaries that grow with a step's rows: detail::scratch()
};

}  // namespace moela::attn

namespace moela {
/// `moela::mla<Backend, WeightFormat, CacheFormat>`: see attn::mla.
template <class Backend, class WeightFormat, class CacheFormat = attn::cache_bf16>
using mla = attn::mla<Backend, WeightFormat, CacheFormat>;
}  // namespace moela
