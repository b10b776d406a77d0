// AVX-512 VNNI / BF16 kernels against their portable references (integer kernels: bit-exact;
// bf16 kernels: fp32 accumulation bound), and matmul with 16-lane xsimd batches against float64.
// Built with -march=x86-64-v4 -mavx512vnni -mavx512bf16; skipped (exit 77) on CPUs without them.
#include <moela/core/build_info.hpp>  // the ISA guard: exit 77 before main on CPUs without AVX-512

#include <doctest/doctest.h>

#include <moela/backend/cpu/x86/avx512_qdot.hpp>
#include <moela/quant.hpp>

#include <cmath>
#include <random>
#include <vector>

using namespace moela;

#if !defined(MOELA_AVX512_VNNI_KERNELS) || !defined(MOELA_AVX512_BF16_KERNELS)
#error "test_quant_avx512 must be compiled with AVX512-VNNI and AVX512-BF16 enabled"
#endif

namespace {
constexpr double u32 = 1.0 / (1 << 24);
}

TEST_CASE("vpdpbusd int8 x int8 and int4 x int8 dots equal the integer references") {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> d8(-128, 127), d4(0, 255);
  for (index_t n : {index_t{1}, index_t{63}, index_t{64}, index_t{200}, index_t{4096}}) {
    CAPTURE(n);
    std::vector<std::int8_t> a(static_cast<std::size_t>(n)), b(a.size());
    std::vector<std::uint8_t> p(static_cast<std::size_t>((n + 1) / 2));
    for (auto& v : a) v = static_cast<std::int8_t>(d8(rng));
    for (auto& v : b) v = static_cast<std::int8_t>(d8(rng));
    for (auto& v : p) v = static_cast<std::uint8_t>(d4(rng));
    CHECK(detail::dot_s8<xsimd::default_arch>(a.data(), b.data(), n) == detail::dot_s8_ref(a.data(), b.data(), n));
    const index_t ne = n / 2 * 2;
    CHECK(detail::dot_u4s8<xsimd::default_arch, false>(p.data(), a.data(), ne) ==
          detail::dot_u4s8_ref<false>(p.data(), a.data(), ne));
    CHECK(detail::dot_u4s8<xsimd::default_arch, true>(p.data(), a.data(), ne) ==
          detail::dot_u4s8_ref<true>(p.data(), a.data(), ne));
  }
}

TEST_CASE("vdpbf16ps bf16 and fp8 x bf16 dots equal the float64 sum within the fp32 bound") {
  std::mt19937 rng(2);
  std::normal_distribution<float> nd(0.f, 1.f);
  std::uniform_int_distribution<int> dc(0, 255);
  for (index_t n : {index_t{5}, index_t{32}, index_t{100}, index_t{2048}}) {
    CAPTURE(n);
    std::vector<bf16> a(static_cast<std::size_t>(n)), b(a.size());
    std::vector<fp8_e4m3> w(a.size());
    for (auto& v : a) v = bf16(nd(rng));
    for (auto& v : b) v = bf16(nd(rng));
    for (auto& v : w) {
      int c = dc(rng);
      if ((c & 0x7F) == 0x7F) c = 0x7E;  // no NaN codes
      v = fp8_e4m3::from_bits(static_cast<std::uint8_t>(c));
    }
    double ref = 0, mag = 0, ref8 = 0, mag8 = 0;
    for (index_t k = 0; k < n; ++k) {
      const double p = double(a[static_cast<std::size_t>(k)].to_float()) * b[static_cast<std::size_t>(k)].to_float();
      const double q = double(w[static_cast<std::size_t>(k)].to_float()) * b[static_cast<std::size_t>(k)].to_float();
      ref += p, mag += std::fabs(p), ref8 += q, mag8 += std::fabs(q);
    }
    // Products are exact in fp32; n - 1 additions: |err| <= (n + 1) u Σ|p|.
    CHECK(std::fabs(detail::dot_bf16<xsimd::default_arch>(a.data(), b.data(), n) - ref) <= double(n + 1) * u32 * mag);
    CHECK(std::fabs(detail::dot_fp8_bf16<xsimd::default_arch>(w.data(), b.data(), n) - ref8) <=
          double(n + 1) * u32 * mag8);
  }
}

TEST_CASE("matmul with AVX-512 xsimd batches equals the float64 reference") {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 1.f);
  const index_t m = 5, n = 37, k = 320;
  tensor<float, 2> wf({n, k}), x({m, k});
  for (auto& v : wf.flat()) v = 0.05f * nd(rng);
  for (auto& v : x.flat()) v = nd(rng);
  auto run = [&](const auto& w) {
    tensor<float, 2> y({m, n});
    matmul(y.view(), x.cview(), w);
    const auto wd = w.dequantize();
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < n; ++j) {
        double ref = 0, mag = 0;
        for (index_t t = 0; t < k; ++t) ref += double(x(i, t)) * wd(j, t), mag += std::fabs(double(x(i, t)) * wd(j, t));
        CHECK(std::fabs(y(i, j) - ref) <= double(k + 2) * u32 * mag);
      }
  };
  run(qmatrix<quant::bf16>::quantize(wf.cview()));
  run(qmatrix<quant::fp8_block<128, 128>>::quantize(wf.cview()));
  run(qmatrix<quant::int8_group<64>>::quantize(wf.cview()));
  run(qmatrix<quant::int4_group_asym<32>>::quantize(wf.cview()));
}

TEST_CASE("the W4A16 GEMV (vdpbf16ps) equals the float64 reference; bf16 subnormal activations count as zero") {
  // matmul with mode::bf16_activations and an int4 weight, M = 1..4: the GEMV of
  // gemv_bf16_avx512.hpp. K = 320: two whole 128-code chunks and a partial one. Bound: the
  // kernel sums (1 + u/16) x scaled by 16 s and takes (16 + z) s Σx off (terms <= 63 s |x|),
  // fp32 sums: (K + 2) u Σ 64 s |x|. Some activations are bf16 subnormals, which the instruction
  // reads as zero; the group sums must do the same, so the result equals that of zeros there
  // (bit for bit: the kernel sees the same prepared values).
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.f, 1.f);
  const index_t n = 37, k = 320;
  tensor<float, 2> wf({n, k});
  for (auto& v : wf.flat()) v = 0.05f * nd(rng);
  auto run = [&](const auto& w) {
    for (index_t m = 1; m <= 4; ++m) {
      CAPTURE(m);
      tensor<float, 2> x({m, k}), xz({m, k});
      for (auto& v : x.flat()) v = nd(rng);
      for (index_t i = 0; i < m; ++i) x(i, 7 * i + 3) = (i % 2 ? -3e-39f : 5e-39f);  // bf16 subnormals
      // A row of nothing but subnormals: the product must be exactly 0 (a group sum that kept
      // them would leave -(16 + z) s Σx, about 1e-36, behind).
      if (m > 1)
        for (index_t t = 0; t < k; ++t) x(m - 1, t) = 5e-39f;
      for (index_t i = 0; i < m; ++i)
        for (index_t t = 0; t < k; ++t) {
          const float r = bf16(x(i, t)).to_float();
          xz(i, t) = std::fabs(r) < 1.17549435e-38f ? 0.0f : r;  // what the kernel multiplies
        }
      tensor<float, 2> y({m, n}), yz({m, n});
      matmul(y.view(), x.cview(), w, quant::mode::bf16_activations{});
      matmul(yz.view(), xz.cview(), w, quant::mode::bf16_activations{});
      const auto wd = w.dequantize();
      for (index_t i = 0; i < m; ++i)
        for (index_t j = 0; j < n; ++j) {
          double ref = 0, mag = 0;
          for (index_t t = 0; t < k; ++t) {
            ref += double(xz(i, t)) * wd(j, t);
            mag += 64.0 * w.scale_at(j, t) * std::fabs(double(xz(i, t)));
          }
          CHECK(std::fabs(y(i, j) - ref) <= double(k + 2) * u32 * mag);
          CHECK(y(i, j) == yz(i, j));
        }
    }
  };
  run(qmatrix<quant::int4_group<32>>::quantize(wf.cview()));
  run(qmatrix<quant::int4_group_asym<64>>::quantize(wf.cview()));
}
