#pragma once
/// \file moela/moe/ffn.hpp
/// The SwiGLU feed-forward block shared by DeepSeek's dense MLP (the first
/// `first_k_dense_replace` layers), every routed expert and the fused shared expert (spec §3.3):
/// ```
/// h = silu(x · gate_projᵀ) ⊙ (x · up_projᵀ)      [M, I]
/// y = h · down_projᵀ                              [M, D]
/// ```
/// Weights are `qmatrix<Format>` in PyTorch `Linear` layout (`[out, in]`): gate_proj and
/// up_proj `[I, D]`, down_proj `[D, I]`. Activations are FP32, accumulation FP32 (the matmul
/// of the format).
///
/// - `swiglu_weights<Format>`: the three matrices.
/// - `swiglu_ffn(cpu<A>{}, y, x, w, ws)`: one evaluation on `x [M, D]` into `y [M, D]`, using
///   the scratch `ws` (grown on demand, never shrunk; no allocation once warm).
/// - `dense_ffn<Backend, Format>`: the dense MLP layer (weights + scratch), `forward(y, x)`.
///
/// Errors: `moela::error` naming the block when the matrices' shapes disagree or `x` / `y`
/// do not match them.

#include <string>
#include <utility>
#include <vector>

#include "moela/backend/tags.hpp"
#include "moela/core/error.hpp"
#include "moela/core/tensor.hpp"
#include "moela/core/workspace.hpp"
#include "moela/ops/matmul.hpp"
#include "moela/ops/swiglu.hpp"
#include "moela/quant/dense.hpp"

namespace moela::moe {

/// gate_proj `[I, D]`, up_proj `[I, D]`, down_proj `[D, I]` of one SwiGLU block.
template <class Format>
struct swiglu_weights {
  qmatrix<Format> gate_proj, up_proj, down_proj;

  index_t hidden_size() const { return gate_proj.cols(); }
  index_t intermediate_size() const { return gate_proj.rows(); }
  std::size_t bytes() const { return gate_proj.bytes() + up_proj.bytes() + down_proj.bytes(); }

  /// Checks the three shapes agree with each other and, if given (> 0), with D and I.
  void validate(const std::string& what, index_t hidden = 0, index_t inter = 0) const {
    const index_t D = hidden > 0 ? hidden : gate_proj.cols(), I = inter > 0 ? inter : gate_proj.rows();
    const bool ok = gate_proj.rows() == I && gate_proj.cols() == D && up_proj.rows() == I && up_proj.cols() == D &&
                    down_proj.rows() == D && down_proj.cols() == I && D > 0 && I > 0;
    if (ok) return;
    // Streamed piece by piece (no std::string operator+ chains: GCC 12 -O3 raises a false
    // -Wrestrict on those), and only on the failure path.
    fail(what, ": gate_proj is [", gate_proj.rows(), ", ", gate_proj.cols(), "], up_proj [", up_proj.rows(), ", ",
         up_proj.cols(), "], down_proj [", down_proj.rows(), ", ", down_proj.cols(), "] but [", I, ", ", D, "], [", I,
         ", ", D, "], [", D, ", ", I, "] were expected");
  }
};

/// Scratch of `swiglu_ffn`: two `[M, I]` FP32 buffers.
struct ffn_workspace {
  std::vector<float> gate, up;
  std::size_t bytes() const { return moela::detail::capacity_bytes(gate, up); }
  void ensure(index_t m, index_t inter) {
    const auto n = static_cast<std::size_t>(m * inter);
    if (gate.size() < n) {
      gate.resize(n);
      up.resize(n);
    }
  }
};

/// `y[M, D] = down(silu(gate(x)) ⊙ up(x))` for `x [M, D]`. `y` must not alias `x`.
template <class Arch, class Format>
void swiglu_ffn(cpu<Arch> be, tensor_view<float, 2> y, const_view<float, 2> x, const swiglu_weights<Format>& w,
                ffn_workspace& ws) {
  const index_t M = x.extent(0), D = w.hidden_size(), I = w.intermediate_size();
  check(x.extent(1) == D && y.extent(0) == M && y.extent(1) == D, "swiglu_ffn: x is ", to_string(x.shape()),
        " and y ", to_string(y.shape()), " but the weights are for hidden size ", D);
  if (M == 0) return;
  ws.ensure(M, I);
  tensor_view<float, 2> g(ws.gate.data(), {M, I}), u(ws.up.data(), {M, I});
  matmul(be, g, x, w.gate_proj);
  matmul(be, u, x, w.up_proj);
  swiglu(be, g, g, u);
  matmul(be, y, g, w.down_proj);
}

/// The dense SwiGLU MLP of the first `first_k_dense_replace` layers (HF `mlp.{gate,up,down}_proj`,
/// width `intermediate_size`). Not thread-safe: one object per concurrent caller.
template <class Backend, class Format>
class dense_ffn;

template <class Arch, class Format>
class dense_ffn<cpu<Arch>, Format> {
 public:
  dense_ffn() = default;
  explicit dense_ffn(swiglu_weights<Format> w) : w_(std::move(w)) { w_.validate("moe::dense_ffn"); }

  const swiglu_weights<Format>& weights() const { return w_; }
  index_t hidden_size() const { return w_.hidden_size(); }
  index_t intermediate_size() const { return w_.intermediate_size(); }

  /// `y [T, D] = FFN(x [T, D])`.
  /// Its scratch is the calling thread's, shared by every dense_ffn on it (core/workspace.hpp).
  void forward(tensor_view<float, 2> y, const_view<float, 2> x) {
    swiglu_ffn(cpu<Arch>{}, y, x, w_, moela::detail::thread_workspace<ffn_workspace>());
  }

 private:
  swiglu_weights<Format> w_;
};

}  // namespace moela::moe
