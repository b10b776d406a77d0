#pragma once
/// \file moela/ops/matmul.hpp
/// `matmul(y, x, W)`: `y[M, N] = x[M, K] · W[N, K]ᵀ` for any weight format, FP32 accumulation.
/// (Placeholder reference kernel; the quantized-matmul work replaces the body with the
/// dispatched SIMD kernels, keeping this signature.)

#include <vector>

#include "moela/backend/cpu/parallel_for.hpp"
#include "moela/backend/tags.hpp"
#include "moela/quant/dense.hpp"

namespace moela {

template <class Format>
void matmul(tensor_view<float, 2> y, const_view<float, 2> x, const qmatrix<Format>& w) {
  check(x.extent(1) == w.cols(), "matmul: x is ", to_string(x.shape()), " but W is [", w.rows(), ", ", w.cols(),
        "] (K must match)");
  check(y.extent(0) == x.extent(0) && y.extent(1) == w.rows(), "matmul: y is ", to_string(y.shape()),
        " but [", x.extent(0), ", ", w.rows(), "] was expected");
  const index_t M = x.extent(0), N = w.rows(), K = w.cols();
  parallel_for(N, [&](index_t n0, index_t n1) {
    std::vector<float> row(static_cast<std::size_t>(K));
    for (index_t n = n0; n < n1; ++n) {
      w.dequantize_row(n, row);
      for (index_t m = 0; m < M; ++m) {
        float acc = 0.f;
        for (index_t k = 0; k < K; ++k) acc += x(m, k) * row[static_cast<std::size_t>(k)];
        y(m, n) = acc;
      }
    }
  });
}

template <class A, class Format>
void matmul(cpu<A>, tensor_view<float, 2> y, const_view<float, 2> x, const qmatrix<Format>& w) {
  matmul(y, x, w);
}

}  // namespace moela
