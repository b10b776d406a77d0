// The Conan test_package (also the find_package consumer in CTest): links only moela::moela and
// gets Eigen, xsimd and nlohmann_json through it without naming them.
#include <moela/moela.hpp>

#include <Eigen/Core>
#include <nlohmann/json.hpp>
#include <xsimd/xsimd.hpp>

#include <cstdio>
#include <vector>

int main() {
  std::printf("%s\n", moela::build_info().summary().c_str());
  int failures = 0;
  auto expect = [&](bool ok, const char* what) {
    std::printf("%-40s %s\n", what, ok ? "ok" : "FAILED");
    failures += ok ? 0 : 1;
  };
  // Core types and tensors.
  expect(moela::fp8_e4m3::saturate(1000.0f).to_float() == 448.0f, "fp8_e4m3 saturates to 448");
  expect(moela::bf16(1.0f).bits == 0x3F80, "bf16(1.0)");
  moela::tensor<float, 2> t({3, 4});
  t(2, 3) = 7.0f;
  expect(t.view()[2](3) == 7.0f, "tensor view");
  // The thread pool.
  std::vector<int> hit(1000, 0);
  moela::parallel_for(1000, [&](moela::index_t b, moela::index_t e) {
    for (moela::index_t i = b; i < e; ++i) hit[static_cast<std::size_t>(i)] += 1;
  });
  int sum = 0;
  for (int h : hit) sum += h;
  expect(sum == 1000, "parallel_for covers [0, 1000)");
  // Errors are moela::error.
  bool threw = false;
  try {
    (void)t.view().slice(0, 2, 9);
  } catch (const moela::error&) {
    threw = true;
  }
  expect(threw, "bad slice throws moela::error");
  // The transitive dependencies, usable directly.
  Eigen::Matrix2f m;
  m << 1, 2, 3, 4;
  expect((m * m)(0, 0) == 7.0f, "Eigen");
  const auto j = nlohmann::json::parse(R"({"hidden_size": 256})");
  expect(j.at("hidden_size").get<int>() == 256, "nlohmann_json");
  const xsimd::batch<float> b(2.0f);
#if XSIMD_VERSION_MAJOR >= 9
  const float total = xsimd::reduce_add(b * b);
#else
  const float total = xsimd::hadd(b * b);
#endif
  expect(total == 4.0f * static_cast<float>(xsimd::batch<float>::size), "xsimd");
  return failures == 0 ? 0 : 1;
}
