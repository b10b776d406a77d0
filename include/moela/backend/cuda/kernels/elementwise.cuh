#pragma once
/// \file moela/backend/cuda/kernels/elementwise.cuh
/// CUDA RMSNorm, RoPE (interleaved pairs, YaRN frequencies), row softmax and SwiGLU, as
/// overloads on the `moela::cuda<SM>` backend tag. All tensors are fp32 device views whose
/// last dimension is contiguous; each call queues work on `s` and returns.
///
///  - `rmsnorm(cuda, y[R, n], x[R, n], w[n], eps)`: `y = (x / sqrt(mean(x²) + eps)) * w`
///    (`rmsnorm(cuda, x, w, eps)` in place), as moela's CPU `rmsnorm`.
///  - `rope(cuda, x[T, H, d], positions[T], inv_freq[d/2], cos_sin_factor)`: rotates each pair
///    `(x[.., 2i], x[.., 2i+1])` in place by `positions[t] * inv_freq[i]` (fp32 angle), cos and
///    sin multiplied by `cos_sin_factor` (1 for DeepSeek). `inv_freq` comes from
///    `tiles::yarn_inv_freq` (host) uploaded once.
///  - `softmax(cuda, y[R, n], x[R, n], scale)`: `y = softmax(scale * x)` per row; a row of
///    -inf gives zeros. `softmax(cuda, x)`: in place, scale 1, as the CPU `softmax(x)`.
///  - `swiglu(cuda, h[R, n], gate[R, n], up[R, n])`: `h = silu(gate) * up`.
/// Shape mismatches throw moela::error before anything is launched.

#include "moela/backend/cuda/kernels/common.cuh"
#include "moela/backend/cuda/tiles/elementwise.hpp"

namespace moela::gpu::detail {

struct rows_params {
  float* y;
  const float* x;
  const float* w;
  index_t y_stride, x_stride;
  int n;
  float eps_or_scale;
};

template <int SM>
__global__ void rmsnorm_kernel(rows_params p) {
  const float* x = p.x + blockIdx.x * p.x_stride;
  float* y = p.y + blockIdx.x * p.y_stride;
  const float ss = block_sum(tiles::rms_partial(x, threadIdx.x, p.n, blockDim.x));
  const float r = tiles::rms_factor(ss, p.n, p.eps_or_scale);
  for (int j = threadIdx.x; j < p.n; j += blockDim.x) y[j] = tiles::rms_apply(x[j], p.w[j], r);
}

template <int SM>
__global__ void softmax_kernel(rows_params p) {
  const float* x = p.x + blockIdx.x * p.x_stride;
  float* y = p.y + blockIdx.x * p.y_stride;
  float m = -std::numeric_limits<float>::infinity();
  for (int j = threadIdx.x; j < p.n; j += blockDim.x) m = fmaxf(m, p.eps_or_scale * x[j]);
  m = block_max(m);
  float l = 0.0f;
  for (int j = threadIdx.x; j < p.n; j += blockDim.x) {
    const float v = p.eps_or_scale * x[j];
    l += v == -std::numeric_limits<float>::infinity() ? 0.0f : expf(v - m);
  }
  l = block_sum(l);
  const float inv = l > 0.0f ? 1.0f / l : 0.0f;
  for (int j = threadIdx.x; j < p.n; j += blockDim.x) {
    const float v = p.eps_or_scale * x[j];
    y[j] = v == -std::numeric_limits<float>::infinity() ? 0.0f : expf(v - m) * inv;
  }
}

struct rope_params {
  float* x;
  const int* pos;
  const float* inv_freq;
  index_t st, sh;  // strides of dims 0 and 1
  int heads, half;
  index_t pairs;
  float factor;
};

template <int SM>
__global__ void rope_kernel(rope_params p) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.pairs) return;
  const int pair = static_cast<int>(i % p.half);
  const index_t th = i / p.half;
  const int h = static_cast<int>(th % p.heads);
  const index_t t = th / p.heads;
  float* u = p.x + t * p.st + h * p.sh + 2 * pair;
  const float ang = static_cast<float>(p.pos[t]) * p.inv_freq[pair];
  float s, c;
  sincosf(ang, &s, &c);
  tiles::rope_rotate(u[0], u[1], c * p.factor, s * p.factor);
}

struct swiglu_params {
  float* h;
  const float* g;
  const float* u;
  index_t hs, gs, us;
  int n;
  index_t total;
};

template <int SM>
__global__ void swiglu_kernel(swiglu_params p) {
  const index_t i = static_cast<index_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= p.total) return;
  const index_t r = i / p.n;
  const int j = static_cast<int>(i % p.n);
  p.h[r * p.hs + j] = tiles::swiglu(p.g[r * p.gs + j], p.u[r * p.us + j]);
}

inline int row_threads(index_t n) { return n >= 1024 ? 512 : (n >= 256 ? 256 : 128); }

}  // namespace moela::gpu::detail

namespace moela {

/// RMSNorm over the last dimension; see the file comment.
template <int SM>
void rmsnorm(cuda<SM>, gpu::device_view<float, 2> y, gpu::device_view<const float, 2> x,
             gpu::device_view<const float, 1> w, float eps, const gpu::stream& s = gpu::default_stream()) {
  check(y.shape() == x.shape() && w.extent(0) == x.extent(1), "rmsnorm: y ", to_string(y.shape()), ", x ",
        to_string(x.shape()), ", w ", to_string(w.shape()), " (y and x must match, w must be [n])");
  gpu::detail::check_rows("rmsnorm", "x", x);
  gpu::detail::check_rows("rmsnorm", "y", y);
  check(w.extent(0) <= 1 || w.stride(0) == 1, "rmsnorm: w must be contiguous");
  if (x.size() == 0) return;
  const gpu::detail::rows_params p{y.data(), x.data(), w.data(), y.stride(0), x.stride(0),
                                   static_cast<int>(x.extent(1)), eps};
  gpu::detail::rmsnorm_kernel<SM><<<static_cast<unsigned>(x.extent(0)), gpu::detail::row_threads(x.extent(1)), 0,
                                s.get()>>>(p);
  MOELA_CUDA_CHECK_LAUNCH("rmsnorm: x ", to_string(x.shape()));
}

/// In-place RMSNorm: `x = rmsnorm(x) * w`.
template <int SM>
void rmsnorm(cuda<SM> tag, gpu::device_view<float, 2> x, gpu::device_view<const float, 1> w, float eps,
             const gpu::stream& s = gpu::default_stream()) {
  rmsnorm(tag, x, gpu::device_view<const float, 2>(x), w, eps, s);
}

/// Row softmax of `scale * x`; see the file comment.
template <int SM>
void softmax(cuda<SM>, gpu::device_view<float, 2> y, gpu::device_view<const float, 2> x, float scale = 1.0f,
             const gpu::stream& s = gpu::default_stream()) {
  check(y.shape() == x.shape(), "softmax: y ", to_string(y.shape()), " and x ", to_string(x.shape()), " differ");
  gpu::detail::check_rows("softmax", "x", x);
  gpu::detail::check_rows("softmax", "y", y);
  if (x.size() == 0) return;
  const gpu::detail::rows_params p{y.data(), x.data(), nullptr, y.stride(0), x.stride(0),
                                   static_cast<int>(x.extent(1)), scale};
  gpu::detail::softmax_kernel<SM><<<static_cast<unsigned>(x.extent(0)), gpu::detail::row_threads(x.extent(1)), 0,
                                s.get()>>>(p);
  MOELA_CUDA_CHECK_LAUNCH("softmax: x ", to_string(x.shape()));
}

/// In-place row softmax (scale 1).
template <int SM>
void softmax(cuda<SM> tag, gpu::device_view<float, 2> x, const gpu::stream& s = gpu::default_stream()) {
  softmax(tag, x, gpu::device_view<const float, 2>(x), 1.0f, s);
}

/// In-place interleaved RoPE; see the file comment.
template <int SM>
void rope(cuda<SM>, gpu::device_view<float, 3> x, gpu::device_view<const int, 1> positions,
          gpu::device_view<const float, 1> inv_freq, float cos_sin_factor = 1.0f,
          const gpu::stream& s = gpu::default_stream()) {
  check(x.extent(2) % 2 == 0 && inv_freq.extent(0) == x.extent(2) / 2 && positions.extent(0) == x.extent(0),
        "rope: x ", to_string(x.shape()), ", positions ", to_string(positions.shape()), ", inv_freq ",
        to_string(inv_freq.shape()), " (want x [T, H, d] with d even, positions [T], inv_freq [d/2])");
  gpu::detail::check_rows("rope", "x", x);
  check(positions.extent(0) <= 1 || positions.stride(0) == 1, "rope: positions must be contiguous");
  check(inv_freq.extent(0) <= 1 || inv_freq.stride(0) == 1, "rope: inv_freq must be contiguous");
  const index_t pairs = x.extent(0) * x.extent(1) * (x.extent(2) / 2);
  if (pairs == 0) return;
  const gpu::detail::rope_params p{x.data(), positions.data(), inv_freq.data(), x.stride(0), x.stride(1),
                                   static_cast<int>(x.extent(1)), static_cast<int>(x.extent(2) / 2), pairs,
                                   cos_sin_factor};
  gpu::detail::rope_kernel<SM><<<gpu::detail::grid_for(pairs, 256), 256, 0, s.get()>>>(p);
  MOELA_CUDA_CHECK_LAUNCH("rope: x ", to_string(x.shape()));
}

/// `h = silu(gate) * up`; see the file comment.
template <int SM>
void swiglu(cuda<SM>, gpu::device_view<float, 2> h, gpu::device_view<const float, 2> gate,
            gpu::device_view<const float, 2> up, const gpu::stream& s = gpu::default_stream()) {
  check(h.shape() == gate.shape() && h.shape() == up.shape(), "swiglu: h ", to_string(h.shape()), ", gate ",
        to_string(gate.shape()), ", up ", to_string(up.shape()), " must match");
  gpu::detail::check_rows("swiglu", "h", h);
  gpu::detail::check_rows("swiglu", "gate", gate);
  gpu::detail::check_rows("swiglu", "up", up);
  const index_t total = h.size();
  if (total == 0) return;
  const gpu::detail::swiglu_params p{h.data(),      gate.data(),    up.data(), h.stride(0),
                                     gate.stride(0), up.stride(0), static_cast<int>(h.extent(1)), total};
  gpu::detail::swiglu_kernel<SM><<<gpu::detail::grid_for(total, 256), 256, 0, s.get()>>>(p);
  MOELA_CUDA_CHECK_LAUNCH("swiglu: h ", to_string(h.shape()));
}

}  // namespace moela
