// Built with -march=x86-64-v4 by tests/system/CMakeLists.txt. On a CPU without AVX-512 the
// ISA guard in moela/core/build_info.hpp must stop it before main, with a message naming the
// missing feature and the configured exit code; on a CPU with AVX-512 it runs normally.
#include <moela/core/build_info.hpp>
#include <moela/core/minifloat.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  // Vectorisable work, so the binary really contains AVX-512 instructions.
  float x[64];
  for (int i = 0; i < 64; ++i) x[i] = static_cast<float>(i + argc);
  float s = 0;
  for (float v : x) s += moela::bf16(v * 1.5f).to_float();
  std::printf("isa_guard_probe reached main (%s), sum %g\n", moela::build_info().summary().c_str(),
              static_cast<double>(s));
  (void)argv;
  return moela::missing_cpu_feature() == nullptr ? 0 : 2;
}
