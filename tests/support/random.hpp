#pragma once
// Random inputs shared by the tests (fixed seeds are chosen by each test).
#include <moela/core/tensor.hpp>

#include <random>

namespace moela_test {

/// An `[r, c]` matrix of independent N(0, sd^2) floats.
inline moela::tensor<float, 2> random_matrix(std::mt19937& rng, moela::index_t r, moela::index_t c, float sd = 1.0f) {
  std::normal_distribution<float> d(0.f, sd);
  moela::tensor<float, 2> t({r, c});
  for (auto& v : t.flat()) v = d(rng);
  return t;
}

}  // namespace moela_test
