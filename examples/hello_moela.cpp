// The smallest moela program: quantize a weight matrix and multiply.
#include <moela/moela.hpp>

#include <cstdio>

int main() {
  std::printf("%s\n", moela::build_info().summary().c_str());
  moela::tensor<float, 2> w({4, 8}), x({1, 8}), y({1, 4});
  for (moela::index_t i = 0; i < 8; ++i) {
    x(0, i) = 1.0f;
    for (moela::index_t o = 0; o < 4; ++o) w(o, i) = float(o);
  }
  const auto wq = moela::qmatrix<moela::quant::bf16>::quantize(w.cview());
  moela::matmul(y.view(), x.cview(), wq);
  std::printf("y = [%g %g %g %g] (expected 0 8 16 24)\n", y(0, 0), y(0, 1), y(0, 2), y(0, 3));
  return y(0, 3) == 24.f ? 0 : 1;
}
