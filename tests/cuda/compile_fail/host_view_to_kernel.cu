// Must-not-compile check: a host view passed to a CUDA op is a compile error, because the
// memory space is part of the view's type. Built three ways by tests/cuda/CMakeLists.txt:
//   MOELA_VARIANT=0  device views (the control: must compile)
//   MOELA_VARIANT=1  a plain host tensor_view (must fail)
//   MOELA_VARIANT=2  a gpu::host_view (must fail)
#include "moela/backend/cuda/kernels/elementwise.cuh"

void use(moela::tensor<float, 2>& y, const moela::tensor<float, 2>& x, const moela::tensor<float, 1>& w) {
#if MOELA_VARIANT == 0
  moela::gpu::device_view<float, 2> dy(y.data(), y.shape());
  moela::gpu::device_view<const float, 2> dx(x.data(), x.shape());
  moela::gpu::device_view<const float, 1> dw(w.data(), w.shape());
  moela::rmsnorm(moela::cuda<90>{}, dy, dx, dw, 1e-6f);
#elif MOELA_VARIANT == 1
  moela::rmsnorm(moela::cuda<90>{}, y.view(), x.view(), w.view(), 1e-6f);
#else
  moela::gpu::host_view<float, 2> hy(y.view());
  moela::gpu::host_view<const float, 2> hx(x.view());
  moela::gpu::host_view<const float, 1> hw(w.view());
  moela::rmsnorm(moela::cuda<90>{}, hy, hx, hw, 1e-6f);
#endif
}
