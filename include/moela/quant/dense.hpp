#pragma once
/// \file moela/quant/dense.hpp
/// Dense (unquantized) weight formats: `quant::f32`, `quant::bf16`, `quant::fp16`, and
/// `qmatrix<Format>` for them: a weight matrix `[out, in]` (PyTorch `Linear` layout) stored in
/// that element type.

#include <span>

#include "moela/core/minifloat.hpp"
#include "moela/core/tensor.hpp"

namespace moela::quant {

/// A dense format: every weight stored as one `T`.
template <class T>
struct dense {
  using element = T;
};
using f32 = dense<float>;
using bf16 = dense<moela::bf16>;
using fp16 = dense<moela::fp16>;

}  // namespace moela::quant

namespace moela {

template <class Format>
class qmatrix;

/// A dense weight matrix `[rows = out_features, cols = in_features]` stored as `T`.
template <class T>
class qmatrix<quant::dense<T>> {
 public:
  using format = quant::dense<T>;
  qmatrix() = default;
  explicit qmatrix(tensor<T, 2> w) : w_(std::move(w)) {}

  /// Converts an FP32 matrix `[out, in]` (RNE to T where T is narrower).
  static qmatrix quantize(const_view<float, 2> w) {
    tensor<T, 2> t({w.extent(0), w.extent(1)});
    for (index_t r = 0; r < w.extent(0); ++r)
      for (index_t c = 0; c < w.extent(1); ++c) t(r, c) = static_cast<T>(w(r, c));
    return qmatrix(std::move(t));
  }

  index_t rows() const { return w_.extent(0); }
  index_t cols() const { return w_.extent(1); }
  std::size_t bytes() const { return w_.bytes(); }
  const_view<T, 2> codes() const { return w_.view(); }

  /// Writes row `r` as float into `out` (size cols()).
  void dequantize_row(index_t r, std::span<float> out) const {
    const T* p = w_.data() + r * cols();
    for (index_t c = 0; c < cols(); ++c) out[static_cast<std::size_t>(c)] = static_cast<float>(p[c]);
  }
  tensor<float, 2> dequantize() const {
    tensor<float, 2> t({rows(), cols()});
    for (index_t r = 0; r < rows(); ++r)
      dequantize_row(r, std::span<float>(t.data() + r * cols(), static_cast<std::size_t>(cols())));
    return t;
  }

 private:
  tensor<T, 2> w_;
};

}  // namespace moela
