#pragma once
/// \file moela/quant/qmatrix.hpp
/// `moela::qmatrix<Format>`: a (possibly quantized) weight matrix `W[N = out, K = in]`, the
/// PyTorch `Linear` layout, in one of the formats of `moela/quant/formats.hpp`.
///
/// Storage (all row-major, K contiguous):
///  - codes  `[N, K]` of `Format::code_type` (int4: `[N, K/2]` bytes, two codes per byte);
///  - scales `[scale_rows, scale_cols]` of `Format::scale_type` (see formats.hpp);
///  - zeros  `[N, K/G]` uint8 (asymmetric int4 only).
///
/// A qmatrix either owns its storage (`quantize`, the tensor-taking constructors) or borrows
/// external memory (`borrow`, e.g. a memory-mapped safetensors file; the memory must outlive
/// the qmatrix and every copy of it). Copies are cheap and share the (immutable) storage.
///
/// `row_slice(w, r0, r1)` views rows `[r0, r1)` of `w` without a copy (`r0` on a scale block
/// boundary): MoE tasks and the absorbed MLA heads multiply with parts of one matrix this way.
///
/// Errors (`moela::error`): shape mismatches between codes and scales, a group size that does
/// not divide K where the format needs it, non-contiguous rows, empty matrices.
///
/// \code
///   // zero-copy over a DeepSeek FP8 checkpoint tensor and its weight_scale_inv:
///   auto w = moela::qmatrix<moela::quant::fp8_block<128, 128>>::borrow(
///       file.view<moela::fp8_e4m3, 2>("...q_a_proj.weight"),
///       file.view<float, 2>("...q_a_proj.weight_scale_inv"));
///   std::vector<float> row(w.cols());
///   w.dequantize_row(0, row);                 // float(code) * scale_inv
/// \endcode

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <span>
#include <type_traits>
#include <utility>

#include "moela/backend/cpu/parallel_for.hpp"
#include "moela/core/error.hpp"
#include "moela/core/minifloat.hpp"
#include "moela/core/tensor.hpp"
#include "moela/quant/formats.hpp"

namespace moela {

namespace quant::detail {

template <class S>
inline float scale_to_float(S s) {
  if constexpr (std::is_same_v<S, float>) return s;
  else return s.to_float();
}
template <class S>
inline S scale_from_float(float f) {
  if constexpr (std::is_same_v<S, float>) return f;
  else return S(f);
}
/// Round to nearest, ties to even (independent of the FP environment's rounding mode).
inline float rne(float v) {
  if (std::fabs(v - std::trunc(v)) == 0.5f) return 2.0f * std::round(v * 0.5f);  // tie: to even
  return std::round(v);
}

}  // namespace quant::detail

/// A weight matrix `[rows = out_features, cols = in_features]` in format `Format`.
template <class Format>
class qmatrix {
  static_assert(quant::weight_format<Format>, "qmatrix: Format is not a moela::quant format");

 public:
  using format = Format;
  using code_type = typename Format::code_type;
  using scale_type = typename Format::scale_type;
  static constexpr quant::format_kind kind = Format::kind;

  qmatrix() = default;

  // ---- owning construction -------------------------------------------------------------------

  /// Owns `codes` (`[N, K]`, int4: `[N, K/2]` bytes) and, for scaled formats, `scales` (shape as
  /// in formats.hpp) and, for asymmetric int4, `zeros`. `cols` is K: -1 takes it from the codes
  /// (int4: twice their width); otherwise it must match them (int4: K / 2 bytes per row).
  /// Errors (moela::error): codes, scales or zeros of the wrong shape for the format.
  explicit qmatrix(tensor<code_type, 2> codes, tensor<scale_type, 2> scales = {},
                   tensor<std::uint8_t, 2> zeros = {}, index_t cols = -1) {
    auto st = std::make_shared<storage>();
    st->codes = std::move(codes);
    st->scales = std::move(scales);
    st->zeros = std::move(zeros);
    const index_t width = st->codes.extent(1);
    const index_t k = cols >= 0 ? cols : (Format::packed4 ? 2 * width : width);
    check(cols < 0 || (Format::packed4 ? (k + 1) / 2 : k) == width, "qmatrix: cols = ", cols, " does not match codes of shape ",
          to_string(st->codes.shape()), Format::packed4 ? " (int4: two codes per byte)" : "");
    init(st->codes.cview(), st->scales.cview(), st->zeros.cview(), k, "qmatrix");
    keep_ = std::move(st);
  }

  // ---- non-owning construction -----------------------------------------------------------------

  /// Dense formats: views `w[N, K]` (rows must be contiguous; row stride may be larger than K).
  static qmatrix borrow(const_view<code_type, 2> w)
    requires(!Format::has_scales)
  {
    qmatrix q;
    q.init(w, {}, {}, w.extent(1), "qmatrix::borrow");
    return q;
  }
  /// FP8 / INT8 formats: codes `[N, K]` and scales (fp8: the checkpoint's `weight_scale_inv`
  /// `[ceil(N/BR), ceil(K/BC)]`; int8_rowwise `[N, 1]`; int8_group `[N, K/G]`).
  static qmatrix borrow(const_view<code_type, 2> codes, const_view<scale_type, 2> scales)
    requires(Format::has_scales && !Format::packed4)
  {
    qmatrix q;
    q.init(codes, scales, {}, codes.extent(1), "qmatrix::borrow");
    return q;
  }
  /// INT4 formats: packed codes `[N, K/2]`, scales `[N, K/G]`, zeros `[N, K/G]` (asymmetric only).
  static qmatrix borrow(const_view<std::uint8_t, 2> packed, const_view<scale_type, 2> scales,
                        const_view<std::uint8_t, 2> zeros = {})
    requires(Format::packed4)
  {
    qmatrix q;
    q.init(packed, scales, zeros, 2 * packed.extent(1), "qmatrix::borrow");
    return q;
  }

  /// Any format: borrows `codes` and whichever of `scales` and `zeros` the format has (the others
  /// are ignored, so empty views do): the one call for code that treats every format alike
  /// (`row_slice`, `share_storage`, copies into other memory). Same checks as `borrow`.
  static qmatrix borrow_parts(const_view<code_type, 2> codes, const_view<scale_type, 2> scales,
                              const_view<std::uint8_t, 2> zeros) {
    qmatrix q;
    q.init(codes, scales, zeros, Format::packed4 ? 2 * codes.extent(1) : codes.extent(1), "qmatrix::borrow");
    return q;
  }

  // ---- quantization ----------------------------------------------------------------------------

  /// Quantizes an fp32 matrix `[N, K]` (see formats.hpp for each format's rule).
  /// Rows are quantized in parallel (moela::parallel_for).
  static qmatrix quantize(const_view<float, 2> w);
  /// Quantizes a bf16 matrix `[N, K]` (widened exactly to fp32 first; lossless for quant::bf16).
  static qmatrix quantize(const_view<moela::bf16, 2> w) {
    check_nonempty("qmatrix::quantize", "w", w);
    tensor<float, 2> f({w.extent(0), w.extent(1)});
    for (index_t r = 0; r < w.extent(0); ++r)
      for (index_t c = 0; c < w.extent(1); ++c) f(r, c) = w(r, c).to_float();
    return quantize(f.cview());
  }

  // ---- shape and storage -------------------------------------------------------------------------

  index_t rows() const { return rows_; }
  index_t cols() const { return cols_; }
  /// Bytes of codes + scales + zero points (what a GEMV streams).
  std::size_t bytes() const { return code_bytes() + scale_bytes() + zero_bytes(); }
  /// True when this qmatrix owns its storage, alone or shared (false for `borrow`).
  bool owns_storage() const { return keep_ != nullptr; }

  /// Moves the storage of every matrix in `ms` into one buffer that they then share (values and
  /// shapes unchanged; a borrowed matrix becomes an owning one). One large tensor is 2 MiB
  /// aligned and advised for huge pages (core/tensor.hpp), where many matrices of a few MiB
  /// each would sit in 4 KiB pages: MoE layers do this for their routed experts, which a
  /// decode step streams at random. Copies each matrix once; the old storage is released as it
  /// goes, so the extra memory is at most the new buffer.
  static void share_storage(std::span<qmatrix* const> ms) {
    auto part = [](std::size_t bytes) { return (bytes + storage_alignment - 1) / storage_alignment * storage_alignment; };
    std::size_t total = 0;
    for (const qmatrix* m : ms) {  // (checked before any matrix moves)
      check(m != nullptr, "qmatrix::share_storage: a null matrix pointer");
      total += part(m->code_bytes()) + part(m->scale_bytes()) + part(m->zero_bytes());
    }
    if (total == 0) return;
    auto bank = std::make_shared<tensor<std::uint8_t, 1>>(shape_t<1>{static_cast<index_t>(total)});
    std::uint8_t* at = bank->data();
    for (qmatrix* m : ms) {
      auto* codes = reinterpret_cast<code_type*>(at);
      for (index_t r = 0; r < m->rows_; ++r)
        std::memcpy(codes + r * m->code_cols(), m->row_codes(r), sizeof(code_type) * static_cast<std::size_t>(m->code_cols()));
      at += part(m->code_bytes());
      auto* scales = reinterpret_cast<scale_type*>(at);
      if (m->scale_bytes()) std::memcpy(scales, m->scales_, m->scale_bytes());
      at += part(m->scale_bytes());
      std::uint8_t* zeros = at;
      if (m->zero_bytes()) std::memcpy(zeros, m->zeros_, m->zero_bytes());
      at += part(m->zero_bytes());
      qmatrix q = borrow_parts(const_view<code_type, 2>(codes, {m->rows_, m->code_cols()}),
                               const_view<scale_type, 2>(scales, {m->scale_rows_, m->scale_cols_}),
                               const_view<std::uint8_t, 2>(zeros, {m->scale_rows_, m->scale_cols_}));
      q.keep_ = bank;
      *m = std::move(q);
    }
  }

  /// Code elements per row (K, or K/2 bytes for int4).
  index_t code_cols() const { return Format::packed4 ? cols_ / 2 : cols_; }
  /// Row `r`'s codes (row stride `code_stride()` elements).
  const code_type* row_codes(index_t r) const { return codes_ + r * code_ld_; }
  index_t code_stride() const { return code_ld_; }
  const_view<code_type, 2> codes() const {
    return const_view<code_type, 2>(codes_, {rows_, code_cols()}, {code_ld_, 1});
  }
  const_view<scale_type, 2> scales() const {
    return const_view<scale_type, 2>(scales_, {scale_rows_, scale_cols_});
  }
  const_view<std::uint8_t, 2> zeros() const {
    return const_view<std::uint8_t, 2>(zeros_, {Format::has_zero ? scale_rows_ : 0, Format::has_zero ? scale_cols_ : 0});
  }
  const scale_type* scale_data() const { return scales_; }
  const std::uint8_t* zero_data() const { return zeros_; }
  index_t scale_rows() const { return scale_rows_; }
  index_t scale_cols() const { return scale_cols_; }
  /// The scale of weight (r, c) as float.
  float scale_at(index_t r, index_t c) const {
    if constexpr (!Format::has_scales) {
      (void)r, (void)c;
      return 1.0f;
    } else {
      const index_t sr = r / Format::block_rows;
      const index_t sc = Format::group > 0 ? c / Format::group : 0;
      return quant::detail::scale_to_float(scales_[sr * scale_cols_ + sc]);
    }
  }

  // ---- dequantization (scalar reference) -----------------------------------------------------------

  /// The unscaled code of weight (r, c) as float (int4 asymmetric: code - zero).
  float code_at(index_t r, index_t c) const {
    const code_type* p = row_codes(r);
    if constexpr (Format::packed4) {
      const int nib = (p[c / 2] >> (4 * (c & 1))) & 0xF;
      if constexpr (Format::has_zero) return static_cast<float>(nib - int(zeros_[r * scale_cols_ + c / Format::group]));
      else return static_cast<float>(nib >= 8 ? nib - 16 : nib);
    } else if constexpr (std::is_same_v<code_type, std::int8_t>) {
      return static_cast<float>(p[c]);
    } else {
      return static_cast<float>(p[c]);
    }
  }
  /// The dequantized weight (r, c).
  float at(index_t r, index_t c) const {
    if constexpr (!Format::has_scales) return code_at(r, c);
    else return code_at(r, c) * scale_at(r, c);
  }

  /// Writes row `r` dequantized to fp32 into `out` (size >= cols()).
  void dequantize_row(index_t r, std::span<float> out) const {
    check(r >= 0 && r < rows_, "qmatrix::dequantize_row: row ", r, " out of range [0, ", rows_, ")");
    check(static_cast<index_t>(out.size()) >= cols_, "qmatrix::dequantize_row: output has ", out.size(),
          " elements, ", cols_, " needed");
    for (index_t c = 0; c < cols_; ++c) out[static_cast<std::size_t>(c)] = at(r, c);
  }
  /// The whole matrix dequantized to fp32 `[N, K]`.
  tensor<float, 2> dequantize() const {
    tensor<float, 2> t({rows_, cols_});
    for (index_t r = 0; r < rows_; ++r)
      dequantize_row(r, std::span<float>(t.data() + r * cols_, static_cast<std::size_t>(cols_)));
    return t;
  }

 private:
  struct storage {
    tensor<code_type, 2> codes;
    tensor<scale_type, 2> scales;
    tensor<std::uint8_t, 2> zeros;
  };

  std::size_t code_bytes() const {
    return static_cast<std::size_t>(rows_) * static_cast<std::size_t>(code_cols()) * sizeof(code_type);
  }
  std::size_t scale_bytes() const {
    return Format::has_scales ? static_cast<std::size_t>(scale_rows_ * scale_cols_) * sizeof(scale_type) : 0;
  }
  std::size_t zero_bytes() const { return Format::has_zero ? static_cast<std::size_t>(scale_rows_ * scale_cols_) : 0; }

  static index_t expected_scale_rows(index_t n) {
    return (n + Format::block_rows - 1) / Format::block_rows;
  }
  static index_t expected_scale_cols(index_t k) {
    if constexpr (Format::group == 0) return 1;
    else return (k + Format::group - 1) / Format::group;
  }

  void init(const_view<code_type, 2> codes, const_view<scale_type, 2> scales, const_view<std::uint8_t, 2> zeros,
            index_t k, const char* op) {
    const index_t n = codes.extent(0);
    check(n > 0 && k > 0, op, ": empty weight matrix (codes shape ", to_string(codes.shape()), ")");
    check(codes.rows_contiguous(), op, ": code rows must be contiguous (shape ", to_string(codes.shape()),
          ", strides ", to_string(codes.strides()), ")");
    if constexpr (Format::kind == quant::format_kind::int8_group || Format::kind == quant::format_kind::int4_group) {
      check(k % Format::group == 0, op, ": K = ", k, " is not a multiple of the group size ", Format::group,
            " (codes shape ", to_string(codes.shape()), ")");
    }
    if constexpr (Format::packed4)
      check(k % 2 == 0, op, ": int4 K = ", k, " must be even");
    rows_ = n;
    cols_ = k;
    codes_ = codes.data();
    check(codes.extent(1) >= code_cols(), op, ": codes of shape ", to_string(codes.shape()), " hold fewer than the ",
          code_cols(), " codes per row that K = ", k, " needs");
    code_ld_ = n > 1 ? codes.stride(0) : code_cols();
    check(code_ld_ >= code_cols(), op, ": code row stride ", code_ld_, " is smaller than the row length ",
          code_cols());
    if constexpr (Format::has_scales) {
      scale_rows_ = expected_scale_rows(n);
      scale_cols_ = expected_scale_cols(k);
      check(scales.extent(0) == scale_rows_ && scales.extent(1) == scale_cols_, op, ": scales have shape ",
            to_string(scales.shape()), " but [", scale_rows_, ", ", scale_cols_, "] was expected for a [", n, ", ",
            k, "] weight");
      check(scales.is_contiguous(), op, ": scales must be contiguous");
      scales_ = scales.data();
      if constexpr (Format::has_zero) {
        check(zeros.extent(0) == scale_rows_ && zeros.extent(1) == scale_cols_, op, ": zero points have shape ",
              to_string(zeros.shape()), " but [", scale_rows_, ", ", scale_cols_, "] was expected");
        check(zeros.is_contiguous(), op, ": zero points must be contiguous");
        zeros_ = zeros.data();
      }
    }
  }

  index_t rows_ = 0, cols_ = 0;
  const code_type* codes_ = nullptr;
  index_t code_ld_ = 0;
  const scale_type* scales_ = nullptr;
  const std::uint8_t* zeros_ = nullptr;
  index_t scale_rows_ = 0, scale_cols_ = 0;
  std::shared_ptr<const void> keep_;  // what owns the storage: a `storage`, or a shared buffer
};

// ---- quantizers -------------------------------------------------------------------------------------

template <class Format>
qmatrix<Format> qmatrix<Format>::quantize(const_view<float, 2> w) {
  using namespace quant;
  check_nonempty("qmatrix::quantize", "w", w);
  const index_t n = w.extent(0), k = w.extent(1);
  if constexpr (Format::kind == format_kind::dense) {
    tensor<code_type, 2> t({n, k});
    parallel_for(n, [&](index_t r0, index_t r1) {
      for (index_t r = r0; r < r1; ++r)
        for (index_t c = 0; c < k; ++c) t(r, c) = static_cast<code_type>(w(r, c));
    });
    return qmatrix(std::move(t));
  } else if constexpr (Format::kind == format_kind::fp8_block) {
    constexpr index_t br = Format::block_rows, bc = Format::group;
    const index_t sr = (n + br - 1) / br, sc = (k + bc - 1) / bc;
    tensor<code_type, 2> q({n, k});
    tensor<float, 2> s({sr, sc});
    parallel_for(sr, [&](index_t b0, index_t b1) {
      for (index_t bi = b0; bi < b1; ++bi)
        for (index_t bj = 0; bj < sc; ++bj) {
          const index_t r0 = bi * br, r1 = std::min(n, r0 + br), c0 = bj * bc, c1 = std::min(k, c0 + bc);
          float amax = 0.f;
          for (index_t r = r0; r < r1; ++r)
            for (index_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(w(r, c)));
          amax = std::max(amax, 1e-4f);
          const float scale = amax / Format::code_max;  // fp32 IEEE division, as the checkpoint recipe
          s(bi, bj) = scale;
          for (index_t r = r0; r < r1; ++r)
            for (index_t c = c0; c < c1; ++c) q(r, c) = code_type::saturate(w(r, c) / scale);
        }
    });
    return qmatrix(std::move(q), std::move(s));
  } else if constexpr (Format::kind == format_kind::int8_rowwise || Format::kind == format_kind::int8_group) {
    const index_t g = Format::group == 0 ? k : Format::group;
    check(k % g == 0, "qmatrix::quantize: K = ", k, " is not a multiple of the group size ", g, " (w shape ",
          to_string(w.shape()), ")");
    tensor<std::int8_t, 2> q({n, k});
    tensor<scale_type, 2> s({n, k / g});
    parallel_for(n, [&](index_t r0, index_t r1) {
      for (index_t r = r0; r < r1; ++r)
        for (index_t gi = 0; gi < k / g; ++gi) {
          float amax = 0.f;
          for (index_t c = gi * g; c < (gi + 1) * g; ++c) amax = std::max(amax, std::fabs(w(r, c)));
          const scale_type st = quant::detail::scale_from_float<scale_type>(amax / 127.0f);
          const float scale = quant::detail::scale_to_float(st);
          s(r, gi) = st;
          for (index_t c = gi * g; c < (gi + 1) * g; ++c) {
            const float v = scale > 0.f ? quant::detail::rne(w(r, c) / scale) : 0.f;
            q(r, c) = static_cast<std::int8_t>(std::clamp(v, -127.f, 127.f));
          }
        }
    });
    return qmatrix(std::move(q), std::move(s));
  } else {  // int4_group
    constexpr index_t g = Format::group;
    check(k % g == 0, "qmatrix::quantize: K = ", k, " is not a multiple of the group size ", g, " (w shape ",
          to_string(w.shape()), ")");
    tensor<std::uint8_t, 2> q({n, k / 2});
    tensor<scale_type, 2> s({n, k / g});
    tensor<std::uint8_t, 2> z;
    if constexpr (Format::has_zero) z = tensor<std::uint8_t, 2>({n, k / g});
    parallel_for(n, [&](index_t r0, index_t r1) {
      for (index_t r = r0; r < r1; ++r)
        for (index_t gi = 0; gi < k / g; ++gi) {
          const index_t c0 = gi * g, c1 = c0 + g;
          if constexpr (!Format::has_zero) {
            float amax = 0.f;
            for (index_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(w(r, c)));
            const scale_type st = quant::detail::scale_from_float<scale_type>(amax / 7.0f);
            const float scale = quant::detail::scale_to_float(st);
            s(r, gi) = st;
            for (index_t c = c0; c < c1; ++c) {
              const float v = scale > 0.f ? std::clamp(quant::detail::rne(w(r, c) / scale), -8.f, 7.f) : 0.f;
              const unsigned nib = static_cast<unsigned>(static_cast<int>(v)) & 0xFu;
              q(r, c / 2) = static_cast<std::uint8_t>(q(r, c / 2) | (nib << (4 * (c & 1))));
            }
          } else {
            float lo = 0.f, hi = 0.f;
            for (index_t c = c0; c < c1; ++c) {
              lo = std::min(lo, w(r, c));
              hi = std::max(hi, w(r, c));
            }
            const scale_type st = quant::detail::scale_from_float<scale_type>((hi - lo) / 15.0f);
            const float scale = quant::detail::scale_to_float(st);
            s(r, gi) = st;
            const float zf = scale > 0.f ? std::clamp(quant::detail::rne(-lo / scale), 0.f, 15.f) : 0.f;
            z(r, gi) = static_cast<std::uint8_t>(zf);
            for (index_t c = c0; c < c1; ++c) {
              const float v = scale > 0.f ? std::clamp(quant::detail::rne(w(r, c) / scale) + zf, 0.f, 15.f) : zf;
              const unsigned nib = static_cast<unsigned>(v) & 0xFu;
              q(r, c / 2) = static_cast<std::uint8_t>(q(r, c / 2) | (nib << (4 * (c & 1))));
            }
          }
        }
    });
    return qmatrix(std::move(q), std::move(s), std::move(z), k);
  }
}

/// The rows of `Format`'s scale blocks (1 for formats without row blocks): row slices start on
/// multiples of it.
template <class Format>
inline constexpr index_t slice_rows_of = Format::block_rows > 0 ? Format::block_rows : 1;

/// A zero-copy view of rows `[r0, r1)` of `w` (r0 a multiple of the format's block rows).
/// The slice borrows `w`'s storage: `w` must outlive it.
template <class Format>
qmatrix<Format> row_slice(const qmatrix<Format>& w, index_t r0, index_t r1) {
  check(0 <= r0 && r0 < r1 && r1 <= w.rows(), "row_slice: rows [", r0, ", ", r1, ") of a matrix with ", w.rows(),
        " rows");
  constexpr index_t br = slice_rows_of<Format>;
  check(r0 % br == 0, "row_slice: row ", r0, " is not on a ", br, "-row scale block boundary");
  const index_t s0 = r0 / br, s1 = (r1 + br - 1) / br;  // the scale (and zero point) rows
  const_view<typename Format::scale_type, 2> scales;
  const_view<std::uint8_t, 2> zeros;
  if constexpr (Format::has_scales) scales = w.scales().slice(0, s0, s1);
  if constexpr (Format::has_zero) zeros = w.zeros().slice(0, s0, s1);
  return qmatrix<Format>::borrow_parts(w.codes().slice(0, r0, r1), scales, zeros);
}

}  // namespace moela
