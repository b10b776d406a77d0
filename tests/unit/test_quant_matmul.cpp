// matmul(y, x, W) for every weight format, path and mode against a float64 reference computed
// here; odd shapes (K, N not multiples of the block or vector width), M = 1, 3, 17, 512.
#include <doctest/doctest.h>

#include <moela/quant.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "support/random.hpp"
#include "support/quant_formats.hpp"

using namespace moela;
namespace q = moela::quant;

namespace {

using moela_test::random_matrix;

constexpr double u32 = 1.0 / (1 << 24);  // unit roundoff of fp32

/// K for a format in the odd-shape tests: not a multiple of 8 or 128 where the format allows.
template <class F>
index_t odd_k() {
  if constexpr (F::kind == q::format_kind::int8_group || F::kind == q::format_kind::int4_group)
    return F::group * 3 + (F::group == 32 ? 64 : 0);  // 160, 192, 384: K % 128 != 0 for G = 32, 64
  else
    return 301;
}

/// Checks y against the float64 product x · dequant(W)ᵀ. The kernel's only error is fp32
/// accumulation of K exact-or-rounded products: |err| <= (K + 2) u Σ|x w| (standard bound for
/// any summation order, u = 2^-24; +2 for the product and the final partial-sum add).
/// int4: the GEMV kernels sum offset codes and subtract the offset times Σx per group, so their
/// terms are bounded by the offset codes, not by |w x|. The AVX2 kernel sums u x (u in [0, 15])
/// and subtracts z Σx (z = 8 or the zero point, <= 15): terms <= 30 s |x|. The AVX-512 kernel
/// sums (1 + u/16) x, scaled by 16 s (terms < 32 s |x|), and subtracts (16 + z) s Σx
/// (<= 31 s |x|): terms <= 63 s |x|. The bound uses Σ 64 s |x| for those formats.
template <class F>
void check_against_f64(const tensor<float, 2>& y, const_view<float, 2> x, const qmatrix<F>& w) {
  const auto wd = w.dequantize();
  const index_t m = x.extent(0), n = w.rows(), k = w.cols();
  int bad = 0;
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) {
      double ref = 0, mag = 0;
      for (index_t t = 0; t < k; ++t) {
        ref += double(x(i, t)) * double(wd(j, t));
        mag += F::packed4 ? 64.0 * w.scale_at(j, t) * std::fabs(double(x(i, t)))
                          : std::fabs(double(x(i, t)) * double(wd(j, t)));
      }
      const double tol = double(k + 2) * u32 * mag + 1e-30;
      if (std::fabs(double(y(i, j)) - ref) > tol && bad++ < 5) {
        CAPTURE(i);
        CAPTURE(j);
        CHECK(double(y(i, j)) == doctest::Approx(ref).epsilon(0));
      }
    }
  CHECK(bad == 0);
}

/// mode::bf16_activations on a random W [n, k] and x [m, k]: the product with fp32 x, with x
/// given as bf16, on the portable path and through the format's default (with_mode) against the
/// float64 product with x rounded to bf16 (check_against_f64's bound: products of bf16 x and the
/// bf16-exact codes are exact, then fp32 sums; FP8: one rounding of the block scale's product per
/// block, and of the dequantized reference value, inside its +2; int4: its offset bound); the
/// fp32-input, bf16-input and default-mode results must be the same floats.
template <class F>
void check_bf16_mode(std::mt19937& rng, index_t m, index_t k, index_t n) {
  CAPTURE(k);
  CAPTURE(n);
  CAPTURE(m);
  const auto w = qmatrix<F>::quantize(random_matrix(rng, n, k, 0.05f).cview());
  const auto x = random_matrix(rng, m, k);
  tensor<moela::bf16, 2> xb({m, k});
  tensor<float, 2> xr({m, k});  // x rounded to bf16 (RNE), widened: what the kernels multiply
  for (index_t i = 0; i < m; ++i)
    for (index_t t = 0; t < k; ++t) {
      xb(i, t) = moela::bf16(x(i, t));
      xr(i, t) = xb(i, t).to_float();
    }
  tensor<float, 2> y({m, n}), yb({m, n}), yg({m, n}), ya({m, n});
  matmul(y.view(), x.cview(), w, q::mode::bf16_activations{});
  matmul(yb.view(), xb.cview(), w, q::mode::bf16_activations{});
  matmul(cpu<xsimd::sse4_2>{}, yg.view(), x.cview(), w, q::mode::bf16_activations{});
  using FA = q::with_mode<F, q::mode::bf16_activations>;
  matmul(ya.view(), x.cview(), qmatrix<FA>::borrow_parts(w.codes(), w.scales(), w.zeros()));
  check_against_f64(y, xr.cview(), w);
  check_against_f64(yg, xr.cview(), w);
  int same = 0;
  for (index_t i = 0; i < m; ++i)
    for (index_t j = 0; j < n; ++j) same += (y(i, j) == yb(i, j)) + (y(i, j) == ya(i, j));
  CHECK(same == 2 * m * n);
}

}  // namespace

TEST_CASE_TEMPLATE("matmul equals the float64 reference on the dequantized weight", F, MOELA_ALL_FORMATS) {
  std::mt19937 rng(1234);
  // Formats without K groups also take K = 365 = 2 * 128 + 64 + 45: a last FP8 block (and
  // scale span of the AVX-512 GEMV) of one whole 64-code chunk and a partial one.
  std::vector<index_t> ks{odd_k<F>()};
  if (ks[0] == 301) ks.push_back(365);
  for (const index_t k : ks)
    for (index_t n : {index_t{1}, index_t{7}, index_t{201}}) {
      const auto wf = random_matrix(rng, n, k, 0.05f);
      const auto w = qmatrix<F>::quantize(wf.cview());
      // M = 1..4 are the GEMV kernels' four row counts (each its own instantiation, with its own
      // rows-per-pass and, for bf16, its own load width); 17 is the GEMM path.
      for (index_t m : {index_t{1}, index_t{2}, index_t{3}, index_t{4}, index_t{17}}) {
        CAPTURE(k);
        CAPTURE(n);
        CAPTURE(m);
        const auto x = random_matrix(rng, m, k);
        tensor<float, 2> y({m, n});
        matmul(y.view(), x.cview(), w);
        check_against_f64(y, x.cview(), w);
        // The portable path (an SSE arch: no AVX2 decoders) gives the same result within the same bound.
        tensor<float, 2> y2({m, n});
        matmul(cpu<xsimd::sse4_2>{}, y2.view(), x.cview(), w);
        check_against_f64(y2, x.cview(), w);
      }
    }
}

TEST_CASE_TEMPLATE("matmul with M = 512 (prefill GEMM path)", F, q::f32, q::bf16, q::fp8_block<128, 128>,
                   q::int8_group<32>, q::int4_group_asym<64>) {
  std::mt19937 rng(99);
  // n = 75: four full 16-column panels and a partial one. k: one K block, or three (kc = 512:
  // 512 + 512 + 64 or 76, the last one with a tail shorter than the 8 x 8 panel transpose).
  const index_t m = 512, n = 75;
  const index_t long_k = F::kind == q::format_kind::int8_group || F::kind == q::format_kind::int4_group ? 1088 : 1100;
  for (index_t k : {odd_k<F>(), long_k}) {
    CAPTURE(k);
    const auto w = qmatrix<F>::quantize(random_matrix(rng, n, k, 0.05f).cview());
    const auto x = random_matrix(rng, m, k);
    tensor<float, 2> y({m, n});
    matmul(y.view(), x.cview(), w);
    check_against_f64(y, x.cview(), w);
  }
}

TEST_CASE_TEMPLATE("matmul on both sides of the packed-GEMM threshold", F, q::f32, q::bf16, q::fp8_block<128, 128>,
                   q::int4_group<32>) {
  // M = gemm_pack_min_rows - 1 runs the dot-product tiles, M = gemm_pack_min_rows and + 1 the
  // packed GEMM (whole and partial 6-row x panels); n = 75 ends in a partial panel (16 or 32
  // columns). The second K spans three 512-column K blocks, the last partial, each decoded in
  // 256-column pieces (the last one ending in a partial 16-column transpose for f32 and bf16).
  // The build's arch, and AVX2 where it is not the build's: its threshold and its panel path
  // (decoded rows transposed 8 x 8) differ from AVX-512's (decoded into registers, 16 x 16).
  std::mt19937 rng(48);
  const index_t n = 75;
  const index_t long_k = F::kind == q::format_kind::int4_group ? 1152 : 1100;
  auto sides = [&]<class Arch>(Arch) {
    CAPTURE(Arch::name());
    const index_t m0 = moela::detail::gemm_pack_min_rows<Arch>;
    for (index_t k : {odd_k<F>(), long_k}) {
      CAPTURE(k);
      const auto w = qmatrix<F>::quantize(random_matrix(rng, n, k, 0.05f).cview());
      for (index_t m : {m0 - 1, m0, m0 + 1}) {
        CAPTURE(m);
        const auto x = random_matrix(rng, m, k);
        tensor<float, 2> y({m, n});
        matmul(cpu<Arch>{}, y.view(), x.cview(), w);
        check_against_f64(y, x.cview(), w);
      }
    }
  };
  sides(xsimd::default_arch{});
#if XSIMD_WITH_FMA3_AVX2
  if constexpr (!std::is_same_v<xsimd::default_arch, xsimd::fma3<xsimd::avx2>>) sides(xsimd::fma3<xsimd::avx2>{});
#endif
}

TEST_CASE_TEMPLATE("matmul with bf16 activations", F, q::f32, q::bf16, q::fp8_block<128, 128>, q::int8_rowwise<>,
                   q::int4_group<32>) {
  std::mt19937 rng(7);
  const index_t m = 5, n = 130, k = odd_k<F>();
  const auto w = qmatrix<F>::quantize(random_matrix(rng, n, k, 0.05f).cview());
  const auto xf = random_matrix(rng, m, k);
  tensor<moela::bf16, 2> xb({m, k});
  tensor<float, 2> xw({m, k});  // the bf16 values widened: what the kernel must multiply
  for (index_t i = 0; i < m; ++i)
    for (index_t t = 0; t < k; ++t) {
      xb(i, t) = moela::bf16(xf(i, t));
      xw(i, t) = xb(i, t).to_float();
    }
  tensor<float, 2> y({m, n});
  matmul(y.view(), xb.cview(), w);
  check_against_f64(y, xw.cview(), w);
  matmul(cpu<>{}, y.view(), xb.cview(), w);
  check_against_f64(y, xw.cview(), w);
}

TEST_CASE_TEMPLATE("matmul: a NaN weight code makes exactly its row's outputs NaN", F, q::fp8_block<128, 128>,
                   q::fp8_block_e5m2<128, 128>) {
  // Both E4M3 NaN codes (0x7F, 0xFF) in the 16-wide vector body, the 8-wide step after it
  // (K = 301: the last 128-block is 45 wide, 32 + 8 + 5) and the scalar tail.
  std::mt19937 rng(5);
  const index_t n = 9, k = 301;
  const auto wq = qmatrix<F>::quantize(random_matrix(rng, n, k, 0.05f).cview());
  tensor<typename F::code_type, 2> codes({n, k});
  tensor<float, 2> scales({wq.scale_rows(), wq.scale_cols()});
  for (index_t r = 0; r < n; ++r)
    for (index_t c = 0; c < k; ++c) codes(r, c) = wq.row_codes(r)[c];
  for (index_t r = 0; r < scales.extent(0); ++r)
    for (index_t c = 0; c < scales.extent(1); ++c) scales(r, c) = wq.scale_data()[r * wq.scale_cols() + c];
  const bool e4m3 = std::is_same_v<typename F::code_type, fp8_e4m3>;
  const std::uint8_t nan_pos = e4m3 ? 0x7F : 0x7E, nan_neg = e4m3 ? 0xFF : 0xFE;
  codes(2, 17) = F::code_type::from_bits(nan_pos);   // vector body
  codes(5, 300) = F::code_type::from_bits(nan_neg);  // scalar tail
  codes(7, 130) = F::code_type::from_bits(nan_neg);  // second K block
  codes(8, 291) = F::code_type::from_bits(nan_pos);  // 8-wide step
  const auto w = qmatrix<F>::borrow(codes.cview(), scales.cview());
  for (index_t m : {index_t{1}, index_t{2}, index_t{3}, index_t{17}}) {
    CAPTURE(m);
    const auto x = random_matrix(rng, m, k);
    tensor<float, 2> y({m, n});
    matmul(y.view(), x.cview(), w);
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < n; ++j) {
        CAPTURE(j);
        CHECK(std::isnan(y(i, j)) == (j == 2 || j == 5 || j == 7 || j == 8));
      }
  }
}

TEST_CASE_TEMPLATE("matmul: every FP8 code is decoded exactly (one-hot activations)", F, q::fp8_block<128, 128>,
                   q::fp8_block_e5m2<128, 128>) {
  // Row j holds every code value across its columns (subnormals, both zeros, the largest); NaN
  // and infinity codes are replaced by 0 (the NaN test above covers them). With x one-hot at
  // column c, every path's y(i, j) is the single product code(j, c) * scale (all other terms are
  // exact zeros), so each must equal the float product exactly: a code decoded wrong anywhere
  // (vector body, 8-wide step, scalar tail, a later K block) shows. M = 1..4: the GEMV kernels;
  // 17: the packed GEMM; and the same with bf16 activations (1 is exact in bf16).
  const index_t n = 40, k = 301;
  tensor<typename F::code_type, 2> codes({n, k});
  for (index_t j = 0; j < n; ++j)
    for (index_t c = 0; c < k; ++c) {
      const auto code = F::code_type::from_bits(static_cast<std::uint8_t>((j * 37 + c * 11) & 0xFF));
      codes(j, c) = std::isfinite(code.to_float()) ? code : F::code_type::from_bits(0);
    }
  const index_t sr = (n + 127) / 128, sc = (k + 127) / 128;
  tensor<float, 2> scales({sr, sc});
  for (index_t a = 0; a < sr; ++a)
    for (index_t b = 0; b < sc; ++b) scales(a, b) = std::ldexp(1.0f + 0.375f * float(b), -3 - int(b));
  const auto w = qmatrix<F>::borrow(codes.cview(), scales.cview());
  int wrong = 0;  // outputs that differ (the first few are reported in detail)
  for (index_t m : {index_t{1}, index_t{2}, index_t{3}, index_t{4}, index_t{17}})
    for (index_t c0 = 0; c0 < k; c0 += m) {
      tensor<float, 2> x({m, k}), y({m, n}), yb({m, n});
      tensor<moela::bf16, 2> xb({m, k});
      std::fill(x.data(), x.data() + x.size(), 0.f);
      for (index_t i = 0; i < m; ++i) x(i, (c0 + i) % k) = 1.f;
      for (index_t i = 0; i < x.size(); ++i) xb.data()[i] = moela::bf16(x.data()[i]);
      matmul(y.view(), x.cview(), w);
      matmul(yb.view(), xb.cview(), w);
      for (index_t i = 0; i < m; ++i) {
        const index_t c = (c0 + i) % k;
        for (index_t j = 0; j < n; ++j) {
          const float want = codes(j, c).to_float() * scales(j / 128, c / 128);
          if ((y(i, j) != want || yb(i, j) != want) && wrong++ < 4) {
            CAPTURE(m);
            CAPTURE(c);
            CAPTURE(j);
            CAPTURE(int(codes(j, c).bits));
            CHECK(y(i, j) == want);
            CHECK(yb(i, j) == want);
          }
        }
      }
    }
  CHECK(wrong == 0);
}

TEST_CASE("faithful FP8 mode equals the float64 W8A8 reference (odd K and N, all M)") {
  using F = q::fp8_block<128, 128>;
  std::mt19937 rng(5);
  // M = 1 and 3: GEMV kernels; 17: dot-product tiles; 260 (at K = 300 only, for time): the
  // packed GEMM (6-row x panels, the last one partial, kc = 128 with the scales applied per block).
  for (index_t k : {index_t{128}, index_t{300}, index_t{512}})
    for (index_t m : {index_t{1}, index_t{3}, index_t{17}, index_t{260}}) {
      if (m == 260 && k != 300) continue;
      CAPTURE(k);
      CAPTURE(m);
      const index_t n = 201;
      const auto w = qmatrix<F>::quantize(random_matrix(rng, n, k, 0.05f).cview());
      const auto x = random_matrix(rng, m, k);
      tensor<float, 2> y({m, n});
      matmul(y.view(), x.cview(), w, q::fp8_mode::faithful{});
      // Reference: activation codes/scales from the (golden-verified) act quantizer; partials P
      // per 128 block in float64, scaled by both scales. Per block the kernel's fp32 partial
      // has |err| <= (128 + 1) u Σ|xq wq|, then two scale multiplies and one add per block:
      // tolerance (K + 4 * K/128 + 2) u Σ_blocks |P-terms| * a_s * b_s.
      const index_t kb = (k + 127) / 128;
      tensor<fp8_e4m3, 2> xq({m, k});
      tensor<float, 2> xs({m, kb});
      q::quantize_activations_fp8(x.cview(), xq.view(), xs.view());
      for (index_t i = 0; i < m; ++i)
        for (index_t j = 0; j < n; ++j) {
          double ref = 0, mag = 0;
          for (index_t b = 0; b < kb; ++b) {
            double p = 0, pm = 0;
            for (index_t t = b * 128; t < std::min(k, b * 128 + 128); ++t) {
              p += double(xq(i, t).to_float()) * double(w.codes()(j, t).to_float());
              pm += std::fabs(double(xq(i, t).to_float()) * double(w.codes()(j, t).to_float()));
            }
            const double sc = double(xs(i, b)) * double(w.scales()(j / 128, b));
            ref += p * sc;
            mag += pm * sc;
          }
          const double tol = double(k + 4 * kb + 2) * u32 * mag + 1e-30;
          REQUIRE(std::fabs(double(y(i, j)) - ref) <= tol);
        }
    }
}

TEST_CASE("fp8_block_w8a8: matmul defaults to the faithful mode, fast still selectable") {
  std::mt19937 rng(17);
  const index_t n = 130, k = 300;
  const auto w = qmatrix<q::fp8_block<128, 128>>::quantize(random_matrix(rng, n, k, 0.05f).cview());
  const auto w8 = qmatrix<q::fp8_block_w8a8>::borrow(w.codes(), w.scales());
  for (index_t m : {index_t{1}, index_t{5}}) {
    const auto x = random_matrix(rng, m, k);
    tensor<float, 2> ya({m, n}), yb({m, n}), yc({m, n}), yd({m, n});
    matmul(ya.view(), x.cview(), w8);
    matmul(yb.view(), x.cview(), w, q::mode::faithful{});
    matmul(yc.view(), x.cview(), w8, q::mode::fast{});
    matmul(yd.view(), x.cview(), w);
    int same_faithful = 0, same_fast = 0, differ = 0;
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < n; ++j) {
        same_faithful += ya(i, j) == yb(i, j);
        same_fast += yc(i, j) == yd(i, j);
        differ += ya(i, j) != yd(i, j);
      }
    CHECK(same_faithful == m * n);
    CHECK(same_fast == m * n);
    CHECK(differ > m * n / 2);  // the activation quantization changes (almost) every output
  }
}

namespace {

/// The integer code of W[n, k] with its zero point removed (what mode::int8_activations multiplies).
template <class F>
int int_code(const qmatrix<F>& w, index_t n, index_t k) {
  if constexpr (F::packed4) {
    const int nib = (w.row_codes(n)[k / 2] >> (4 * (k & 1))) & 0xF;
    return F::has_zero ? nib - int(w.zeros()(n, k / F::group)) : (nib ^ 8) - 8;
  } else {
    return w.row_codes(n)[k];
  }
}

/// The offset an int4 code is stored with (code = nibble - offset): 8 symmetric, the zero point
/// asymmetric; 0 for int8.
template <class F>
int int_offset(const qmatrix<F>& w, index_t n, index_t k) {
  if constexpr (F::packed4)
    return F::has_zero ? int(w.zeros()(n, k / F::group)) : 8;
  else
    return 0;
}

}  // namespace

TEST_CASE_TEMPLATE("int8 activations (W8A8 / W4A8) equal the float64 integer reference, all paths", F,
                   MOELA_INTEGER_FORMATS) {
  std::mt19937 rng(21);
  const index_t k0 = F::kind == q::format_kind::int8_rowwise ? 301 : F::group == 256 ? 512 : odd_k<F>();
  // int4 G = 32: also K % 128 = 64 and 96, the AVX-512 kernel's other partial last chunks.
  std::vector<index_t> ks = {k0};
  if (F::packed4 && F::group == 32) ks.insert(ks.end(), {index_t{320}, index_t{352}});
  for (const index_t k : ks)
  for (index_t n : {index_t{1}, index_t{7}, index_t{201}}) {
    const index_t wg = F::group == 0 ? k : F::group, kb = (k + 127) / 128;
    const auto w = qmatrix<F>::quantize(random_matrix(rng, n, k, 0.05f).cview());
    const auto wd = w.dequantize();
    for (index_t m : {index_t{1}, index_t{2}, index_t{3}, index_t{4}, index_t{5}, index_t{17}}) {
      CAPTURE(k);
      CAPTURE(n);
      CAPTURE(m);
      const auto x = random_matrix(rng, m, k);
      tensor<std::int8_t, 2> xq({m, k});
      tensor<float, 2> xs({m, kb});
      q::quantize_activations_int8(x.cview(), xq.view(), xs.view(), 128);
      tensor<float, 2> y({m, n}), yp({m, n});
      matmul(y.view(), x.cview(), w, q::mode::int8_activations{});                          // AVX2 integer GEMV (M <= 4)
      matmul(cpu<xsimd::sse4_2>{}, yp.view(), x.cview(), w, q::mode::int8_activations{});  // portable path
      int bad = 0;
      for (index_t i = 0; i < m; ++i)
        for (index_t j = 0; j < n; ++j) {
          // Reference: exact integer sums per span (activation group ∩ weight group), scaled in
          // float64. The kernels' error: the fp32 product s_w * s_x (or, on the portable path,
          // the fp32 dequantized activation and weight), one rounding per accumulated term and
          // per add: |err| <= (K + 8) u Σ_k |q_k c_k| s_w s_x. The int4 kernel sums the stored
          // nibbles u = c + o (o: 8, or the zero point) and takes o Σ q off in fp32, so its terms
          // are bounded by Σ_k |q_k| (|c_k| + 2 o) instead.
          double ref = 0, mag = 0, fast = 0, qerr = 0;
          for (index_t a = 0; a < k;) {
            const index_t b = std::min({k, (a / wg + 1) * wg, (a / 128 + 1) * 128});
            std::int64_t p = 0, pm = 0;
            for (index_t t = a; t < b; ++t) {
              const std::int64_t prod = std::int64_t(xq(i, t)) * int_code(w, j, t);
              p += prod;
              pm += std::abs(std::int64_t(xq(i, t))) * (std::abs(int_code(w, j, t)) + 2 * int_offset(w, j, t));
            }
            const double sc = double(w.scale_at(j, a)) * double(xs(i, a / 128));
            ref += double(p) * sc;
            mag += double(pm) * sc;
            for (index_t t = a; t < b; ++t) {
              fast += double(x(i, t)) * double(wd(j, t));
              qerr += std::fabs(double(wd(j, t))) * double(xs(i, a / 128)) / 2;
            }
            a = b;
          }
          const double tol = double(k + 8) * u32 * mag + 1e-30;
          const bool ok = std::fabs(double(y(i, j)) - ref) <= tol && std::fabs(double(yp(i, j)) - ref) <= tol &&
                          // Each activation moved by at most s_x / 2: the distance to the
                          // unquantized product is bounded by Σ |w| s_x / 2 (+ the fp32 terms).
                          std::fabs(double(y(i, j)) - fast) <= qerr + tol + double(k + 2) * u32 * mag;
          if (!ok && bad++ < 5) {
            CAPTURE(i);
            CAPTURE(j);
            CHECK(double(y(i, j)) == doctest::Approx(ref).epsilon(0));
            CHECK(double(yp(i, j)) == doctest::Approx(ref).epsilon(0));
            CHECK(std::fabs(double(y(i, j)) - fast) <= qerr + tol);
          }
        }
      CHECK(bad == 0);
    }
  }
}

TEST_CASE_TEMPLATE("int8 activations, M > 4: every tile shape of the integer GEMM, spans not a multiple of 4", F,
                   q::int8_rowwise<>, q::int8_group<6>, q::int4_group<32>, q::int4_group_asym<64, moela::bf16>) {
  // M covers whole 6-row tiles with and without a tail; N one and two 16-row panels, full and
  // partial; K not a multiple of 4 (rowwise, and int8_group<6>, whose spans end at multiples of 6
  // and so take the fp32 path instead of the VNNI one). The packed weights take 64 codes per
  // step; K % 64 = 45 (rowwise) and 32 (int4_group<32>: K = 352) leave a tail for the row buffer.
  std::mt19937 rng(23);
  const index_t k = F::kind == q::format_kind::int4_group ? (F::group == 32 ? 352 : 320) : (F::group == 6 ? 198 : 301);
  const index_t wg = F::group == 0 ? k : F::group, kb = (k + 127) / 128;
  for (index_t n : {index_t{16}, index_t{33}, index_t{64}})
    for (index_t m : {index_t{6}, index_t{12}, index_t{40}}) {
      CAPTURE(n);
      CAPTURE(m);
      const auto w = qmatrix<F>::quantize(random_matrix(rng, n, k, 0.05f).cview());
      const auto x = random_matrix(rng, m, k);
      tensor<std::int8_t, 2> xq({m, k});
      tensor<float, 2> xs({m, kb});
      q::quantize_activations_int8(x.cview(), xq.view(), xs.view(), 128);
      tensor<float, 2> y({m, n}), yp({m, n});
      matmul(y.view(), x.cview(), w, q::mode::int8_activations{});
      matmul(cpu<xsimd::sse4_2>{}, yp.view(), x.cview(), w, q::mode::int8_activations{});
      int bad = 0;
      for (index_t i = 0; i < m; ++i)
        for (index_t j = 0; j < n; ++j) {
          // Exact integer span sums scaled in float64; the same bound as the test above.
          double ref = 0, mag = 0;
          for (index_t a = 0; a < k;) {
            const index_t b = std::min({k, (a / wg + 1) * wg, (a / 128 + 1) * 128});
            std::int64_t p = 0, pm = 0;
            for (index_t t = a; t < b; ++t) {
              p += std::int64_t(xq(i, t)) * int_code(w, j, t);
              pm += std::abs(std::int64_t(xq(i, t))) * (std::abs(int_code(w, j, t)) + 2 * int_offset(w, j, t));
            }
            const double sc = double(w.scale_at(j, a)) * double(xs(i, a / 128));
            ref += double(p) * sc;
            mag += double(pm) * sc;
            a = b;
          }
          const double tol = double(k + 8) * u32 * mag + 1e-30;
          if ((std::fabs(double(y(i, j)) - ref) > tol || std::fabs(double(yp(i, j)) - ref) > tol) && bad++ < 5) {
            CAPTURE(i);
            CAPTURE(j);
            CHECK(double(y(i, j)) == doctest::Approx(ref).epsilon(0));
            CHECK(double(yp(i, j)) == doctest::Approx(ref).epsilon(0));
          }
        }
      CHECK(bad == 0);
    }
}

TEST_CASE_TEMPLATE("int8_activation_rows: quantized once, then the same result as the int8_activations mode", F,
                   q::int8_rowwise<>, q::int8_group<64>, q::int4_group<32>, q::int4_group_asym<64>) {
  std::mt19937 rng(31);
  const index_t k = odd_k<F>() == 301 ? 301 : 192;
  const auto w1 = qmatrix<F>::quantize(random_matrix(rng, 37, k, 0.05f).cview());
  const auto w2 = qmatrix<F>::quantize(random_matrix(rng, 9, k, 0.05f).cview());
  q::int8_activation_rows xq;  // one object, reassigned: its buffers grow and are reused
  for (index_t m : {index_t{3}, index_t{1}, index_t{2}, index_t{4}, index_t{17}, index_t{0}}) {
    CAPTURE(m);
    const auto x = random_matrix(rng, m, k);
    xq.assign(x.cview());
    REQUIRE(xq.rows() == m);
    REQUIRE(xq.cols() == k);
    // Codes and scales are the grouped quantizer's.
    tensor<std::int8_t, 2> codes({m, k});
    tensor<float, 2> scales({m, (k + 127) / 128});
    q::quantize_activations_int8(x.cview(), codes.view(), scales.view(), q::int8_activation_group);
    int same_codes = 0, same_scales = 0, same_values = 0;
    for (index_t i = 0; i < m; ++i) {
      for (index_t c = 0; c < k; ++c) {
        same_codes += xq.codes()(i, c) == codes(i, c);
        // values: code * scale of its 128-wide group, one fp32 rounding
        same_values += xq.values()(i, c) == static_cast<float>(codes(i, c)) * scales(i, c / 128);
      }
      for (index_t g = 0; g < scales.extent(1); ++g) same_scales += xq.scales()(i, g) == scales(i, g);
    }
    CHECK(same_codes == m * k);
    CHECK(same_scales == m * scales.extent(1));
    CHECK(same_values == m * k);
    // Both weights from the one quantization, bit for bit what the mode gives.
    for (const auto* w : {&w1, &w2}) {
      tensor<float, 2> y({m, w->rows()}), want({m, w->rows()});
      matmul(y.view(), xq, *w);
      matmul(want.view(), x.cview(), *w, q::mode::int8_activations{});
      int same = 0;
      for (index_t i = 0; i < m; ++i)
        for (index_t j = 0; j < w->rows(); ++j) same += y(i, j) == want(i, j);
      CHECK(same == m * w->rows());
    }
  }
  // Shape errors name the shapes.
  xq.assign(random_matrix(rng, 2, k + 1).cview());
  tensor<float, 2> y({2, w1.rows()});
  CHECK_THROWS_WITH_AS(matmul(y.view(), xq, w1), doctest::Contains("K must match"), moela::error);
  xq.assign(random_matrix(rng, 3, k).cview());
  CHECK_THROWS_WITH_AS(matmul(y.view(), xq, w1), doctest::Contains("was expected"), moela::error);
}

TEST_CASE_TEMPLATE("bf16 activations mode: every tile shape, odd K, several K blocks", F, q::bf16, q::fp8_block<128, 128>,
                   q::fp8_block_e5m2<128, 128>, q::fp8_block<48, 64>, q::fp8_block<128, 3>) {
  // M: one tile row (6), tiles with each tail (5 = a tail alone, 13, 40), the GEMV (3); N: one
  // and two 16-row panels, full and partial; K odd (the padding pair) and K = 2301 > 2048 (two
  // packed K blocks; for FP8 the block boundary at 2048 is a weight block boundary). The odd
  // block width (fp8_block<128, 3>) cannot be split in pairs and takes the fast path.
  std::mt19937 rng(29);
  for (index_t k : {index_t{301}, index_t{2301}})
    for (index_t n : {index_t{16}, index_t{33}, index_t{64}})
      for (index_t m : {index_t{3}, index_t{5}, index_t{6}, index_t{13}, index_t{40}}) {
        if (k > 2048 && m != 13) continue;  // the long K once, with a tail
        check_bf16_mode<F>(rng, m, k, n);
      }
}

TEST_CASE("bf16 activations mode: a NaN FP8 weight code makes exactly its row's outputs NaN") {
  std::mt19937 rng(6);
  using F = q::fp8_block<128, 128>;
  const index_t n = 40, k = 301;
  const auto wq = qmatrix<F>::quantize(random_matrix(rng, n, k, 0.05f).cview());
  tensor<fp8_e4m3, 2> codes({n, k});
  tensor<float, 2> scales({wq.scale_rows(), wq.scale_cols()});
  for (index_t r = 0; r < n; ++r)
    for (index_t c = 0; c < k; ++c) codes(r, c) = wq.row_codes(r)[c];
  for (index_t r = 0; r < scales.extent(0); ++r)
    for (index_t c = 0; c < scales.extent(1); ++c) scales(r, c) = wq.scale_data()[r * wq.scale_cols() + c];
  codes(2, 17) = fp8_e4m3::from_bits(0x7F);   // a 32-code vector of the pack
  codes(21, 300) = fp8_e4m3::from_bits(0xFF); // the scalar tail of the pack
  const auto w = qmatrix<F>::borrow(codes.cview(), scales.cview());
  for (index_t m : {index_t{2}, index_t{7}}) {
    const auto x = random_matrix(rng, m, k);
    tensor<float, 2> y({m, n});
    matmul(y.view(), x.cview(), w, q::mode::bf16_activations{});
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < n; ++j) {
        CAPTURE(j);
        CHECK(std::isnan(y(i, j)) == (j == 2 || j == 21));
      }
  }
}

TEST_CASE("with_mode: int4_group_a8 defaults to int8 activations, fast still selectable") {
  std::mt19937 rng(8);
  const index_t n = 70, k = 256;
  const auto w = qmatrix<q::int4_group<32>>::quantize(random_matrix(rng, n, k, 0.05f).cview());
  const auto wa = qmatrix<q::int4_group_a8<32>>::borrow(w.codes(), w.scales());
  for (index_t m : {index_t{1}, index_t{6}}) {
    const auto x = random_matrix(rng, m, k);
    tensor<float, 2> ya({m, n}), yb({m, n}), yc({m, n}), yd({m, n});
    matmul(ya.view(), x.cview(), wa);
    matmul(yb.view(), x.cview(), w, q::mode::int8_activations{});
    matmul(yc.view(), x.cview(), wa, q::mode::fast{});
    matmul(yd.view(), x.cview(), w);
    int same_a8 = 0, same_fast = 0, differ = 0;
    for (index_t i = 0; i < m; ++i)
      for (index_t j = 0; j < n; ++j) {
        same_a8 += ya(i, j) == yb(i, j);
        same_fast += yc(i, j) == yd(i, j);
        differ += ya(i, j) != yd(i, j);
      }
    CHECK(same_a8 == m * n);
    CHECK(same_fast == m * n);
    CHECK(differ > m * n / 2);  // the activation quantization changes (almost) every output
  }
}

TEST_CASE("matmul: the backend tag overload and a strided x give the same result") {
  std::mt19937 rng(3);
  const auto w = qmatrix<q::int8_group<32>>::quantize(random_matrix(rng, 40, 96, 0.1f).cview());
  const auto big = random_matrix(rng, 6, 200);
  const_view<float, 2> x = big.cview().slice(1, 10, 106);  // rows of 96, stride 200
  tensor<float, 2> xc({6, 96});
  for (index_t i = 0; i < 6; ++i)
    for (index_t t = 0; t < 96; ++t) xc(i, t) = x(i, t);
  tensor<float, 2> y1({6, 40}), y2({6, 40});
  matmul(cpu<>{}, y1.view(), x, w);
  matmul(y2.view(), xc.cview(), w);
  for (index_t i = 0; i < 6; ++i)
    for (index_t j = 0; j < 40; ++j) CHECK(y1(i, j) == y2(i, j));
  // A non-contiguous x (column stride 2) is copied first.
  const auto wide = random_matrix(rng, 2, 192);
  const_view<float, 2> xs(wide.data(), {2, 96}, {192, 2});
  tensor<float, 2> xsc({2, 96});
  for (index_t i = 0; i < 2; ++i)
    for (index_t t = 0; t < 96; ++t) xsc(i, t) = xs(i, t);
  tensor<float, 2> y3({2, 40}), y4({2, 40});
  matmul(y3.view(), xs, w);
  matmul(y4.view(), xsc.cview(), w);
  for (index_t i = 0; i < 2; ++i)
    for (index_t j = 0; j < 40; ++j) CHECK(y3(i, j) == y4(i, j));
}

TEST_CASE("matmul: bad shapes throw moela::error naming the operation and shapes") {
  std::mt19937 rng(1);
  const auto w = qmatrix<q::fp8_block<128, 128>>::quantize(random_matrix(rng, 10, 20).cview());
  tensor<float, 2> x({3, 21}), y({3, 10}), ybad({3, 11}), xok({3, 20});
  try {
    matmul(y.view(), x.cview(), w);
    FAIL("no error");
  } catch (const moela::error& e) {
    const std::string m = e.what();
    CHECK(m.find("matmul") != std::string::npos);
    CHECK(m.find("[3, 21]") != std::string::npos);
    CHECK(m.find("[10, 20]") != std::string::npos);
  }
  CHECK_THROWS_AS(matmul(ybad.view(), xok.cview(), w), moela::error);
  tensor<float, 2> ywide({3, 20});
  tensor_view<float, 2> ystrided(ywide.data(), {3, 10}, {20, 2});  // columns not contiguous
  CHECK_THROWS_AS(matmul(ystrided, xok.cview(), w), moela::error);
}

TEST_CASE("matmul: y overlapping x is an error; qmatrix codes must match cols") {
  std::mt19937 rng(5);
  const auto w = qmatrix<quant::f32>::quantize(moela_test::random_matrix(rng, 16, 16, 1.0f).cview());
  tensor<float, 2> buf({2, 16});
  CHECK_THROWS_WITH_AS(matmul(buf.view(), buf.cview(), w), doctest::Contains("matmul: y [2, 16] overlaps x [2, 16]"),
                       moela::error);
  // Two rows of one buffer: y = row 1, x = row 0 do not overlap.
  const tensor_view<float, 2> y(buf.data() + 16, {1, 16}, {16, 1});
  const const_view<float, 2> x(buf.data(), {1, 16}, {16, 1});
  CHECK_NOTHROW(matmul(y, x, w));
  // The owning constructor's cols must agree with the codes (int4: two per byte).
  CHECK_THROWS_WITH_AS(qmatrix<quant::f32>(tensor<float, 2>({2, 4}), {}, {}, 1000),
                       "qmatrix: cols = 1000 does not match codes of shape [2, 4]", moela::error);
  CHECK_THROWS_WITH_AS((qmatrix<quant::int4_group<32>>(tensor<std::uint8_t, 2>({2, 16}), tensor<float, 2>({2, 1}), {}, 64)),
                       "qmatrix: cols = 64 does not match codes of shape [2, 16] (int4: two codes per byte)",
                       moela::error);
  CHECK_NOTHROW((qmatrix<quant::int4_group<32>>(tensor<std::uint8_t, 2>({2, 16}), tensor<float, 2>({2, 1}), {}, 32)));
}

TEST_CASE_TEMPLATE("bf16 activations mode with int4 weights (the W4A16 GEMV): float64 reference, all M", F,
                   q::int4_group<32>, q::int4_group<64, q::int4_asym>, q::int4_group<128, q::int4_sym, moela::bf16>) {
  // K: odd_k (a last partial 128-code chunk for G = 32 and 64) and 2048 + 3 G (several full
  // chunks, then a partial one, or for G = 128 whole chunks only); N: 1, odd (a pass of fewer
  // rows than the kernel's 4 for M = 1, 2 for M > 1) and a multiple of them; M = 1..4 (the GEMV
  // kernels), 5 and 13 (blocks of 4 activation rows and a last shorter one) and, past
  // bf16_gemv_max_rows, 300 (the fast mode's GEMM on the rounded activations).
  std::mt19937 rng(31);
  for (index_t k : {odd_k<F>(), index_t{2048 + 3 * F::group}})
    for (index_t n : {index_t{1}, index_t{33}, index_t{64}})
      for (index_t m : {index_t{1}, index_t{2}, index_t{3}, index_t{4}, index_t{5}, index_t{13}, index_t{300}})
        if (m < 300 || (k < 2048 && n == 33)) check_bf16_mode<F>(rng, m, k, n);
}

TEST_CASE("int4_group_a16 defaults to bf16 activations: the result differs from the fast mode") {
  // The fast mode multiplies the fp32 activations, bf16_activations their bf16 roundings (each
  // checked against float64 above): with x not exact in bf16 the W4A16 result must differ, or
  // the format's default would silently be the fast mode.
  std::mt19937 rng(32);
  const index_t n = 48, k = 512;
  const auto w = qmatrix<q::int4_group_a16<32>>::quantize(random_matrix(rng, n, k, 0.05f).cview());
  const auto x = random_matrix(rng, 1, k);
  tensor<float, 2> ya({1, n}), yf({1, n});
  matmul(ya.view(), x.cview(), w);
  matmul(yf.view(), x.cview(), w, q::mode::fast{});
  int differ = 0;
  for (index_t j = 0; j < n; ++j) differ += ya(0, j) != yf(0, j);
  CHECK(differ > n / 2);
}
