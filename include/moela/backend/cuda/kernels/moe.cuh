#pragma once
/// \file moela/backend/cuda/kernels/moe.cuh
/// The MoE layer on the GPU: router, dispatch (tokens sorted by expert), grouped expert
/// SwiGLU GEMMs, and combine, as overloads on the `moela::cuda<SM>` backend tag.
///
///  - `route(cuda, ids[T, k], weights[T, k], logits[T, E], bias[E] or empty, params)`: spec
///    §6.2 in fp32 (`gpu::router_params_of(moe_config)` gives the params of a CPU config) (tiles/routing.hpp, one thread per token; the exact function the host tests
///    check). Bias selects only; weights come from the unbiased scores.
///  - `moe_plan`: device buffers describing one dispatch: `offsets[E + 1]` (rows of expert e
///    are `[offsets[e], offsets[e+1])` of the sorted buffer), `slot[T, k]` (the sorted row of
///    token t's j-th expert) and the row-tile list of the grouped GEMM.
///    `plan_dispatch(cuda, plan, ids)` builds it (counting sort; rows of one expert may come
///    in any order, which does not change any result: each row is computed independently).
///  - `dispatch(cuda, xs[T*k, D], x[T, D], plan)`: gathers token rows into expert order.
///  - `grouped_matmul(cuda, ys[R, N], xs[R, K], w (E experts), plan, mode)`: each expert's rows
///    times that expert's weights (any weight format of matmul.cuh; `quant::mode::faithful`
///    quantizes FP8 activations per 1x128 as DeepSeek's W8A8 path, `fast` is the default).
///  - `combine(cuda, y[T, D], ys[T*k, D], weights[T, k], plan)`:
///    `y[t] = Σ_j weights[t, j] · ys[slot[t, j]]` in fp32, j ascending.
///  - `moe_experts(cuda, y, x, ids, weights, w1, w3, w2, plan, mode, ...)`: the whole routed part,
///    `Σ_j w_j · W2_e (silu(W1_e x) ⊙ W3_e x)`. The shared expert is an ordinary dense SwiGLU
///    (matmul + swiglu) added by the caller.

#include <cstdint>

#include "moela/backend/cuda/kernels/common.cuh"
#include "moela/backend/cuda/kernels/elementwise.cuh"
#include "moela/backend/cuda/kernels/matmul.cuh"
#include "moela/backend/cuda/tiles/routing.hpp"
#include "moela/moe/config.hpp"

namespace moela::gpu {

/// The router parameters of a CPU-backend `moe::moe_config` (validated): `greedy` becomes one
/// group, `group_limited_greedy` the max group score, `noaux_tc` the top-2-sum group score.
inline tiles::router_params router_params_of(const moe::moe_config& c) {
  c.validate();
  tiles::router_params p;
  p.experts = static_cast<int>(c.n_routed_experts);
  p.k = static_cast<int>(c.num_experts_per_tok);
  const bool grouped = c.topk_method != moe::topk_rule::greedy && c.n_group > 1;
  p.groups = grouped ? static_cast<int>(c.n_group) : 1;
  p.top_groups = grouped ? static_cast<int>(c.topk_group) : 1;
  p.scoring = c.scoring_func == moe::score_fn::sigmoid ? tiles::score_func::sigmoid : tiles::score_func::softmax;
  p.renormalize = c.norm_topk_prob;
  p.route_scale = c.routed_scaling_factor;
  p.group_rule = c.topk_method == moe::topk_rule::noaux_tc ? tiles::group_score::top2_sum : tiles::group_score::max;
  check(tiles::router_params_valid(p), "router_params_of: the CUDA router supports at most ",
        tiles::router_max_experts, " experts and k <= ", tiles::router_max_k, " (config has ", c.n_routed_experts,
        " experts, k ", c.num_experts_per_tok, ")");
  return p;
}

/// Device buffers of one MoE dispatch for up to `max_tokens` tokens, `k` experts each, over
/// `experts` experts. Reusable across calls with at most that many tokens.
struct moe_plan {
  int experts = 0, k = 0;
  index_t max_tokens = 0, tokens = 0;
  device_tensor<int, 1> offsets;      // [E + 1]
  device_tensor<int, 1> cursor;       // [E] scratch
  device_tensor<int, 2> slot;         // [max_tokens, k]
  device_tensor<int, 1> tile_expert;  // [max_tiles]
  device_tensor<int, 1> tile_row;     // [max_tiles]

  moe_plan() = default;
  moe_plan(int experts_, int k_, index_t max_tokens_, device_allocator& alloc = default_allocator())
      : experts(experts_), k(k_), max_tokens(max_tokens_), offsets({experts_ + 1}, alloc), cursor({experts_}, alloc),
        slot({max_tokens_, k_}, alloc), tile_expert({max_tiles(experts_, k_, max_tokens_)}, alloc),
        tile_row({max_tiles(experts_, k_, max_tokens_)}, alloc) {
    check(experts_ > 0 && k_ > 0 && k_ <= experts_ && max_tokens_ >= 0, "moe_plan: experts ", experts_, ", k ", k_,
          ", tokens ", max_tokens_);
  }
  /// Upper bound on the grouped GEMM's row tiles: each expert adds at most one partial tile.
  static index_t max_tiles(int experts, int k, index_t tokens) {
    return (tokens * k + detail::gemm_bm - 1) / detail::gemm_bm + experts;
  }
  index_t rows() const { return tokens * k; }
};

namespace detail {

template <int SM>
__global__ void route_kernel(tiles::router_params p, const float* logits, index_t ld_logits, const float* bias,
                             int* ids, index_t ld_ids, float* weights, index_t ld_w, index_t tokens) {
  const index_t t = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= tokens) return;
  float scratch[2 * tiles::router_max_experts];
  int id[tiles::router_max_k];
  float w[tiles::router_max_k];
  tiles::route_token(p, logits + t * ld_logits, bias, scratch, id, w);
  for (int j = 0; j < p.k; ++j) {
    ids[t * ld_ids + j] = id[j];
    weights[t * ld_w + j] = w[j];
  }
}

template <int SM>
__global__ void count_kernel(const int* ids, index_t n, int* counts, int experts, int* bad) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int e = ids[i];
  if (e < 0 || e >= experts) {
    atomicExch(bad, 1);
    return;
  }
  atomicAdd(counts + e, 1);
}

// One thread: exclusive scan of the counts into offsets, the row-tile list, cursors reset.
template <int SM>
__global__ void scan_kernel(int* counts_then_cursor, int* offsets, int experts, int* tile_expert, int* tile_row,
                            int max_tiles) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  int run = 0, t = 0;
  for (int e = 0; e < experts; ++e) {
    const int c = counts_then_cursor[e];
    offsets[e] = run;
    for (int r = 0; r < c; r += gemm_bm) {
      tile_expert[t] = e;
      tile_row[t] = run + r;
      ++t;
    }
    run += c;
    counts_then_cursor[e] = 0;
  }
  offsets[experts] = run;
  for (; t < max_tiles; ++t) tile_expert[t] = -1;
}

template <int SM>
__global__ void fill_kernel(const int* ids, index_t n, const int* offsets, int* cursor, int* slot, int experts) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int e = ids[i];
  if (e < 0 || e >= experts) return;
  slot[i] = offsets[e] + atomicAdd(cursor + e, 1);
}

template <int SM>
__global__ void gather_kernel(float* xs, index_t ldxs, const float* x, index_t ldx, const int* slot, int k,
                              index_t tokens, int d) {
  const index_t row = blockIdx.x;  // one (token, j) per block
  if (row >= tokens * k) return;
  const index_t t = row / k;
  const float* src = x + t * ldx;
  float* dst = xs + static_cast<index_t>(slot[row]) * ldxs;
  for (int c = threadIdx.x; c < d; c += blockDim.x) dst[c] = src[c];
}

template <int SM>
__global__ void combine_kernel(float* y, index_t ldy, const float* ys, index_t ldys, const float* w, index_t ldw,
                               const int* slot, int k, int d) {
  const index_t t = blockIdx.x;
  for (int c = threadIdx.x; c < d; c += blockDim.x) {
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) acc = fmaf(w[t * ldw + j], ys[static_cast<index_t>(slot[t * k + j]) * ldys + c], acc);
    y[t * ldy + c] = acc;
  }
}

}  // namespace detail
}  // namespace moela::gpu

namespace moela {

/// Routes `T` tokens; see the file comment. `bias` may be an empty view (no correction bias).
template <int SM>
void route(cuda<SM>, gpu::device_view<int, 2> ids, gpu::device_view<float, 2> weights,
           gpu::device_view<const float, 2> logits, gpu::device_view<const float, 1> bias,
           const gpu::tiles::router_params& p, const gpu::stream& s = gpu::default_stream()) {
  check(gpu::tiles::router_params_valid(p), "route: unsupported router (experts ", p.experts, ", k ", p.k,
        ", groups ", p.groups, ", top groups ", p.top_groups, "; at most ", gpu::tiles::router_max_experts,
        " experts and k <= ", gpu::tiles::router_max_k, ")");
  const index_t T = logits.extent(0);
  check(logits.extent(1) == p.experts && ids.extent(0) == T && ids.extent(1) == p.k && weights.shape() == ids.shape(),
        "route: logits ", to_string(logits.shape()), ", ids ", to_string(ids.shape()), ", weights ",
        to_string(weights.shape()), " for ", p.experts, " experts, k ", p.k);
  check(bias.extent(0) == 0 || (bias.extent(0) == p.experts && (p.experts == 1 || bias.stride(0) == 1)),
        "route: bias is ", to_string(bias.shape()), " but [", p.experts, "] (or empty) was expected");
  gpu::detail::check_rows("route", "logits", logits);
  gpu::detail::check_rows("route", "ids", ids);
  gpu::detail::check_rows("route", "weights", weights);
  if (T == 0) return;
  gpu::detail::route_kernel<SM><<<gpu::detail::grid_for(T, 64), 64, 0, s.get()>>>(
      p, logits.data(), logits.stride(0), bias.extent(0) ? bias.data() : nullptr, ids.data(), ids.stride(0),
      weights.data(), weights.stride(0), T);
  MOELA_CUDA_CHECK_LAUNCH("route: logits ", to_string(logits.shape()));
}

/// Builds `plan` for the expert choices `ids[T, k]`. Waits for the stream (one 4-byte read)
/// to report expert ids out of range as a moela::error.
template <int SM>
void plan_dispatch(cuda<SM>, gpu::moe_plan& plan, gpu::device_view<const int, 2> ids,
                   const gpu::stream& s = gpu::default_stream()) {
  const index_t T = ids.extent(0);
  check(ids.extent(1) == plan.k && T <= plan.max_tokens, "plan_dispatch: ids ", to_string(ids.shape()),
        " but the plan holds ", plan.max_tokens, " tokens of k = ", plan.k);
  gpu::detail::check_contiguous("plan_dispatch", "ids", ids);
  plan.tokens = T;
  const index_t n = T * plan.k;
  gpu::device_tensor<int, 1> bad({1});
  bad.zero(s);
  plan.cursor.zero(s);
  if (n > 0)
    gpu::detail::count_kernel<SM><<<gpu::detail::grid_for(n, 256), 256, 0, s.get()>>>(
        ids.data(), n, plan.cursor.data(), plan.experts, bad.data());
  const int max_tiles = static_cast<int>(plan.tile_expert.size());
  gpu::detail::scan_kernel<SM><<<1, 32, 0, s.get()>>>(plan.cursor.data(), plan.offsets.data(), plan.experts,
                                                      plan.tile_expert.data(), plan.tile_row.data(), max_tiles);
  if (n > 0)
    gpu::detail::fill_kernel<SM><<<gpu::detail::grid_for(n, 256), 256, 0, s.get()>>>(
        ids.data(), n, plan.offsets.data(), plan.cursor.data(), plan.slot.data(), plan.experts);
  MOELA_CUDA_CHECK_LAUNCH("plan_dispatch: ids ", to_string(ids.shape()));
  int flag = 0;
  MOELA_CUDA_CHECK(cudaMemcpyAsync(&flag, bad.data(), sizeof(int), cudaMemcpyDeviceToHost, s.get()), "plan_dispatch");
  s.synchronize();
  check(flag == 0, "plan_dispatch: ids ", to_string(ids.shape()), " hold an expert id outside [0, ", plan.experts, ")");
}

/// Gathers the rows of `x[T, D]` into expert order: `xs[T*k, D]`.
template <int SM>
void dispatch(cuda<SM>, gpu::device_view<float, 2> xs, gpu::device_view<const float, 2> x, const gpu::moe_plan& plan,
              const gpu::stream& s = gpu::default_stream()) {
  check(x.extent(0) == plan.tokens && xs.extent(0) == plan.rows() && xs.extent(1) == x.extent(1), "dispatch: x ",
        to_string(x.shape()), ", xs ", to_string(xs.shape()), " for a plan of ", plan.tokens, " tokens x k ", plan.k);
  gpu::detail::check_rows("dispatch", "x", x);
  gpu::detail::check_rows("dispatch", "xs", xs);
  if (plan.rows() == 0) return;
  gpu::detail::gather_kernel<SM><<<static_cast<unsigned>(plan.rows()), 128, 0, s.get()>>>(
      xs.data(), xs.stride(0), x.data(), x.stride(0), plan.slot.data(), plan.k, plan.tokens,
      static_cast<int>(x.extent(1)));
  MOELA_CUDA_CHECK_LAUNCH("dispatch: x ", to_string(x.shape()));
}

/// Weighted sum of each token's expert outputs: `y[t] = Σ_j weights[t, j] · ys[slot[t, j]]`.
template <int SM>
void combine(cuda<SM>, gpu::device_view<float, 2> y, gpu::device_view<const float, 2> ys,
             gpu::device_view<const float, 2> weights, const gpu::moe_plan& plan,
             const gpu::stream& s = gpu::default_stream()) {
  check(y.extent(0) == plan.tokens && ys.extent(0) == plan.rows() && ys.extent(1) == y.extent(1) &&
            weights.extent(0) == plan.tokens && weights.extent(1) == plan.k,
        "combine: y ", to_string(y.shape()), ", ys ", to_string(ys.shape()), ", weights ", to_string(weights.shape()),
        " for a plan of ", plan.tokens, " tokens x k ", plan.k);
  gpu::detail::check_rows("combine", "y", y);
  gpu::detail::check_rows("combine", "ys", ys);
  gpu::detail::check_rows("combine", "weights", weights);
  if (plan.tokens == 0) return;
  gpu::detail::combine_kernel<SM><<<static_cast<unsigned>(plan.tokens), 128, 0, s.get()>>>(
      y.data(), y.stride(0), ys.data(), ys.stride(0), weights.data(), weights.stride(0), plan.slot.data(), plan.k,
      static_cast<int>(y.extent(1)));
  MOELA_CUDA_CHECK_LAUNCH("combine: y ", to_string(y.shape()));
}

/// Expert-grouped GEMM over the sorted rows: `ys[r] = xs[r] · W_eᵀ` for the expert e owning
/// row r (see the file comment).
template <int SM, class F, class Mode = quant::mode::fast>
void grouped_matmul(cuda<SM> tag, gpu::device_view<float, 2> ys, gpu::device_view<const float, 2> xs,
                    const gpu::device_weights<F>& w, const gpu::moe_plan& plan, Mode = {},
                    const gpu::stream& s = gpu::default_stream(),
                    gpu::device_allocator& alloc = gpu::default_allocator()) {
  w.validate("grouped_matmul");
  const index_t R = xs.extent(0), K = xs.extent(1);
  check(w.experts() == plan.experts && K == w.cols() && R == plan.rows() && ys.extent(0) == R &&
            ys.extent(1) == w.rows(),
        "grouped_matmul: xs ", to_string(xs.shape()), ", ys ", to_string(ys.shape()), ", W [", w.experts(), ", ",
        w.rows(), ", ", w.cols(), "] for a plan of ", plan.rows(), " rows over ", plan.experts, " experts");
  gpu::detail::check_rows("grouped_matmul", "xs", xs);
  gpu::detail::check_rows("grouped_matmul", "ys", ys);
  if (R == 0) return;
  gpu::detail::gemm_params p{};
  gpu::detail::fill_weight_params(p, w);
  p.y = ys.data();
  p.ldy = ys.stride(0);
  p.M = static_cast<int>(R);
  p.row_offsets = plan.offsets.data();
  p.tile_expert = plan.tile_expert.data();
  p.tile_row = plan.tile_row.data();
  const auto tiles = static_cast<unsigned>(gpu::moe_plan::max_tiles(plan.experts, plan.k, plan.tokens));
  static_assert(std::is_same_v<Mode, quant::mode::fast> ||
                    (std::is_same_v<Mode, quant::mode::faithful> && std::is_same_v<F, gpu::fp8_block>),
                "grouped_matmul: the faithful mode exists for fp8_block weights only");
  if constexpr (std::is_same_v<Mode, quant::mode::faithful>) {
    gpu::device_tensor<fp8_e4m3, 2> xq({R, K}, alloc);
    gpu::device_tensor<float, 2> xsc({R, gpu::tiles::blocks_of(K)}, alloc);
    quantize_activations(tag, xq.view(), xsc.view(), xs, s);
    p.a = xq.data();
    p.lda = K;
    p.a_scale = xsc.data();
    p.ldas = xsc.extent(1);
    gpu::detail::launch_gemm<SM, F, true>(p, tiles, s);
    MOELA_CUDA_CHECK_LAUNCH("grouped_matmul fp8: xs ", to_string(xs.shape()));
    s.synchronize();  // temporaries return to the allocator
  } else {
    p.a = xs.data();
    p.lda = xs.stride(0);
    gpu::detail::launch_gemm<SM, F, false>(p, tiles, s);
    MOELA_CUDA_CHECK_LAUNCH("grouped_matmul ", F::name, ": xs ", to_string(xs.shape()));
  }
}

/// The routed experts of an MoE layer for tokens `x[T, D]` already routed (`ids`, `weights`
/// `[T, k]`): `y[T, D] = Σ_j weights[t, j] · W2_e (silu(W1_e x_t) ⊙ W3_e x_t)` with
/// W1/W3 `[E, I, D]` (gate/up) and W2 `[E, D, I]` (down). Builds `plan` from `ids`.
/// Temporaries come from `alloc` (a caching_allocator avoids cudaMalloc per call).
template <int SM, class F, class Mode = quant::mode::fast>
void moe_experts(cuda<SM> tag, gpu::device_view<float, 2> y, gpu::device_view<const float, 2> x,
                 gpu::device_view<const int, 2> ids, gpu::device_view<const float, 2> weights,
                 const gpu::device_weights<F>& w1, const gpu::device_weights<F>& w3, const gpu::device_weights<F>& w2,
                 gpu::moe_plan& plan, Mode mode = {}, const gpu::stream& s = gpu::default_stream(),
                 gpu::device_allocator& alloc = gpu::default_allocator()) {
  const index_t D = x.extent(1), I = w1.rows();
  check(w1.cols() == D && w3.rows() == I && w3.cols() == D && w2.rows() == D && w2.cols() == I &&
            y.shape() == x.shape(),
        "moe_experts: x ", to_string(x.shape()), ", y ", to_string(y.shape()), ", W1 [", w1.experts(), ", ", w1.rows(),
        ", ", w1.cols(), "], W3 [", w3.experts(), ", ", w3.rows(), ", ", w3.cols(), "], W2 [", w2.experts(), ", ",
        w2.rows(), ", ", w2.cols(), "] (want W1, W3 [E, I, D] and W2 [E, D, I])");
  plan_dispatch(tag, plan, ids, s);
  const index_t R = plan.rows();
  gpu::device_tensor<float, 2> xs({R, D}, alloc), a({R, I}, alloc), b({R, I}, alloc), ys({R, D}, alloc);
  dispatch(tag, xs.view(), x, plan, s);
  const gpu::device_view<const float, 2> xs_c = xs.view();
  grouped_matmul(tag, a.view(), xs_c, w1, plan, mode, s, alloc);
  grouped_matmul(tag, b.view(), xs_c, w3, plan, mode, s, alloc);
  swiglu(tag, a.view(), gpu::device_view<const float, 2>(a.view()), gpu::device_view<const float, 2>(b.view()), s);
  grouped_matmul(tag, ys.view(), gpu::device_view<const float, 2>(a.view()), w2, plan, mode, s, alloc);
  combine(tag, y, gpu::device_view<const float, 2>(ys.view()), weights, plan, s);
  s.synchronize();  // temporaries return to the allocator
}

}  // namespace moela
