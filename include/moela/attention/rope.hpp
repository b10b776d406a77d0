#pragma once
/// \file moela/attention/rope.hpp
/// Rotary position embedding (RoPE) with DeepSeek's interleaved pairing, and YaRN context
/// extension (spec §4; golden README "Semantics").
///
/// - Pairing: pair `i` of a rotary vector `u` (width `dim`) is `(u[2i], u[2i+1])`, rotated as the
///   complex number `u[2i] + j u[2i+1]` by `exp(j p theta'_i)`. The output stays interleaved.
///   This is the layout of the Hugging Face checkpoints; NeoX "rotate half" is NOT used.
/// - Frequencies: `theta_i = 1 / base^(2i/dim)` (FP32). With YaRN (`rope_config::yarn`), the
///   correction range `[low, high]` comes from `original_max_positions`, `beta_fast`, `beta_slow`
///   (computed in double), the ramp and the blend in FP32, exactly as spec §4.2.
/// - cos/sin: `angle = fp32(p) * theta'_i` (FP32), then cos and sin of that FP32 angle are
///   evaluated in double and rounded once; both are multiplied by
///   `yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)` (1 for all released configs).
/// - Softmax scale: `softmax_scale(qk_head_dim, cfg) = qk_head_dim^-0.5 * yarn_mscale(factor,
///   mscale_all_dim)^2` (double), the YaRN temperature correction (spec §4.5).
///
/// YaRN applies at every position whenever it is configured, independent of the sequence length.

#include <algorithm>
#include <cmath>
#include <memory>
#include <mutex>
#include <numbers>
#include <utility>
#include <vector>

#include "moela/core/error.hpp"
#include "moela/core/tensor.hpp"

namespace moela::attn {

/// RoPE / YaRN parameters (Hugging Face `config.json` names in the comments).
struct rope_config {
  index_t dim = 64;                      ///< qk_rope_head_dim (even)
  double theta = 10000.0;                ///< rope_theta
  bool yarn = false;                     ///< rope_scaling.type == "yarn"
  double factor = 1.0;                   ///< rope_scaling.factor (s)
  index_t original_max_positions = 4096; ///< rope_scaling.original_max_position_embeddings
  double beta_fast = 32.0;               ///< rope_scaling.beta_fast
  double beta_slow = 1.0;                ///< rope_scaling.beta_slow
  double mscale = 1.0;                   ///< rope_scaling.mscale (cos/sin magnitude ratio numerator)
  double mscale_all_dim = 0.0;           ///< rope_scaling.mscale_all_dim (0 = absent)
  index_t max_positions = 4096;          ///< max_position_embeddings: positions [0, max) are valid

  void validate() const {
    check(dim > 0 && dim % 2 == 0, "rope_config: dim must be positive and even, got ", dim);
    check(theta > 1.0, "rope_config: theta must be > 1, got ", theta);
    check(max_positions > 0, "rope_config: max_positions must be positive, got ", max_positions);
    if (yarn) {
      check(factor > 0.0, "rope_config: YaRN factor must be positive, got ", factor);
      check(original_max_positions > 0, "rope_config: YaRN original_max_positions must be positive");
      check(beta_fast > 0.0 && beta_slow > 0.0, "rope_config: YaRN betas must be positive");
    }
  }
};

/// YaRN's magnitude function: 1 for s <= 1, else 0.1 * m * ln(s) + 1.
inline double yarn_mscale(double s, double m) { return s <= 1.0 ? 1.0 : 0.1 * m * std::log(s) + 1.0; }

/// The YaRN correction range [low, high] (spec §4.2); `high` is nudged by 0.001 when equal.
inline void yarn_correction_range(const rope_config& c, double& low, double& high) {
  const double d = static_cast<double>(c.dim);
  auto corr = [&](double rho) {
    return d * std::log(static_cast<double>(c.original_max_positions) / (2.0 * std::numbers::pi * rho)) /
           (2.0 * std::log(c.theta));
  };
  low = std::max(std::floor(corr(c.beta_fast)), 0.0);
  high = std::min(std::ceil(corr(c.beta_slow)), d - 1.0);
  if (low == high) high += 0.001;
}

/// The `dim / 2` inverse frequencies theta'_i (FP32), YaRN-corrected when configured.
inline std::vector<float> rope_inv_freq(const rope_config& c) {
  c.validate();
  const index_t half = c.dim / 2;
  std::vector<float> f(static_cast<std::size_t>(half));
  double low = 0, high = 0;
  if (c.yarn) yarn_correction_range(c, low, high);
  for (index_t i = 0; i < half; ++i) {
    const float expo = static_cast<float>(2 * i) / static_cast<float>(c.dim);
    const float th = 1.0f / std::pow(static_cast<float>(c.theta), expo);
    if (!c.yarn) {
      f[static_cast<std::size_t>(i)] = th;
      continue;
    }
    const float ramp = std::clamp((static_cast<float>(i) - static_cast<float>(low)) /
                                      (static_cast<float>(high) - static_cast<float>(low)),
                                  0.0f, 1.0f);
    // As REF-V3 writes it: smooth = 1 - ramp, then (th / s) * (1 - smooth) + th * smooth, every
    // step rounded to FP32 (volatile keeps the compiler from contracting the products into an
    // FMA, which would move some frequencies by one ulp).
    const float s = static_cast<float>(c.factor), smooth = 1.0f - ramp;
    const volatile float interp = (th / s) * (1.0f - smooth);
    const volatile float extrap = th * smooth;
    f[static_cast<std::size_t>(i)] = interp + extrap;
  }
  return f;
}

/// The factor applied to cos and sin: yarn_mscale(s, mscale) / yarn_mscale(s, mscale_all_dim).
inline double rope_magnitude(const rope_config& c) {
  if (!c.yarn) return 1.0;
  return yarn_mscale(c.factor, c.mscale) / yarn_mscale(c.factor, c.mscale_all_dim);
}

/// qk_head_dim^-0.5 * yarn_mscale(factor, mscale_all_dim)^2 (double; apply as an FP32 constant).
inline double softmax_scale(index_t qk_head_dim, const rope_config& c) {
  check(qk_head_dim > 0, "softmax_scale: qk_head_dim must be positive, got ", qk_head_dim);
  double s = 1.0 / std::sqrt(static_cast<double>(qk_head_dim));
  if (c.yarn && c.mscale_all_dim != 0.0) {
    const double m = yarn_mscale(c.factor, c.mscale_all_dim);
    s *= m * m;
  }
  return s;
}

/// Precomputed cos/sin for positions [0, positions) and the rotation itself.
class rope_table {
 public:
  rope_table() = default;
  /// Tables for positions [0, positions); `positions` <= 0 means `c.max_positions`.
  explicit rope_table(const rope_config& c, index_t positions = 0) : cfg_(c) {
    c.validate();
    positions_ = positions > 0 ? std::min(positions, c.max_positions) : c.max_positions;
    inv_freq_ = rope_inv_freq(c);
    const index_t half = c.dim / 2;
    const double mag = rope_magnitude(c);
    cos_ = tensor<float, 2>({positions_, half});
    sin_ = tensor<float, 2>({positions_, half});
    for (index_t p = 0; p < positions_; ++p)
      for (index_t i = 0; i < half; ++i) {
        const float angle = static_cast<float>(p) * inv_freq_[static_cast<std::size_t>(i)];
        cos_(p, i) = static_cast<float>(std::cos(static_cast<double>(angle)) * mag);
        sin_(p, i) = static_cast<float>(std::sin(static_cast<double>(angle)) * mag);
      }
  }

  const rope_config& config() const { return cfg_; }
  index_t dim() const { return cfg_.dim; }
  /// Number of positions covered: valid positions are [0, positions()).
  index_t positions() const { return positions_; }
  const std::vector<float>& inv_freq() const { return inv_freq_; }
  /// cos / sin rows of position p ([dim / 2] floats each).
  const float* cos_row(index_t p) const { return cos_.data() + p * (cfg_.dim / 2); }
  const float* sin_row(index_t p) const { return sin_.data() + p * (cfg_.dim / 2); }

  /// Rotates `u[0..dim)` in place (interleaved pairs) for position `p` (unchecked: the caller has
  /// validated `0 <= p < positions()`).
  void rotate(float* u, index_t p) const {
    const float* c = cos_row(p);
    const float* s = sin_row(p);
    for (index_t i = 0; i < cfg_.dim / 2; ++i) {
      const float a = u[2 * i], b = u[2 * i + 1];
      u[2 * i] = a * c[i] - b * s[i];
      u[2 * i + 1] = a * s[i] + b * c[i];
    }
  }

  /// NeoX / Llama "rotate half" pairing `(u[i], u[i + dim/2])`, same angles (for standard
  /// attention models; DeepSeek MLA never uses it).
  void rotate_half(float* u, index_t p) const {
    const float* c = cos_row(p);
    const float* s = sin_row(p);
    const index_t half = cfg_.dim / 2;
    for (index_t i = 0; i < half; ++i) {
      const float a = u[i], b = u[i + half];
      u[i] = a * c[i] - b * s[i];
      u[i + half] = a * s[i] + b * c[i];
    }
  }

  /// Checked rotation of a rank-1 view of width dim() at position p.
  void apply(tensor_view<float, 1> u, index_t p) const {
    check(u.extent(0) == cfg_.dim, "rope_table::apply: vector has ", u.extent(0), " elements, rope dim is ", cfg_.dim);
    check(p >= 0 && p < positions_, "rope_table::apply: position ", p, " is outside [0, ", positions_, ")");
    rotate(u.span().data(), p);
  }

 private:
  rope_config cfg_{};
  index_t positions_ = 0;
  std::vector<float> inv_freq_;
  tensor<float, 2> cos_, sin_;
};

/// A process-wide shared table for `c` (all positions `[0, c.max_positions)`): layers with the
/// same RoPE configuration share one table instead of building one each (V3: 40 MiB). The
/// table lives while a layer holds it. Thread-safe.
inline std::shared_ptr<const rope_table> shared_rope_table(const rope_config& c) {
  static std::mutex mu;
  static std::vector<std::pair<rope_config, std::weak_ptr<const rope_table>>> tables;
  auto same = [](const rope_config& a, const rope_config& b) {
    return a.dim == b.dim && a.theta == b.theta && a.yarn == b.yarn && a.factor == b.factor &&
           a.original_max_positions == b.original_max_positions && a.beta_fast == b.beta_fast &&
           a.beta_slow == b.beta_slow && a.mscale == b.mscale && a.mscale_all_dim == b.mscale_all_dim &&
           a.max_positions == b.max_positions;
  };
  std::lock_guard<std::mutex> lock(mu);
  for (auto& [cfg, weak] : tables)
    if (same(cfg, c))
      if (auto t = weak.lock()) return t;
  auto t = std::make_shared<const rope_table>(c);
  std::erase_if(tables, [](const auto& e) { return e.second.expired(); });
  tables.emplace_back(c, t);
  return t;
}

}  // namespace moela::attn
