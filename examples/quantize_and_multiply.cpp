// Quantized weights with moela's public headers: borrow a DeepSeek-style FP8 weight straight
// out of a safetensors checkpoint (zero copy), multiply in the fast and the DeepSeek-faithful
// FP8 modes, re-quantize the same weight to other formats and compare size and error, with
// fp32 activations (weight-only quantization) and with int8 activations (W8A8 / W4A8), the
// latter also quantized once and shared by two weights (quant::int8_activation_rows); then
// zero-copy row views (row_slice) and one shared buffer for several matrices (share_storage).
//
// usage: quantize_and_multiply [model.safetensors] [tensor name]
// ctest-args: examples/models/tiny-fortunes-fp8/model.safetensors model.layers.0.mlp.down_proj.weight
#include <moela/core/build_info.hpp>
#include <moela/io/safetensors.hpp>
#include <moela/quant.hpp>

#include <array>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>

namespace q = moela::quant;

namespace {

/// max |a - b| / max |b|
double rel_err(const moela::tensor<float, 2>& a, const moela::tensor<float, 2>& b) {
  double num = 0, den = 0;
  for (std::size_t i = 0; i < a.flat().size(); ++i) {
    num = std::max(num, std::fabs(double(a.flat()[i]) - double(b.flat()[i])));
    den = std::max(den, std::fabs(double(b.flat()[i])));
  }
  return num / den;
}

template <class F>
void report(const char* name, const moela::tensor<float, 2>& w_f32, const moela::tensor<float, 2>& x,
            const moela::tensor<float, 2>& y_ref) {
  const auto w = moela::qmatrix<F>::quantize(w_f32.cview());
  moela::tensor<float, 2> y({x.extent(0), w.rows()});
  moela::matmul(y.view(), x.cview(), w);
  std::printf("  %-22s %8zu bytes   output error vs f32: %.2e", name, w.bytes(), rel_err(y, y_ref));
  if constexpr (q::integer_format<F>) {
    // int8 activations in 1x128 groups, integer products (the fast decode path on CPUs); a
    // with_mode<F, mode::int8_activations> format (e.g. int4_group_a8<32>) makes it the default.
    moela::matmul(y.view(), x.cview(), w, q::mode::int8_activations{});
    std::printf("   with int8 activations: %.2e", rel_err(y, y_ref));
  }
  if constexpr (q::bf16_exact_format<F>) {
    // activations rounded to bf16, exact products with the weight codes (on AVX512-BF16 vdpbf16ps:
    // the GEMM for bf16 and FP8 with M > 4, the GEMV for int4 up to 256 rows); a
    // with_mode<F, mode::bf16_activations> format (bf16_a16, int4_group_a16<32>) makes it the default.
    moela::matmul(y.view(), x.cview(), w, q::mode::bf16_activations{});
    std::printf("   with bf16 activations: %.2e", rel_err(y, y_ref));
  }
  std::printf("\n");
}

}  // namespace

int main(int argc, char** argv) {
  std::printf("%s\n", moela::build_info().summary().c_str());
  std::string path = MOELA_SOURCE_DIR "/examples/models/tiny-fortunes-fp8/model.safetensors";
  std::string name = "model.layers.0.mlp.down_proj.weight";
  if (argc > 1) path = argv[1][0] == '/' ? argv[1] : std::string(MOELA_SOURCE_DIR "/") + argv[1];
  if (argc > 2) name = argv[2];
  try {
    moela::io::safetensors_file file(path);
    // 1. Zero-copy FP8 weight: E4M3 codes [N, K] + weight_scale_inv [ceil(N/128), ceil(K/128)].
    using fp8 = moela::qmatrix<q::fp8_block<128, 128>>;
    const fp8 w = fp8::borrow(file.view<moela::fp8_e4m3, 2>(name), file.view<float, 2>(name + "_scale_inv"));
    std::printf("%s: [%ld, %ld] fp8_block<128,128>, %zu bytes, borrowed: %s\n", name.c_str(), w.rows(), w.cols(),
                w.bytes(), w.owns_storage() ? "no" : "yes");

    // 2. A batch of 3 activation rows.
    std::mt19937 rng(1);
    std::normal_distribution<float> nd(0.f, 1.f);
    moela::tensor<float, 2> x({3, w.cols()});
    for (auto& v : x.flat()) v = nd(rng);

    // 3. Reference: the dequantized weight in f32 (exactly the FP8 values times their scales).
    const auto w_f32 = w.dequantize();
    moela::tensor<float, 2> y_ref({3, w.rows()}), y_fast({3, w.rows()}), y_faithful({3, w.rows()});
    moela::matmul(y_ref.view(), x.cview(), moela::qmatrix<q::f32>::borrow(w_f32.cview()));
    moela::matmul(y_fast.view(), x.cview(), w);                                // weight-only FP8
    moela::matmul(y_faithful.view(), x.cview(), w, q::fp8_mode::faithful{});  // W8A8, DeepSeek numerics
    std::printf("fast mode      error vs f32 weights: %.2e (fp32 rounding only)\n", rel_err(y_fast, y_ref));
    std::printf("faithful mode  error vs f32 weights: %.2e (adds 1x128 E4M3 activation quantization)\n",
                rel_err(y_faithful, y_ref));
    moela::tensor<float, 2> y_bf16({3, w.rows()});
    moela::matmul(y_bf16.view(), x.cview(), w, q::mode::bf16_activations{});  // W8A16: FP8 codes x bf16 x
    std::printf("bf16 activations error vs f32 weights: %.2e (adds the bf16 rounding of x)\n", rel_err(y_bf16, y_ref));
    // The same tensors as quant::fp8_block_w8a8: the faithful mode becomes the default, which is
    // how a whole model runs W8A8 (deepseek_model<quant::fp8_block_w8a8, ...>).
    const auto w8a8 = moela::qmatrix<q::fp8_block_w8a8>::borrow(w.codes(), w.scales());
    moela::tensor<float, 2> y_w8a8({3, w.rows()});
    moela::matmul(y_w8a8.view(), x.cview(), w8a8);
    const bool same_w8a8 = rel_err(y_w8a8, y_faithful) == 0;
    std::printf("fp8_block_w8a8 (faithful by default) %s the faithful mode\n", same_w8a8 ? "equals" : "DIFFERS FROM");

    // 4. The same weight in other formats.
    std::printf("re-quantized from the dequantized FP8 weight:\n");
    report<q::bf16>("bf16", w_f32, x, y_ref);
    report<q::int8_rowwise<>>("int8_rowwise", w_f32, x, y_ref);
    report<q::int8_group<64>>("int8_group<64>", w_f32, x, y_ref);
    report<q::int4_group<32>>("int4_group<32>", w_f32, x, y_ref);
    report<q::int4_group_asym<64>>("int4_group_asym<64>", w_f32, x, y_ref);
    // 5. Activations quantized once for several int8/int4 weights (what the MoE experts do per
    //    token block): the same result as the int8_activations mode, one quantization.
    const auto w_int8 = moela::qmatrix<q::int8_rowwise<>>::quantize(w_f32.cview());
    const auto w_int4 = moela::qmatrix<q::int4_group<32>>::quantize(w_f32.cview());
    const q::int8_activation_rows xq(x.cview());
    moela::tensor<float, 2> y8({3, w.rows()}), y4({3, w.rows()}), y4_mode({3, w.rows()});
    moela::matmul(y8.view(), xq, w_int8);
    moela::matmul(y4.view(), xq, w_int4);
    moela::matmul(y4_mode.view(), x.cview(), w_int4, q::mode::int8_activations{});
    const bool same_a8 = rel_err(y4, y4_mode) == 0;
    std::printf("one int8_activation_rows for int8 and int4 weights: errors %.2e, %.2e; %s the mode\n",
                rel_err(y8, y_ref), rel_err(y4, y_ref), same_a8 ? "equals" : "DIFFERS FROM");
    // 6. Views and storage: row_slice views rows [r0, r1) of a weight without a copy (r0 on a
    //    scale block boundary: 128 rows for FP8), so two matmuls on the halves give the whole
    //    product; share_storage moves several matrices into one buffer (2 MiB aligned, huge-page
    //    advised), values unchanged, which is what an MoE layer does with its experts.
    const moela::index_t half = (w.rows() / 2 + 127) / 128 * 128;
    bool same_views = half < w.rows();
    if (same_views) {
      moela::tensor<float, 2> y_top({3, half}), y_bottom({3, w.rows() - half});
      moela::matmul(y_top.view(), x.cview(), moela::row_slice(w, 0, half));
      moela::matmul(y_bottom.view(), x.cview(), moela::row_slice(w, half, w.rows()));
      for (moela::index_t i = 0; i < 3; ++i)
        for (moela::index_t j = 0; j < w.rows(); ++j)
          same_views = same_views && (j < half ? y_top(i, j) : y_bottom(i, j - half)) == y_fast(i, j);
    }
    auto first = w_int4, second = w_int4;  // two matrices (copies here), one buffer after the call
    moela::qmatrix<q::int4_group<32>>::share_storage(std::array{&first, &second});
    for (const auto* m : {&first, &second}) {
      moela::matmul(y4_mode.view(), xq, *m);
      same_views = same_views && rel_err(y4_mode, y4) == 0;
    }
    std::printf("row_slice halves and share_storage copies: %s the whole weights\n", same_views ? "equal" : "DIFFER FROM");
    const bool ok =
        rel_err(y_fast, y_ref) < 1e-5 && rel_err(y_faithful, y_ref) < 0.2 && same_w8a8 && same_a8 && same_views;
    std::printf("%s\n", ok ? "ok" : "UNEXPECTED ERROR LEVEL");
    return ok ? 0 : 1;
  } catch (const moela::error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 2;
  }
}
