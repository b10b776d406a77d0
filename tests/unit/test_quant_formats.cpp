// Weight formats: quantize/dequantize round trip within each format's bound (against float64),
// borrow/owning construction, storage sizes, SIMD decoders equal the scalar reference bit for
// bit, and bad input errors.
#include <doctest/doctest.h>

#include <moela/quant.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <cstring>
#include <random>
#include <string>

#include "support/random.hpp"
#include "support/quant_formats.hpp"

using namespace moela;
namespace q = moela::quant;

namespace {

using moela_test::random_matrix;

/// Largest allowed |dequant(w) - w| for weight (r, c), from the format's precision:
///  - bf16 / fp16: half an ulp, 2^-9 / 2^-11 relative (normal range; the test values are normal);
///  - fp8: half an ulp of E4M3 (2^-4 relative) or E5M2 (2^-3), or half the smallest subnormal
///    step (2^-10 resp. 2^-17, times the scale) for tiny values, after one fp32 multiply;
///  - int8 / int4 symmetric: half a scale step (rne), plus the bf16 scale's rounding, which the
///    quantizer compensates by using the rounded scale (so it stays half a step);
///  - int4 asymmetric: half a step, plus up to half a step of zero-point rounding.
template <class F>
double bound(const qmatrix<F>& w, double wv, index_t r, index_t c) {
  const double a = std::fabs(wv);
  const double s = w.scale_at(r, c);
  const double fp32_mul = a * std::ldexp(1.0, -23);
  if constexpr (F::kind == q::format_kind::dense) {
    if constexpr (std::is_same_v<typename F::code_type, float>) return 0;
    else if constexpr (std::is_same_v<typename F::code_type, moela::bf16>) return a * std::ldexp(1.0, -8);
    else return a * std::ldexp(1.0, -11) + std::ldexp(1.0, -25);
  } else if constexpr (F::kind == q::format_kind::fp8_block) {
    constexpr bool e5 = std::is_same_v<typename F::code_type, fp8_e5m2>;
    return std::max(a * std::ldexp(1.0, e5 ? -3 : -4), s * std::ldexp(1.0, e5 ? -17 : -10)) + fp32_mul;
  } else if constexpr (F::has_zero) {
    return s * 1.0 + fp32_mul;
  } else {
    return s * 0.5 * (1 + 1e-6) + fp32_mul;
  }
}

}  // namespace

TEST_CASE_TEMPLATE("quantize -> dequantize round trip stays within the format's bound", F, MOELA_ALL_FORMATS) {
  std::mt19937 rng(20240501);
  const index_t n = 131, k = (F::group > 1 ? F::group * 3 : 259);
  auto wf = random_matrix(rng, n, k, 0.02f);
  wf(0, 0) = 0.f;  // exact zero
  wf(1, 1) = 0.3f;  // an outlier
  const auto w = qmatrix<F>::quantize(wf.cview());
  CHECK(w.rows() == n);
  CHECK(w.cols() == k);
  CHECK(w.owns_storage());
  const auto d = w.dequantize();
  for (index_t r = 0; r < n; ++r)
    for (index_t c = 0; c < k; ++c) {
      const double err = std::fabs(double(d(r, c)) - double(wf(r, c)));
      if (err > bound(w, wf(r, c), r, c)) {
        CAPTURE(r);
        CAPTURE(c);
        CHECK(err <= bound(w, wf(r, c), r, c));
      }
    }
  CHECK(d(0, 0) == (F::has_zero ? d(0, 0) : 0.f));
  // bytes(): codes + scales (+ zero points).
  std::size_t want = static_cast<std::size_t>(n * k) * (F::packed4 ? 1 : sizeof(typename F::code_type)) / (F::packed4 ? 2 : 1);
  if constexpr (F::has_scales) want += static_cast<std::size_t>(w.scale_rows() * w.scale_cols()) * sizeof(typename F::scale_type);
  if constexpr (F::has_zero) want += static_cast<std::size_t>(w.scale_rows() * w.scale_cols());
  CHECK(w.bytes() == want);
}

TEST_CASE_TEMPLATE("SIMD and portable decoders equal the scalar dequantization bit for bit", F, MOELA_ALL_FORMATS) {
  std::mt19937 rng(11);
  const index_t n = 9, k = (F::group > 1 ? F::group * 5 : 389);
  const auto w = qmatrix<F>::quantize(random_matrix(rng, n, k, 1.0f).cview());
  std::vector<float> ref(static_cast<std::size_t>(k)), buf(static_cast<std::size_t>(k)), buf2(buf.size());
  for (index_t r = 0; r < n; ++r) {
    w.dequantize_row(r, ref);
    // Segments aligned like the kernel driver's K blocks (multiples of 128), and the full row.
    for (index_t k0 = 0; k0 < k; k0 += 128) {
      const index_t k1 = std::min(k, k0 + 128);
      const float* p = moela::detail::decode_segment<xsimd::default_arch>(w, r, k0, k1, buf.data(), true);
      const float* p2 = moela::detail::decode_segment<xsimd::sse2>(w, r, k0, k1, buf2.data(), true);
      CHECK(std::memcmp(p, ref.data() + k0, sizeof(float) * static_cast<std::size_t>(k1 - k0)) == 0);
      CHECK(std::memcmp(p2, ref.data() + k0, sizeof(float) * static_cast<std::size_t>(k1 - k0)) == 0);
    }
  }
}

TEST_CASE("borrow: zero-copy views over external memory, and shape errors") {
  std::mt19937 rng(2);
  const auto wf = random_matrix(rng, 200, 300, 0.1f);
  using F8 = q::fp8_block<128, 128>;
  const auto owned = qmatrix<F8>::quantize(wf.cview());
  const auto b = qmatrix<F8>::borrow(owned.codes(), owned.scales());
  CHECK_FALSE(b.owns_storage());
  CHECK(b.row_codes(0) == owned.row_codes(0));
  CHECK(b.scale_rows() == 2);
  CHECK(b.scale_cols() == 3);
  // Wrong scale grid (transposed) is an error naming the expected shape.
  tensor<float, 2> st({3, 2});
  try {
    (void)qmatrix<F8>::borrow(owned.codes(), st.cview());
    FAIL("no error");
  } catch (const moela::error& e) {
    CHECK(std::string(e.what()).find("[2, 3]") != std::string::npos);
  }
  // Dense borrow over bf16 memory with a row stride larger than K.
  tensor<moela::bf16, 2> big({4, 10});
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 10; ++j) big(i, j) = moela::bf16(float(i * 10 + j));
  const auto d = qmatrix<q::bf16>::borrow(big.cview().slice(1, 2, 8));
  CHECK(d.rows() == 4);
  CHECK(d.cols() == 6);
  CHECK(d.at(3, 0) == 32.f);
  // Owning construction from tensors.
  tensor<std::int8_t, 2> codes({2, 64});
  tensor<float, 2> sc({2, 2});
  codes(1, 40) = -5;
  sc(1, 1) = 0.5f;
  qmatrix<q::int8_group<32>> g(std::move(codes), std::move(sc));
  CHECK(g.at(1, 40) == -2.5f);
  CHECK(g.owns_storage());
  // int4 asymmetric needs zero points of the scale grid's shape.
  tensor<std::uint8_t, 2> packed({2, 32});
  tensor<float, 2> s4({2, 2});
  tensor<std::uint8_t, 2> z4({2, 1});
  CHECK_THROWS_AS((void)qmatrix<q::int4_group_asym<32>>::borrow(packed.cview(), s4.cview(), z4.cview()), moela::error);
  tensor<std::uint8_t, 2> z4ok({2, 2});
  packed(0, 0) = 0x3C;  // codes 12, 3
  z4ok(0, 0) = 8;
  s4(0, 0) = 0.25f;
  const auto a4 = qmatrix<q::int4_group_asym<32>>::borrow(packed.cview(), s4.cview(), z4ok.cview());
  CHECK(a4.at(0, 0) == 1.0f);    // (12 - 8) * 0.25
  CHECK(a4.at(0, 1) == -1.25f);  // (3 - 8) * 0.25
  const auto s4sym = qmatrix<q::int4_group<32>>::borrow(packed.cview(), s4.cview());
  CHECK(s4sym.at(0, 0) == -1.0f);  // 0xC = -4 two's complement, * 0.25
  CHECK(s4sym.at(0, 1) == 0.75f);
}

TEST_CASE_TEMPLATE("share_storage: one buffer, the same values, copies outlive the originals", F, MOELA_ALL_FORMATS) {
  std::mt19937 rng(41);
  // Three owning matrices of different shapes and a borrowed one whose code rows are padded
  // (row stride past K): share_storage packs them into one buffer, compacting the padding.
  std::vector<qmatrix<F>> ms;
  for (auto [n, k] : {std::pair<index_t, index_t>{130, 256}, {7, 128}, {300, 384}})
    ms.push_back(qmatrix<F>::quantize(random_matrix(rng, n, k, 0.5f).cview()));
  const auto src = qmatrix<F>::quantize(random_matrix(rng, 9, 256, 0.5f).cview());
  using code = typename F::code_type;
  const index_t cc = src.code_cols(), ld = cc + 64;
  std::vector<code> padded(static_cast<std::size_t>(9 * ld));
  for (index_t r = 0; r < 9; ++r) std::memcpy(padded.data() + r * ld, src.row_codes(r), sizeof(code) * std::size_t(cc));
  const const_view<code, 2> pv(padded.data(), {9, cc}, {ld, 1});
  if constexpr (!F::has_scales) ms.push_back(qmatrix<F>::borrow(pv));
  else if constexpr (!F::packed4) ms.push_back(qmatrix<F>::borrow(pv, src.scales()));
  else ms.push_back(qmatrix<F>::borrow(pv, src.scales(), src.zeros()));
  CHECK(!ms.back().owns_storage());
  std::vector<tensor<float, 2>> want;
  std::vector<std::size_t> bytes;
  for (const auto& m : ms) {
    want.push_back(m.dequantize());
    bytes.push_back(m.bytes());
  }
  std::vector<qmatrix<F>> copies;
  {
    std::vector<qmatrix<F>*> ptrs;
    for (auto& m : ms) ptrs.push_back(&m);
    qmatrix<F>::share_storage(ptrs);
    for (std::size_t i = 0; i < ms.size(); ++i) {
      CAPTURE(i);
      CHECK(ms[i].owns_storage());
      CHECK(ms[i].bytes() == bytes[i]);
      CHECK(ms[i].code_stride() == ms[i].code_cols());
      if (i > 0)  // one buffer, in order
        CHECK(reinterpret_cast<const std::uint8_t*>(ms[i].row_codes(0)) >
              reinterpret_cast<const std::uint8_t*>(ms[i - 1].row_codes(0)));
    }
    copies = ms;
    ms.clear();  // the copies keep the buffer alive
  }
  for (std::size_t i = 0; i < copies.size(); ++i) {
    const auto got = copies[i].dequantize();
    REQUIRE(got.shape() == want[i].shape());
    CHECK(std::memcmp(got.data(), want[i].data(), want[i].bytes()) == 0);
  }
}

TEST_CASE("share_storage: a null pointer is an error and no matrix moves") {
  std::mt19937 rng(42);
  auto a = qmatrix<q::int4_group<32>>::quantize(random_matrix(rng, 8, 64, 0.5f).cview());
  const auto* before = a.row_codes(0);
  std::vector<qmatrix<q::int4_group<32>>*> ptrs{&a, nullptr};
  CHECK_THROWS_WITH_AS(qmatrix<q::int4_group<32>>::share_storage(ptrs),
                       doctest::Contains("share_storage: a null matrix pointer"), moela::error);
  CHECK(a.row_codes(0) == before);
}

TEST_CASE("group formats reject K not divisible by the group size") {
  std::mt19937 rng(4);
  const auto wf = random_matrix(rng, 4, 100, 1.f);
  try {
    (void)qmatrix<q::int4_group<32>>::quantize(wf.cview());
    FAIL("no error");
  } catch (const moela::error& e) {
    const std::string m = e.what();
    CHECK(m.find("group size 32") != std::string::npos);
    CHECK(m.find("K = 100") != std::string::npos);
  }
  CHECK_THROWS_AS((void)qmatrix<q::int8_group<64>>::quantize(wf.cview()), moela::error);
  tensor<float, 2> empty({0, 4});
  CHECK_THROWS_AS((void)qmatrix<q::int8_rowwise<>>::quantize(empty.cview()), moela::error);
  // Quantizing from bf16 equals quantizing the widened values.
  tensor<moela::bf16, 2> wb({4, 100});
  tensor<float, 2> ww({4, 100});
  for (index_t i = 0; i < 4; ++i)
    for (index_t j = 0; j < 100; ++j) {
      wb(i, j) = moela::bf16(wf(i, j));
      ww(i, j) = wb(i, j).to_float();
    }
  const auto a = qmatrix<q::fp8_block<128, 128>>::quantize(wb.cview());
  const auto b = qmatrix<q::fp8_block<128, 128>>::quantize(ww.cview());
  CHECK(std::memcmp(a.codes().data(), b.codes().data(), 400) == 0);
  const auto lossless = qmatrix<q::bf16>::quantize(wb.cview());
  CHECK(lossless.at(3, 99) == ww(3, 99));
}

TEST_CASE("int8 per-row activation quantization") {
  tensor<float, 2> x({3, 5});
  const float vals[3][5] = {{1.f, -2.f, 0.5f, 0.f, 127.f}, {0.f, 0.f, 0.f, 0.f, 0.f}, {-3.f, 1.5f, 0.75f, 0.f, 0.f}};
  for (index_t i = 0; i < 3; ++i)
    for (index_t j = 0; j < 5; ++j) x(i, j) = vals[i][j];
  tensor<std::int8_t, 2> qx({3, 5});
  tensor<float, 1> s({3});
  q::quantize_activations_int8(x.cview(), qx.view(), s.view());
  CHECK(s(0) == 1.0f);
  CHECK(qx(0, 1) == -2);
  CHECK(qx(0, 2) == 0);  // 0.5 ties to even
  CHECK(qx(0, 4) == 127);
  CHECK(s(1) == 0.f);
  CHECK(qx(1, 3) == 0);
  CHECK(s(2) == 3.f / 127.f);
  CHECK(qx(2, 0) == -127);
  tensor<float, 1> sbad({2});
  CHECK_THROWS_AS(q::quantize_activations_int8(x.cview(), qx.view(), sbad.view()), moela::error);
}

TEST_CASE("int8 grouped activation quantization: per-group scales, a short last group, an all-zero group") {
  // Row 0: groups [0, 4) and [4, 6) (short); row 1: an all-zero first group.
  tensor<float, 2> x({2, 6});
  const float vals[2][6] = {{1.f, -2.f, 0.5f, 127.f, -0.3f, 0.1f}, {0.f, 0.f, 0.f, 0.f, 2.f, -1.f}};
  for (index_t i = 0; i < 2; ++i)
    for (index_t j = 0; j < 6; ++j) x(i, j) = vals[i][j];
  tensor<std::int8_t, 2> qx({2, 6});
  tensor<float, 2> s({2, 2});
  q::quantize_activations_int8(x.cview(), qx.view(), s.view(), 4);
  CHECK(s(0, 0) == 1.0f);
  CHECK(qx(0, 1) == -2);
  CHECK(qx(0, 2) == 0);  // 0.5 ties to even
  CHECK(s(0, 1) == 0.3f / 127.f);
  CHECK(qx(0, 4) == -127);
  CHECK(qx(0, 5) == static_cast<std::int8_t>(std::nearbyint(0.1f / (0.3f / 127.f))));
  CHECK(s(1, 0) == 0.f);
  CHECK(qx(1, 0) == 0);
  CHECK(s(1, 1) == 2.f / 127.f);
  CHECK(qx(1, 5) == -64);  // -1 / (2/127) = -63.5 -> ties to even
  // One group spanning the row gives the per-row quantizer's result.
  tensor<float, 2> s1({2, 1});
  tensor<float, 1> sr({2});
  tensor<std::int8_t, 2> q1({2, 6}), qr({2, 6});
  q::quantize_activations_int8(x.cview(), q1.view(), s1.view(), 6);
  q::quantize_activations_int8(x.cview(), qr.view(), sr.view());
  for (index_t i = 0; i < 2; ++i) {
    CHECK(s1(i, 0) == sr(i));
    for (index_t j = 0; j < 6; ++j) CHECK(q1(i, j) == qr(i, j));
  }
  tensor<float, 2> sbad({2, 1});
  CHECK_THROWS_AS(q::quantize_activations_int8(x.cview(), qx.view(), sbad.view(), 4), moela::error);
  CHECK_THROWS_AS(q::quantize_activations_int8(x.cview(), qx.view(), s.view(), 0), moela::error);
}

TEST_CASE("int8 grouped activation quantization: the vector path rounds like the scalar definition") {
  // 3 rows x 300: full 128-wide groups (the vectorized path) and a 44-wide tail group; values
  // include exact ties (k + 0.5 steps of the scale) and both signs.
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 1.f);
  tensor<float, 2> x({3, 300});
  for (auto& v : x.flat()) v = nd(rng);
  for (index_t c = 0; c < 300; c += 7) x(1, c) = (float(c % 50) - 25.f) + 0.5f;  // ties at s = 1
  x(1, 0) = 127.f;  x(1, 128) = 127.f;  x(1, 256) = 127.f;                        // s = 1 in every group
  tensor<std::int8_t, 2> qx({3, 300});
  tensor<float, 2> s({3, 3});
  q::quantize_activations_int8(x.cview(), qx.view(), s.view(), 128);
  int bad = 0;
  for (index_t r = 0; r < 3; ++r)
    for (index_t g = 0; g < 3; ++g) {
      float amax = 0.f;
      for (index_t c = g * 128; c < std::min<index_t>(300, g * 128 + 128); ++c) amax = std::max(amax, std::fabs(x(r, c)));
      CHECK(s(r, g) == amax / 127.f);
      for (index_t c = g * 128; c < std::min<index_t>(300, g * 128 + 128); ++c)
        bad += qx(r, c) != static_cast<std::int8_t>(std::clamp(moela::quant::detail::rne(x(r, c) / s(r, g)), -127.f, 127.f));
    }
  CHECK(bad == 0);
  CHECK(qx(1, 7) == -18);  // -17.5 -> -18 (even)
  CHECK(qx(1, 14) == -10);  // -10.5 -> -10 (even)
}

TEST_CASE("int8 grouped activation quantization: NaN and inf make the group's scale non-finite") {
  tensor<float, 2> x({1, 256});
  for (index_t c = 0; c < 256; ++c) x(0, c) = 0.01f * float(c);
  x(0, 5) = std::numeric_limits<float>::quiet_NaN();
  x(0, 200) = std::numeric_limits<float>::infinity();
  tensor<std::int8_t, 2> qx({1, 256});
  tensor<float, 2> s({1, 2});
  q::quantize_activations_int8(x.cview(), qx.view(), s.view(), 128);
  CHECK(std::isnan(s(0, 0)));
  CHECK(std::isinf(s(0, 1)));
  for (index_t c = 0; c < 256; ++c) CHECK(qx(0, c) == 0);
  // Through matmul: the products of a group with a NaN or inf activation are NaN, as in fp32.
  std::mt19937 rng(2);
  const auto w = qmatrix<q::int8_rowwise<>>::quantize(random_matrix(rng, 8, 256, 0.1f).cview());
  tensor<float, 2> y({1, 8});
  matmul(y.view(), x.cview(), w, q::mode::int8_activations{});
  for (index_t j = 0; j < 8; ++j) CHECK(std::isnan(y(0, j)));
}

TEST_CASE("int8 per-row activation quantization: a NaN makes the row's scale NaN and its codes 0") {
  tensor<float, 2> x({2, 40});
  for (index_t c = 0; c < 40; ++c) x(0, c) = x(1, c) = 0.5f * float(c) - 7.f;
  x(1, 3) = std::numeric_limits<float>::quiet_NaN();
  tensor<std::int8_t, 2> qx({2, 40});
  tensor<float, 1> s({2});
  q::quantize_activations_int8(x.cview(), qx.view(), s.view());
  CHECK(s(0) == 12.5f / 127.f);
  CHECK(qx(0, 39) == 127);
  CHECK(std::isnan(s(1)));
  for (index_t c = 0; c < 40; ++c) CHECK(qx(1, c) == 0);
}
