#pragma once
/// \file moela/backend/cuda/tiles/elementwise.hpp
/// Per-thread arithmetic of the CUDA elementwise kernels (RMSNorm, RoPE/YaRN, SwiGLU,
/// softmax), as `MOELA_HOST_DEVICE` functions the host unit tests check against float64.
///
/// Numerics follow the spec's fp32 contracts and the CPU backend's order: RMSNorm
/// `y = (x * r) * w` with `r = 1 / sqrt(mean(x²) + eps)` (§3.2, all fp32); RoPE rotates
/// adjacent pairs `(u[2i], u[2i+1])` (§4.1) by the angle `fp32(p) * θ'_i` (§4.2); YaRN
/// frequencies exactly as §4.2 (fp32 θ, double correction range, fp32 ramp); SwiGLU
/// `silu(a) * b` in fp32 (§3.3, V32 order).

#include <cmath>

#include "moela/core/config.hpp"

namespace moela::gpu::tiles {

/// `z / (1 + exp(-z))`.
MOELA_HOST_DEVICE inline float silu(float z) { return z / (1.0f + expf(-z)); }

/// One SwiGLU output: `silu(gate) * up`.
MOELA_HOST_DEVICE inline float swiglu(float gate, float up) { return silu(gate) * up; }

/// The RMSNorm reduction step of one thread: sum of squares of `x[begin], x[begin + step], ...`
/// below `end` (a thread of a block strides over the row).
MOELA_HOST_DEVICE inline float rms_partial(const float* x, int begin, int end, int step) {
  float s = 0.0f;
  for (int j = begin; j < end; j += step) s += x[j] * x[j];
  return s;
}

/// The RMSNorm factor from the row's sum of squares: `1 / sqrt(sum / n + eps)`.
MOELA_HOST_DEVICE inline float rms_factor(float sum_sq, int n, float eps) {
  return 1.0f / sqrtf(sum_sq / static_cast<float>(n) + eps);
}

/// One RMSNorm output: `(x * r) * w` (the order of moela's CPU rmsnorm).
MOELA_HOST_DEVICE inline float rms_apply(float x, float w, float r) { return (x * r) * w; }

/// Rotates the pair `(x0, x1)` by the angle whose cosine and sine are `c`, `s`.
MOELA_HOST_DEVICE inline void rope_rotate(float& x0, float& x1, float c, float s) {
  const float a = x0, b = x1;
  x0 = a * c - b * s;
  x1 = a * s + b * c;
}

/// YaRN parameters (HF `rope_scaling`); `factor <= 1` means plain RoPE.
struct yarn_params {
  int dim = 64;                  ///< qk_rope_head_dim
  float base = 10000.0f;         ///< rope_theta
  float factor = 1.0f;           ///< rope_scaling.factor (s)
  int original_max_pos = 4096;   ///< rope_scaling.original_max_position_embeddings
  float beta_fast = 32.0f;
  float beta_slow = 1.0f;
  float mscale = 1.0f;
  float mscale_all_dim = 1.0f;
};

/// `yarn_mscale(s, m) = 1` if `s <= 1`, else `0.1 m ln(s) + 1` (§4.4).
MOELA_HOST_DEVICE inline double yarn_mscale(double s, double m) { return s <= 1.0 ? 1.0 : 0.1 * m * log(s) + 1.0; }

/// The factor on cos/sin: `yarn_mscale(s, mscale) / yarn_mscale(s, mscale_all_dim)` (1 for DeepSeek).
MOELA_HOST_DEVICE inline float yarn_cos_sin_factor(const yarn_params& p) {
  return static_cast<float>(yarn_mscale(p.factor, p.mscale) / yarn_mscale(p.factor, p.mscale_all_dim));
}

/// `d · ln(L0 / (2π ρ)) / (2 ln b)`: the pair index whose wavelength fits `ρ` times in L0.
MOELA_HOST_DEVICE inline double yarn_correction_dim(const yarn_params& p, double rho) {
  const double two_pi = 6.283185307179586;
  return p.dim * log(p.original_max_pos / (two_pi * rho)) / (2.0 * log(static_cast<double>(p.base)));
}

/// The rotation frequency θ'_i of pair `i` (0 <= i < dim/2), exactly as spec §4.2.
MOELA_HOST_DEVICE inline float yarn_inv_freq(const yarn_params& p, int i) {
  const float theta = 1.0f / powf(p.base, static_cast<float>(2 * i) / static_cast<float>(p.dim));
  if (p.factor <= 1.0f) return theta;
  double low = floor(yarn_correction_dim(p, p.beta_fast));
  low = low > 0.0 ? low : 0.0;
  double high = ceil(yarn_correction_dim(p, p.beta_slow));
  high = high < p.dim - 1 ? high : p.dim - 1;
  if (low == high) high += 0.001;
  float ramp = (static_cast<float>(i) - static_cast<float>(low)) / static_cast<float>(high - low);
  ramp = ramp < 0.0f ? 0.0f : (ramp > 1.0f ? 1.0f : ramp);
  return theta / p.factor * ramp + theta * (1.0f - ramp);
}

/// Softmax scale with the YaRN temperature correction: `qk_head_dim^-1/2 · yarn_mscale(s, m_all)²`.
MOELA_HOST_DEVICE inline float yarn_softmax_scale(const yarn_params& p, int qk_head_dim) {
  const double m = yarn_mscale(p.factor, p.mscale_all_dim);
  return static_cast<float>(m * m / sqrt(static_cast<double>(qk_head_dim)));
}

}  // namespace moela::gpu::tiles
