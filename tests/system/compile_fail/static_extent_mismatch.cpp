// Must NOT compile: the K extents of x[1, 4] and W[3, 5] are both static and differ, so
// check_extent_match fails at compile time. MOELA_CONTROL builds the matching variant, which
// must compile (proving the failure comes from the extents and nothing else).
#include <moela/core/tensor.hpp>

int main() {
  float xb[4] = {}, wb[20] = {};
  moela::fixed_view<float, 1, 4> x(xb);
#ifdef MOELA_CONTROL
  moela::fixed_view<float, 5, 4> w(wb);
#else
  moela::fixed_view<float, 4, 5> w(wb);
#endif
  moela::check_extent_match<1, 1>("matmul", "x", x, "W", w);
  return 0;
}
