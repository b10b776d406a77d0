// FP8 golden vectors (tests/data/golden/fp8-units): encoders, 128x128 weight quantizer,
// 1x128 activation quantizer and the two FP8 GEMM semantics, all against the stored bytes.
#include <doctest/doctest.h>

#include <moela/io/safetensors.hpp>
#include <moela/quant.hpp>

#include <cmath>
#include <cstring>

namespace {

moela::io::safetensors_file& units() {
  static moela::io::safetensors_file f(MOELA_TEST_DATA_DIR "/golden/fp8-units/fp8-units.safetensors");
  return f;
}

template <class T, std::size_t R>
bool same_bytes(moela::const_view<T, R> a, moela::const_view<T, R> b) {
  if (a.shape() != b.shape()) return false;
  return std::memcmp(a.data(), b.data(), sizeof(T) * static_cast<std::size_t>(a.size())) == 0;
}

// Relative error as the golden README defines it: max|got - want| / max|want|.
double rel_err(moela::const_view<float, 2> got, moela::const_view<float, 2> want) {
  double num = 0, den = 0;
  for (moela::index_t r = 0; r < want.extent(0); ++r)
    for (moela::index_t c = 0; c < want.extent(1); ++c) {
      num = std::max(num, std::fabs(double(got(r, c)) - double(want(r, c))));
      den = std::max(den, std::fabs(double(want(r, c))));
    }
  return num / den;
}

}  // namespace

TEST_CASE("golden: bulk fp8 encode/decode equals the stored bytes") {
  auto in = units().view<float, 1>("encode.input");
  auto sat = units().view<moela::fp8_e4m3, 1>("encode.satfinite");
  auto nonsat = units().view<moela::fp8_e4m3, 1>("encode.nonsat");
  std::vector<moela::fp8_e4m3> a(static_cast<std::size_t>(in.extent(0))), b(a.size());
  moela::from_float(in.span(), std::span<moela::fp8_e4m3>(a));
  moela::from_float(in.span(), std::span<moela::fp8_e4m3>(b), moela::overflow::ieee);
  for (std::size_t i = 0; i < a.size(); ++i) {
    CAPTURE(i);
    CHECK(a[i].bits == sat(static_cast<moela::index_t>(i)).bits);
    CHECK(b[i].bits == nonsat(static_cast<moela::index_t>(i)).bits);
  }
  auto codes = units().view<moela::fp8_e4m3, 1>("decode.codes");
  auto values = units().view<float, 1>("decode.values");
  std::vector<float> d(256);
  moela::to_float(codes.span(), std::span<float>(d));
  for (int i = 0; i < 256; ++i) {
    CAPTURE(i);
    if (std::isnan(values(i))) CHECK(std::isnan(d[static_cast<std::size_t>(i)]));
    else CHECK(std::bit_cast<std::uint32_t>(d[static_cast<std::size_t>(i)]) == std::bit_cast<std::uint32_t>(values(i)));
  }
}

TEST_CASE("golden: fp8_block<128,128> weight quantizer is bit-exact (wq.*)") {
  using W = moela::qmatrix<moela::quant::fp8_block<128, 128>>;
  const auto w = W::quantize(units().view<float, 2>("wq.input"));
  CHECK(same_bytes(w.codes(), units().view<moela::fp8_e4m3, 2>("wq.weight")));
  CHECK(same_bytes(w.scales(), units().view<float, 2>("wq.weight_scale_inv")));
  const auto deq = w.dequantize();
  CHECK(same_bytes(deq.cview(), units().view<float, 2>("wq.dequant")));
  // Zero-copy over the checkpoint layout gives the same dequantization.
  const auto b = W::borrow(units().view<moela::fp8_e4m3, 2>("wq.weight"), units().view<float, 2>("wq.weight_scale_inv"));
  CHECK_FALSE(b.owns_storage());
  CHECK(same_bytes(b.dequantize().cview(), units().view<float, 2>("wq.dequant")));
}

TEST_CASE("golden: 1x128 activation quantizer is bit-exact (aq.*, aq_ue8m0.*)") {
  auto x = units().view<float, 2>("aq.input");
  moela::tensor<moela::fp8_e4m3, 2> q({x.extent(0), x.extent(1)});
  moela::tensor<float, 2> s({x.extent(0), 3});
  moela::quant::quantize_activations_fp8(x, q.view(), s.view());
  CHECK(same_bytes(q.cview(), units().view<moela::fp8_e4m3, 2>("aq.q")));
  CHECK(same_bytes(s.cview(), units().view<float, 2>("aq.scale")));
  moela::quant::quantize_activations_fp8(x, q.view(), s.view(), moela::quant::scale_format::ue8m0);
  CHECK(same_bytes(q.cview(), units().view<moela::fp8_e4m3, 2>("aq_ue8m0.q")));
  CHECK(same_bytes(s.cview(), units().view<float, 2>("aq_ue8m0.scale")));
}

TEST_CASE("golden: FP8 GEMM, faithful W8A8 and fast W8A16 (gemm.*)") {
  using W = moela::qmatrix<moela::quant::fp8_block<128, 128>>;
  const auto w = W::borrow(units().view<moela::fp8_e4m3, 2>("gemm.weight"), units().view<float, 2>("gemm.weight_scale_inv"));
  auto x = units().view<float, 2>("gemm.x");
  moela::tensor<float, 2> y({x.extent(0), w.rows()});
  // Tolerance: the golden README's 1e-5 relative for gemm.out_*. Each 128-long FP8 partial is
  // a sum of exact products in fp32 (relative error <= 128 * 2^-24 ~ 7.6e-6 worst case, far less
  // typically), and the K/128 = 3 scaled blocks add 3 more roundings.
  moela::matmul(y.view(), x, w, moela::quant::fp8_mode::faithful{});
  CHECK(rel_err(y.cview(), units().view<float, 2>("gemm.out_w8a8")) <= 1e-5);
  moela::matmul(y.view(), x, w);
  CHECK(rel_err(y.cview(), units().view<float, 2>("gemm.out_w8a16")) <= 1e-5);
  // The activation quantization inside the faithful mode equals the stored x_q / x_scale.
  moela::tensor<moela::fp8_e4m3, 2> q({x.extent(0), x.extent(1)});
  moela::tensor<float, 2> s({x.extent(0), 3});
  moela::quant::quantize_activations_fp8(x, q.view(), s.view());
  CHECK(same_bytes(q.cview(), units().view<moela::fp8_e4m3, 2>("gemm.x_q")));
  CHECK(same_bytes(s.cview(), units().view<float, 2>("gemm.x_scale")));
}
