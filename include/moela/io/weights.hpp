#pragma once
/// \file moela/io/weights.hpp
/// `weight_loader`: turns checkpoint tensors into the weight objects of the model's parts,
/// in the weight format the model type asks for.
///
///  * `matrix<Format>(name, rows, cols)` -> `qmatrix<Format>` for a linear weight `[out, in]`:
///    - stored already in `Format` (BF16 for `quant::bf16`, F32 for `quant::f32`, F8_E4M3 +
///      `<name>_scale_inv` with the same block shape for `quant::fp8_block<BR, BC>`): the qmatrix
///      borrows the checkpoint's memory-mapped bytes (zero copy; counted in `stats().borrowed`);
///    - otherwise converted while loading: the stored tensor is widened to FP32 (FP8 weights
///      dequantized exactly as `code x weight_scale_inv` of their block) and quantized to
///      `Format` (counted in `stats().converted`).
///  * `vector(name, n)` -> FP32 copy of a 1-D tensor (norm weights, routing bias: small).
///  * `floats(name, rows, cols)` -> FP32 copy of a 2-D tensor, FP8 dequantized.
///
/// Shapes are checked against what the config implies; a mismatch, a missing tensor, a missing
/// or mis-shaped `weight_scale_inv`, or a dtype that cannot be a weight throws `moela::error`
/// naming the file, the tensor and both shapes. An optional progress_bar advances by the bytes
/// of every tensor read.

#include <cmath>
#include <concepts>
#include <cstdint>
#include <string>
#include <vector>

#include "moela/io/checkpoint.hpp"
#include "moela/backend/cpu/parallel_for.hpp"
#include "moela/quant.hpp"

namespace moela::io {

/// Bytes used in place vs converted while loading.
struct load_stats {
  std::size_t borrowed = 0;   ///< checkpoint bytes the model uses directly (zero copy)
  std::size_t converted = 0;  ///< checkpoint bytes converted into owned storage
  std::size_t tensors = 0;
};

namespace detail {
/// DeepSeek's checkpoint format: E4M3 codes with one float scale per block_rows x group block.
template <class F>
concept fp8_block_format = requires {
  typename F::code_type;
  F::block_rows;
  F::group;
} && std::is_same_v<typename F::code_type, moela::fp8_e4m3> && F::has_scales;
}  // namespace detail

/// Asks a weight_loader for random weights instead of a checkpoint (benchmarks, examples).
struct random_weights {
  std::uint64_t seed = 1;
};

class weight_loader {
 public:
  /// `block_rows x block_cols` is the FP8 block shape of the checkpoint (quantization_config).
  explicit weight_loader(const checkpoint& ckpt, index_t block_rows = 128, index_t block_cols = 128,
                         progress_bar* progress = nullptr)
      : ckpt_(&ckpt), br_(block_rows), bc_(block_cols), progress_(progress) {}

  /// Random weights of the requested shapes: every linear weight uniform with variance
  /// 1/cols (so activations keep their scale through the layers), norm weights 1, biases 0.
  /// Deterministic for a seed and tensor name; converted to the requested format like a
  /// checkpoint tensor that is not stored in it.
  explicit weight_loader(random_weights r) : seed_(r.seed) {}

  bool is_random() const { return ckpt_ == nullptr; }
  const checkpoint& source() const {
    check(ckpt_ != nullptr, "weight_loader: random weights have no checkpoint");
    return *ckpt_;
  }
  const load_stats& stats() const { return stats_; }

  /// True when `name` is stored as FP8 with a `weight_scale_inv` sibling.
  bool is_fp8(const std::string& name) const {
    return ckpt_ && ckpt_->at(name).type == dtype::f8_e4m3 && ckpt_->contains(scale_name(name));
  }

  /// A linear weight `[rows, cols]` in `Format` (borrowed where stored in Format, else converted).
  template <class Format>
  qmatrix<Format> matrix(const std::string& name, index_t rows, index_t cols) {
    using Q = qmatrix<Format>;
    if (!ckpt_) {
      ++stats_.tensors;
      auto f = random_matrix(name, rows, cols);
      return Q::quantize(f.cview());
    }
    const auto& ckpt_ = *this->ckpt_;
    const auto& e = ckpt_.expect(name, {rows, cols});
    ++stats_.tensors;
    if constexpr (requires { typename Format::code_type; }) {
      using code = typename Format::code_type;
      if constexpr (requires(const_view<code, 2> v) { Q::borrow(v); } && !detail::fp8_block_format<Format>) {
        if (dtype_matches<code>(e.type) && aligned<code>(e)) {
          advance(e.nbytes);
          stats_.borrowed += e.nbytes;
          return Q::borrow(ckpt_.view<code, 2>(name));
        }
      }
    }
    if constexpr (detail::fp8_block_format<Format>) {
      if (e.type == dtype::f8_e4m3 && ckpt_.contains(scale_name(name)) && Format::block_rows == br_ &&
          Format::group == bc_ && aligned<float>(ckpt_.at(scale_name(name)))) {
        const auto& s = check_scales(name, rows, cols);
        advance(e.nbytes + s.nbytes);
        stats_.borrowed += e.nbytes + s.nbytes;
        return Q::borrow(ckpt_.view<fp8_e4m3, 2>(name), ckpt_.view<float, 2>(scale_name(name)));
      }
    }
    auto f = floats_impl(name, rows, cols);
    return Q::quantize(f.cview());
  }

  /// FP32 copy of a 2-D tensor `[rows, cols]`, FP8 weights dequantized exactly.
  tensor<float, 2> floats(const std::string& name, index_t rows, index_t cols) {
    if (!ckpt_) return ++stats_.tensors, random_matrix(name, rows, cols);
    ckpt_->expect(name, {rows, cols});
    ++stats_.tensors;
    return floats_impl(name, rows, cols);
  }

  /// FP32 copy of a 1-D tensor of length n.
  tensor<float, 1> vector(const std::string& name, index_t n) {
    ++stats_.tensors;
    if (!ckpt_) {
      tensor<float, 1> v({n});
      const bool norm = name.find("norm") != std::string::npos, bias = name.find("bias") != std::string::npos;
      for (index_t i = 0; i < n; ++i) v(i) = norm ? 1.f : bias ? 0.f : 0.f;
      return v;
    }
    const auto& e = ckpt_->expect(name, {n});
    advance(e.nbytes);
    stats_.converted += e.nbytes;
    return ckpt_->to_float<1>(name);
  }

  static std::string scale_name(const std::string& weight) { return weight + "_scale_inv"; }

 private:
  template <class T>
  static bool aligned(const tensor_entry& e) {
    return reinterpret_cast<std::uintptr_t>(e.data) % alignof(T) == 0;
  }

  tensor<float, 2> random_matrix(const std::string& name, index_t rows, index_t cols) const {
    std::uint64_t h = 1469598103934665603ull ^ seed_;
    for (unsigned char c : name) h = (h ^ c) * 1099511628211ull;
    tensor<float, 2> w({rows, cols});
    const float a = std::sqrt(3.0f / static_cast<float>(cols));  // uniform(-a, a) has variance 1/cols
    parallel_for(rows, [&](index_t r0, index_t r1) {
      for (index_t r = r0; r < r1; ++r) {
        std::uint64_t x = h + static_cast<std::uint64_t>(r) * 0x9e3779b97f4a7c15ull;
        float* o = &w(r, 0);
        for (index_t c = 0; c < cols; ++c) {
          x ^= x << 13;  // xorshift64
          x ^= x >> 7;
          x ^= x << 17;
          o[c] = a * (static_cast<float>(x >> 40) * (2.0f / 16777216.0f) - 1.0f);
        }
      }
    });
    return w;
  }

  const tensor_entry& check_scales(const std::string& name, index_t rows, index_t cols) const {
    const auto& ckpt_ = *this->ckpt_;
    const std::string sn = scale_name(name);
    const index_t sr = (rows + br_ - 1) / br_, sc = (cols + bc_ - 1) / bc_;
    const auto& s = ckpt_.expect(sn, {sr, sc});
    check(s.type == dtype::f32, "checkpoint: '", ckpt_.file_of(sn).path(), "' tensor '", sn, "' is ",
          dtype_name(s.type), "; weight_scale_inv must be F32");
    return s;
  }

  tensor<float, 2> floats_impl(const std::string& name, index_t rows, index_t cols) {
    const auto& ckpt_ = *this->ckpt_;
    const auto& e = ckpt_.at(name);
    if (e.type == dtype::f8_e4m3 || e.type == dtype::f8_e5m2) {
      const std::string sn = scale_name(name);
      check(ckpt_.contains(sn), "checkpoint: '", ckpt_.file_of(name).path(), "' tensor '", name,
            "' is FP8 but has no '", sn, "'");
      const auto& s = check_scales(name, rows, cols);
      advance(e.nbytes + s.nbytes);
      stats_.converted += e.nbytes + s.nbytes;
      tensor<float, 2> w = ckpt_.to_float<2>(name);
      const auto sv = ckpt_.view<float, 2>(sn);
      for (index_t r = 0; r < rows; ++r)
        for (index_t c = 0; c < cols; ++c) w(r, c) *= sv(r / br_, c / bc_);
      return w;
    }
    check(e.type == dtype::f32 || e.type == dtype::bf16 || e.type == dtype::f16 || e.type == dtype::f64,
          "checkpoint: '", ckpt_.file_of(name).path(), "' tensor '", name, "' has dtype ", dtype_name(e.type),
          ", which is not a weight type");
    advance(e.nbytes);
    stats_.converted += e.nbytes;
    return ckpt_.to_float<2>(name);
  }

  void advance(std::size_t n) {
    if (progress_) progress_->step(n);
  }

  const checkpoint* ckpt_ = nullptr;
  index_t br_ = 128, bc_ = 128;
  progress_bar* progress_ = nullptr;
  std::uint64_t seed_ = 1;
  load_stats stats_;
};

}  // namespace moela::io
