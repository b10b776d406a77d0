// GPU tests of the CUDA backend: every op against a float64 CPU reference computed here from
// the same inputs. Without a CUDA device the binary exits with 77, which CTest reports as
// SKIPPED (SKIP_RETURN_CODE), never as passed. Test discovery (--list-test-cases) works
// without a device.
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "moela/backend/cuda.cuh"
#include "moela/moela.hpp"

using namespace moela;
using gpu::device_view;

namespace {
using tag = cuda<90>;  // the kernels are the same code for sm_80 and sm_90; the tag picks instances

tensor<float, 2> random2(index_t r, index_t c, unsigned seed, float sd = 1.f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, sd);
  tensor<float, 2> t({r, c});
  for (auto& v : t.flat()) v = nd(rng);
  return t;
}

template <class T, std::size_t R>
device_view<const T, R> cv(gpu::device_tensor<T, R>& t) {
  return t.view();
}

// Max |a - b| / scale over all elements.
template <class A>
double max_err(const A& got, const std::vector<double>& want) {
  double e = 0;
  for (std::size_t i = 0; i < want.size(); ++i) e = std::max(e, std::fabs(double(got.flat()[i]) - want[i]));
  return e;
}
}  // namespace

TEST_CASE("cuda: copies, allocators and errors") {
  auto h = random2(37, 129, 1);
  auto d = gpu::to_device(h);
  auto back = gpu::to_host(cv(d));
  CHECK(std::memcmp(back.data(), h.data(), h.bytes()) == 0);

  gpu::caching_allocator pool;
  {
    gpu::device_tensor<float, 2> a({100, 100}, pool);
  }
  CHECK(pool.cached_bytes() > 0);
  {
    gpu::device_tensor<float, 2> b({100, 100}, pool);  // same size class: reused
    CHECK(pool.hits() == 1);
  }
  pool.release();
  CHECK(pool.cached_bytes() == 0);

  bool threw = false;
  try {
    gpu::device_tensor<float, 1> huge({index_t{1} << 50});
  } catch (const moela::error& e) {
    threw = true;
    CHECK(std::string(e.what()).find("cudaErrorMemoryAllocation") != std::string::npos);
    CHECK(std::string(e.what()).find("cudaMalloc") != std::string::npos);
  }
  CHECK(threw);
  gpu::device_tensor<float, 2> y({3, 4});
  CHECK_THROWS_AS(gpu::copy(y.view(), h.cview()), moela::error);  // [3, 4] vs [37, 129]
}

TEST_CASE("cuda: rmsnorm, softmax, swiglu and rope against float64") {
  const index_t R = 5, n = 1000;
  auto x = random2(R, n, 2);
  auto w = random2(1, n, 3);
  auto dx = gpu::to_device(x);
  auto dw = gpu::to_device(w);
  gpu::device_tensor<float, 2> dy({R, n});
  rmsnorm(tag{}, dy.view(), cv(dx), device_view<const float, 1>(dw.data(), {n}), 1e-6f);
  auto y = gpu::to_host(cv(dy));
  std::vector<double> want(R * n);
  for (index_t r = 0; r < R; ++r) {
    double ss = 0;
    for (index_t j = 0; j < n; ++j) ss += double(x(r, j)) * x(r, j);
    const double f = 1.0 / std::sqrt(ss / n + 1e-6);
    for (index_t j = 0; j < n; ++j) want[r * n + j] = double(x(r, j)) * f * w(0, j);
  }
  // fp32 sum of 1000 squares (tree order) and two products: relative 1e-5 of the row scale.
  CHECK(max_err(y, want) <= 1e-5 * 4);

  softmax(tag{}, dy.view(), cv(dx), 0.7f);
  y = gpu::to_host(cv(dy));
  for (index_t r = 0; r < R; ++r) {
    double mx = -INFINITY, sum = 0;
    for (index_t j = 0; j < n; ++j) mx = std::max(mx, 0.7 * x(r, j));
    for (index_t j = 0; j < n; ++j) sum += std::exp(0.7 * x(r, j) - mx);
    for (index_t j = 0; j < n; ++j) want[r * n + j] = std::exp(0.7 * x(r, j) - mx) / sum;
  }
  CHECK(max_err(y, want) <= 1e-6);  // probabilities <= 1, fp32 exp and sum: ~1e-7 absolute

  auto g = random2(R, n, 4, 3.f);
  auto dg = gpu::to_device(g);
  swiglu(tag{}, dy.view(), cv(dx), cv(dg));
  y = gpu::to_host(cv(dy));
  for (index_t i = 0; i < R * n; ++i) {
    const double a = x.flat()[i];
    want[i] = a / (1 + std::exp(-a)) * g.flat()[i];
  }
  CHECK(max_err(y, want) <= 1e-5);  // |silu(a) * g| <~ 40: fp32 relative 2e-7

  // RoPE with the DeepSeek-V3 YaRN table on [T = 3, H = 4, 64].
  gpu::tiles::yarn_params yp;
  yp.factor = 40.f;
  tensor<float, 1> freq({32});
  for (int i = 0; i < 32; ++i) freq(i) = gpu::tiles::yarn_inv_freq(yp, i);
  tensor<int, 1> pos({3});
  pos(0) = 0;
  pos(1) = 17;
  pos(2) = 5000;
  auto q = random2(3 * 4, 64, 5);
  auto dq = gpu::to_device(q);
  auto dpos = gpu::to_device(pos);
  auto dfreq = gpu::to_device(freq);
  rope(tag{}, dq.view().reshape<3>({3, 4, 64}), cv(dpos), cv(dfreq));
  auto qr = gpu::to_host(cv(dq));
  std::vector<double> wq(3 * 4 * 64);
  for (int t = 0; t < 3; ++t)
    for (int h = 0; h < 4; ++h)
      for (int i = 0; i < 32; ++i) {
        const double ang = double(float(pos(t)) * freq(i));  // the fp32 angle of spec §4.2
        const double a = q(t * 4 + h, 2 * i), b = q(t * 4 + h, 2 * i + 1);
        wq[(t * 4 + h) * 64 + 2 * i] = a * std::cos(ang) - b * std::sin(ang);
        wq[(t * 4 + h) * 64 + 2 * i + 1] = a * std::sin(ang) + b * std::cos(ang);
      }
  // Device sincosf is within 2 ulp for the angles here (|angle| <= 5000): ~1e-6 absolute.
  CHECK(max_err(qr, wq) <= 2e-5);
}

namespace {
// Host FP8 block weights [N, K] from a random float matrix, quantized per 128x128 block.
struct fp8_host {
  tensor<fp8_e4m3, 2> codes;
  tensor<float, 2> scales;
};
fp8_host quantize_blocks(const tensor<float, 2>& w) {
  const index_t N = w.extent(0), K = w.extent(1);
  fp8_host q{tensor<fp8_e4m3, 2>({N, K}), tensor<float, 2>({gpu::tiles::blocks_of(N), gpu::tiles::blocks_of(K)})};
  for (index_t bi = 0; bi < q.scales.extent(0); ++bi)
    for (index_t bj = 0; bj < q.scales.extent(1); ++bj) {
      float amax = 1e-4f;
      for (index_t r = bi * 128; r < std::min(N, bi * 128 + 128); ++r)
        for (index_t c = bj * 128; c < std::min(K, bj * 128 + 128); ++c) amax = std::max(amax, std::fabs(w(r, c)));
      const float s = amax / 448.f;
      q.scales(bi, bj) = s;
      for (index_t r = bi * 128; r < std::min(N, bi * 128 + 128); ++r)
        for (index_t c = bj * 128; c < std::min(K, bj * 128 + 128); ++c) q.codes(r, c) = fp8_e4m3::saturate(w(r, c) / s);
    }
  return q;
}
}  // namespace

TEST_CASE("cuda: FP8 block-scaled matmul with 1x128 activation groups against float64") {
  const index_t M = 70, N = 200, K = 320;  // partial M tile, partial N and K blocks
  auto x = random2(M, K, 6, 2.f);
  auto wf = random2(N, K, 7, 0.05f);
  auto wq = quantize_blocks(wf);
  auto w = gpu::upload_fp8_block<2>(wq.codes.cview(), wq.scales.cview());
  auto dx = gpu::to_device(x);
  gpu::device_tensor<float, 2> dy({M, N});

  // Activation quantization on the device is bit-identical to the host tiles.
  gpu::device_tensor<fp8_e4m3, 2> dq({M, K});
  gpu::device_tensor<float, 2> ds({M, 3});
  quantize_activations(tag{}, dq.view(), ds.view(), cv(dx));
  auto q = gpu::to_host(cv(dq));
  auto qs = gpu::to_host(cv(ds));
  std::vector<double> want(M * N), mag(M * N);
  for (index_t m = 0; m < M; ++m) {
    for (int g = 0; g < 3; ++g) {
      float amax = 0;
      for (index_t k = g * 128; k < std::min(K, index_t(g * 128 + 128)); ++k) amax = std::max(amax, std::fabs(x(m, k)));
      const float s = gpu::tiles::act_scale(amax);
      CHECK(qs(m, g) == s);
      for (index_t k = g * 128; k < std::min(K, index_t(g * 128 + 128)); ++k)
        CHECK(q(m, k).bits == gpu::tiles::act_quantize(x(m, k), s));
    }
    for (index_t n = 0; n < N; ++n) {
      double acc = 0, a = 0;
      for (index_t k = 0; k < K; ++k) {
        const double t = double(float(q(m, k))) * qs(m, k / 128) * double(float(wq.codes(n, k))) * wq.scales(n / 128, k / 128);
        acc += t;
        a += std::fabs(t);
      }
      want[m * N + n] = acc;
      mag[m * N + n] = a;
    }
  }
  const bool tc_hw = gpu::current_sm() >= 89;
  for (bool tc : {false, true}) {
    CAPTURE(tc);
    gpu::set_tensor_cores(tc);
    matmul(tag{}, dy.view(), cv(dx), w.view(), quant::mode::faithful{});
    auto y = gpu::to_host(cv(dy));
    // CUDA cores: fp32 partials of <= 128 products and 3 promotions: <= 140 * 2^-24 * Σ|terms|.
    // Tensor cores: the products are exact but the FP8 MMA accumulates with reduced precision
    // inside a 128-long group (DeepSeek reports ~14 bits on Hopper); the per-128 promotion
    // bounds the damage to about 2^-13 per group: allow 2^-10 * Σ|terms|.
    const double rel = (tc && tc_hw) ? std::ldexp(1.0, -10) : 140 * std::ldexp(1.0, -24);
    int bad = 0;
    for (index_t i = 0; i < M * N; ++i) bad += std::fabs(y.flat()[i] - want[i]) > rel * mag[i] + 1e-30;
    CHECK(bad == 0);
  }
  gpu::set_tensor_cores(true);

  // Fast mode: fp32 activations times the decoded weights, per-group weight scale.
  matmul(tag{}, dy.view(), cv(dx), w.view());
  auto yf = gpu::to_host(cv(dy));
  int bad = 0;
  for (index_t m = 0; m < M; ++m)
    for (index_t n = 0; n < N; ++n) {
      double acc = 0, a = 0;
      for (index_t k = 0; k < K; ++k) {
        const double t = double(x(m, k)) * double(float(wq.codes(n, k))) * wq.scales(n / 128, k / 128);
        acc += t;
        a += std::fabs(t);
      }
      bad += std::fabs(yf(m, n) - acc) > 140 * std::ldexp(1.0, -24) * a + 1e-30;  // as above, fp32 FMAs
    }
  CHECK(bad == 0);
}

TEST_CASE("cuda: weights uploaded from the CPU backend's qmatrix give the CPU's dequantized product") {
  const index_t M = 9, N = 130, K = 256;
  auto x = random2(M, K, 50);
  auto wf = random2(N, K, 51, 0.1f);
  auto dx = gpu::to_device(x);
  gpu::device_tensor<float, 2> dy({M, N});
  auto run = [&](const auto& q) {
    auto w = gpu::upload(q);
    matmul(tag{}, dy.view(), cv(dx), w.view());
    auto y = gpu::to_host(cv(dy));
    const auto wd = q.dequantize();  // the CPU backend's exact dequantized weights
    int bad = 0;
    for (index_t m = 0; m < M; ++m)
      for (index_t n = 0; n < N; ++n) {
        double acc = 0, a = 0;
        for (index_t k = 0; k < K; ++k) {
          acc += double(x(m, k)) * wd(n, k);
          a += std::fabs(double(x(m, k)) * wd(n, k));
        }
        bad += std::fabs(y(m, n) - acc) > 300 * std::ldexp(1.0, -24) * a + 1e-30;  // fp32 FMA chains
      }
    CHECK(bad == 0);
  };
  run(qmatrix<quant::fp8_block<128, 128>>::quantize(wf.cview()));
  run(qmatrix<quant::int8_group<64>>::quantize(wf.cview()));
  run(qmatrix<quant::int4_group<32>>::quantize(wf.cview()));
  run(qmatrix<quant::bf16>::quantize(wf.cview()));
}

TEST_CASE("cuda: grouped FP8 expert GEMM equals per-expert matmul row for row") {
  const int E = 5, k = 2;
  const index_t T = 90, D = 256, N = 192;
  auto x = random2(T, D, 40, 1.5f);
  tensor<int, 2> ids({T, k});
  for (index_t t = 0; t < T; ++t) {
    ids(t, 0) = static_cast<int>(t % E);
    ids(t, 1) = static_cast<int>((t * 7 + 1) % E == t % E ? (t + 1) % E : (t * 7 + 1) % E);
  }
  tensor<fp8_e4m3, 3> codes({E, N, D});
  tensor<float, 3> scales({E, 2, 2});
  std::vector<fp8_host> per;
  for (int e = 0; e < E; ++e) {
    per.push_back(quantize_blocks(random2(N, D, 41 + e, 0.05f)));
    std::memcpy(&codes(e, 0, 0), per[e].codes.data(), per[e].codes.bytes());
    std::memcpy(&scales(e, 0, 0), per[e].scales.data(), per[e].scales.bytes());
  }
  auto w = gpu::upload_fp8_block<3>(codes.cview(), scales.cview());
  auto dx = gpu::to_device(x);
  auto dids = gpu::to_device(ids);
  gpu::moe_plan plan(E, k, T);
  plan_dispatch(tag{}, plan, cv(dids));
  gpu::device_tensor<float, 2> xs({T * k, D}), ys({T * k, N});
  dispatch(tag{}, xs.view(), cv(dx), plan);
  grouped_matmul(tag{}, ys.view(), cv(xs), w.view(), plan, quant::mode::faithful{});
  auto hys = gpu::to_host(cv(ys));
  tensor<int, 2> slot({T, k});
  gpu::copy(slot.view(), device_view<const int, 2>(plan.slot.view()).slice(0, 0, T));
  gpu::default_stream().synchronize();
  for (int e = 0; e < E; ++e) {
    auto we = gpu::upload_fp8_block<2>(per[e].codes.cview(), per[e].scales.cview());
    gpu::device_tensor<float, 2> ye({T, N});
    matmul(tag{}, ye.view(), cv(dx), we.view(), quant::mode::faithful{});
    auto hy = gpu::to_host(cv(ye));
    int mismatches = 0;
    for (index_t t = 0; t < T; ++t)
      for (int j = 0; j < k; ++j)
        if (ids(t, j) == e)
          for (index_t n = 0; n < N; ++n) mismatches += hys(slot(t, j), n) != hy(t, n);  // same kernel, same order
    CHECK(mismatches == 0);
  }
}

TEST_CASE("cuda: INT8, INT4 group and BF16 matmul against float64") {
  const index_t M = 33, N = 96, K = 256;
  auto x = random2(M, K, 8);
  auto dx = gpu::to_device(x);
  gpu::device_tensor<float, 2> dy({M, N});
  std::mt19937 rng(9);
  std::uniform_int_distribution<int> u8(-127, 127), u4(-8, 7);
  std::uniform_real_distribution<float> us(0.001f, 0.02f);
  auto check_against = [&](const std::vector<double>& wd) {  // wd [N, K] dequantized
    auto y = gpu::to_host(cv(dy));
    int bad = 0;
    for (index_t m = 0; m < M; ++m)
      for (index_t n = 0; n < N; ++n) {
        double acc = 0, a = 0;
        for (index_t k = 0; k < K; ++k) {
          acc += double(x(m, k)) * wd[n * K + k];
          a += std::fabs(double(x(m, k)) * wd[n * K + k]);
        }
        // fp32 FMA chains of <= 256 terms plus the per-group scaling: 300 * 2^-24 * Σ|terms|.
        bad += std::fabs(y(m, n) - acc) > 300 * std::ldexp(1.0, -24) * a + 1e-30;
      }
    CHECK(bad == 0);
  };
  {  // INT8, groups of 64
    tensor<std::int8_t, 2> c({N, K});
    tensor<float, 2> s({N, K / 64});
    for (auto& v : c.flat()) v = static_cast<std::int8_t>(u8(rng));
    for (auto& v : s.flat()) v = us(rng);
    auto w = gpu::upload_int8_group<64, 2>(c.cview(), s.cview());
    matmul(tag{}, dy.view(), cv(dx), w.view());
    std::vector<double> wd(N * K);
    for (index_t n = 0; n < N; ++n)
      for (index_t k = 0; k < K; ++k) wd[n * K + k] = double(c(n, k)) * s(n, k / 64);
    check_against(wd);
  }
  {  // INT4, groups of 32
    tensor<int4x2, 2> c({N, K / 2});
    tensor<float, 2> s({N, K / 32});
    for (auto& v : c.flat()) v = int4x2::pack(u4(rng), u4(rng));
    for (auto& v : s.flat()) v = us(rng);
    auto w = gpu::upload_int4_group<32, 2>(c.cview(), s.cview());
    matmul(tag{}, dy.view(), cv(dx), w.view());
    std::vector<double> wd(N * K);
    for (index_t n = 0; n < N; ++n)
      for (index_t k = 0; k < K; ++k) wd[n * K + k] = double(c(n, k / 2).get(int(k % 2))) * s(n, k / 32);
    check_against(wd);
  }
  {  // BF16
    auto wf = random2(N, K, 10, 0.1f);
    tensor<moela::bf16, 2> c({N, K});
    for (index_t i = 0; i < N * K; ++i) c.flat()[i] = moela::bf16(wf.flat()[i]);
    auto w = gpu::upload_bf16<2>(c.cview());
    matmul(tag{}, dy.view(), cv(dx), w.view());
    std::vector<double> wd(N * K);
    for (index_t i = 0; i < N * K; ++i) wd[i] = float(c.flat()[i]);
    check_against(wd);
  }
}

TEST_CASE("cuda: router against the host tile and spec invariants") {
  gpu::tiles::router_params p;  // DeepSeek-V3: 256 experts, k 8, 8 groups keep 4, sigmoid
  const index_t T = 300;
  auto logits = random2(T, 256, 11, 2.f);
  tensor<float, 1> bias({256});
  std::mt19937 rng(12);
  std::uniform_real_distribution<float> ub(0.f, 0.25f);
  for (auto& b : bias.flat()) b = ub(rng);
  auto dl = gpu::to_device(logits);
  auto db = gpu::to_device(bias);
  gpu::device_tensor<int, 2> ids({T, 8});
  gpu::device_tensor<float, 2> w({T, 8});
  route(tag{}, ids.view(), w.view(), cv(dl), cv(db), p);
  auto hid = gpu::to_host(cv(ids));
  auto hw = gpu::to_host(cv(w));
  std::vector<float> scratch(512), rw(8);
  std::vector<int> rid(8);
  int same = 0;
  for (index_t t = 0; t < T; ++t) {
    gpu::tiles::route_token(p, &logits(t, 0), bias.data(), scratch.data(), rid.data(), rw.data());
    // Device expf may differ from the host's by an ulp; ids agree except on near-ties.
    bool eq = true;
    for (int j = 0; j < 8; ++j) eq = eq && hid(t, j) == rid[j];
    same += eq;
    if (eq)
      for (int j = 0; j < 8; ++j) CHECK(std::fabs(hw(t, j) - rw[j]) <= 1e-5f * rw[j]);
    float sum = 0;
    for (int j = 0; j < 8; ++j) sum += hw(t, j);
    CHECK(std::fabs(sum - 2.5f) <= 1e-5f);  // renormalized, times routed_scaling_factor
  }
  CHECK(same >= T - 3);
}

TEST_CASE("cuda: MoE dispatch, grouped expert SwiGLU and combine against float64") {
  const int E = 8, k = 2;
  const index_t T = 150, D = 128, I = 64;
  auto x = random2(T, D, 13);
  tensor<int, 2> ids({T, k});
  tensor<float, 2> wts({T, k});
  std::mt19937 rng(14);
  std::uniform_int_distribution<int> ue(0, E - 1);
  std::uniform_real_distribution<float> uw(0.1f, 1.f);
  for (index_t t = 0; t < T; ++t) {
    ids(t, 0) = ue(rng);
    do ids(t, 1) = ue(rng);
    while (ids(t, 1) == ids(t, 0));
    wts(t, 0) = uw(rng);
    wts(t, 1) = uw(rng);
  }
  tensor<moela::bf16, 3> w1({E, I, D}), w3({E, I, D}), w2({E, D, I});
  std::normal_distribution<float> nd(0.f, 0.1f);
  for (auto* t : {&w1, &w3, &w2})
    for (auto& v : t->flat()) v = moela::bf16(nd(rng));
  auto d1 = gpu::upload_bf16<3>(w1.cview());
  auto d3 = gpu::upload_bf16<3>(w3.cview());
  auto d2 = gpu::upload_bf16<3>(w2.cview());
  auto dx = gpu::to_device(x);
  auto dids = gpu::to_device(ids);
  auto dw = gpu::to_device(wts);
  gpu::device_tensor<float, 2> dy({T, D});
  gpu::caching_allocator pool;
  gpu::moe_plan plan(E, k, T, pool);
  moe_experts(tag{}, dy.view(), cv(dx), cv(dids), cv(dw), d1.view(), d3.view(), d2.view(), plan,
              quant::mode::fast{}, gpu::default_stream(), pool);
  auto y = gpu::to_host(cv(dy));
  std::vector<double> want(T * D, 0.0);
  double scale = 0;
  for (index_t t = 0; t < T; ++t)
    for (int j = 0; j < k; ++j) {
      const int e = ids(t, j);
      std::vector<double> h(I);
      for (index_t i = 0; i < I; ++i) {
        double a = 0, b = 0;
        for (index_t c = 0; c < D; ++c) {
          a += double(float(w1(e, i, c))) * x(t, c);
          b += double(float(w3(e, i, c))) * x(t, c);
        }
        h[i] = a / (1 + std::exp(-a)) * b;
      }
      for (index_t c = 0; c < D; ++c) {
        double o = 0;
        for (index_t i = 0; i < I; ++i) o += double(float(w2(e, c, i))) * h[i];
        want[t * D + c] += wts(t, j) * o;
        scale = std::max(scale, std::fabs(want[t * D + c]));
      }
    }
  // Three fp32 GEMMs of depth <= 128 and fp32 SwiGLU: ~1e-6 relative to the output scale.
  CHECK(max_err(y, want) <= 1e-5 * scale);
  // Rows are distributed per expert as the ids say.
  tensor<int, 1> off({E + 1});
  gpu::copy(off.view(), device_view<const int, 1>(plan.offsets.view()));
  gpu::default_stream().synchronize();
  for (int e = 0; e < E; ++e) {
    int n = 0;
    for (index_t t = 0; t < T; ++t) n += (ids(t, 0) == e) + (ids(t, 1) == e);
    CHECK(off(e + 1) - off(e) == n);
  }
  // An expert id out of range is an error, not a silent out-of-bounds write.
  ids(3, 1) = E;
  auto bad_ids = gpu::to_device(ids);
  CHECK_THROWS_AS(plan_dispatch(tag{}, plan, cv(bad_ids)), moela::error);
}

namespace {
// float64 absorbed-MLA decode of one (b, h) over decoded cache rows.
void mla_reference(const std::vector<std::vector<double>>& rows, const float* q, int kv_rank, double scale,
                   std::vector<double>& out, double& lse) {
  const int n = static_cast<int>(rows.size());
  std::vector<double> s(n);
  double mx = -INFINITY;
  for (int j = 0; j < n; ++j) {
    double d = 0;
    for (std::size_t c = 0; c < rows[j].size(); ++c) d += double(q[c]) * rows[j][c];
    s[j] = d * scale;
    mx = std::max(mx, s[j]);
  }
  double sum = 0;
  out.assign(kv_rank, 0.0);
  for (int j = 0; j < n; ++j) {
    const double p = std::exp(s[j] - mx);
    sum += p;
    for (int c = 0; c < kv_rank; ++c) out[c] += p * rows[j][c];
  }
  for (auto& o : out) o = n ? o / sum : 0.0;
  lse = n ? mx + std::log(sum) : -INFINITY;
}

template <class Layout>
void check_mla(int kv_rank, int rope_dim, int splits) {
  const int B = 3, H = 10, max_pages = 4;
  const int width = kv_rank + rope_dim;
  const int lens[B] = {200, 0, 64};
  tensor<int, 2> bt({B, max_pages});
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < max_pages; ++i) bt(b, i) = (b * max_pages + (max_pages - 1 - i)) % (B * max_pages);  // scattered pages
  tensor<int, 1> lens_h({B});
  for (int b = 0; b < B; ++b) lens_h(b) = lens[b];
  index_t T = 0;
  for (int b = 0; b < B; ++b) T += lens[b];
  auto ckv = random2(T, kv_rank, 15);
  auto kpe = random2(T, rope_dim, 16);
  tensor<int, 1> batch({T}), pos({T});
  for (int b = 0, t = 0; b < B; ++b)
    for (int p = 0; p < lens[b]; ++p, ++t) {
      batch(t) = b;
      pos(t) = p;
    }
  gpu::latent_cache_store<Layout> store(B * max_pages, kv_rank, rope_dim);
  store.data.zero();
  auto cache = store.view();
  auto dbt = gpu::to_device(bt);
  auto dl = gpu::to_device(lens_h);
  auto dckv = gpu::to_device(ckv);
  auto dkpe = gpu::to_device(kpe);
  auto dbatch = gpu::to_device(batch);
  auto dpos = gpu::to_device(pos);
  mla_cache_write(tag{}, cache, cv(dbt), cv(dbatch), cv(dpos), cv(dckv), cv(dkpe));
  auto pages = gpu::to_host(device_view<const typename gpu::paged_latent_cache<Layout>::element, 3>(cache.pages));
  auto q = random2(B * H, width, 17, 0.3f);
  auto dq = gpu::to_device(q);
  gpu::device_tensor<float, 3> dout({B, H, kv_rank});
  gpu::device_tensor<float, 2> dlse({B, H});
  const float scale = 0.1352f;
  mla_decode(tag{}, dout.view(), dlse.view(), device_view<const float, 3>(dq.view().reshape<3>({B, H, width})), cache,
             cv(dbt), cv(dl), scale, splits);
  auto out = gpu::to_host(cv(dout));
  auto lse = gpu::to_host(cv(dlse));
  for (int b = 0, t0 = 0; b < B; t0 += lens[b], ++b) {
    std::vector<std::vector<double>> rows(lens[b], std::vector<double>(width));
    for (int p = 0; p < lens[b]; ++p) {
      const int page = bt(b, p / 64), r = p % 64;
      for (int c = 0; c < width; ++c) {
        double v;
        if constexpr (gpu::paged_latent_cache<Layout>::fp8) {
          v = gpu::tiles::mla_fp8_record_value(&pages(page, r, 0), c);
        } else {
          v = float(pages(page, r, c));
          // The cache holds the bf16 rounding of what was written.
          const float src = c < kv_rank ? ckv(t0 + p, c) : kpe(t0 + p, c - kv_rank);
          CHECK(pages(page, r, c).bits == moela::bf16(src).bits);
        }
        rows[p][c] = v;
      }
      if constexpr (gpu::paged_latent_cache<Layout>::fp8) {  // record bytes equal the host encoding
        std::vector<std::uint8_t> rec(656);
        gpu::tiles::mla_fp8_record_encode(&ckv(t0 + p, 0), &kpe(t0 + p, 0), rec.data());
        CHECK(std::memcmp(rec.data(), &pages(page, r, 0), 656) == 0);
      }
    }
    for (int h = 0; h < H; ++h) {
      std::vector<double> ro;
      double rl;
      mla_reference(rows, &q(b * H + h, 0), kv_rank, scale, ro, rl);
      double e = 0, m = 0;
      for (int c = 0; c < kv_rank; ++c) {
        e = std::max(e, std::fabs(out(b, h, c) - ro[c]));
        m = std::max(m, std::fabs(ro[c]));
      }
      // fp32 dot products of <= 576 terms (|score| small) and an fp32 weighted sum over <= 200
      // rows: 1e-5 of the output magnitude (plus 1e-6 absolute) is a safe bound.
      CHECK(e <= 1e-5 * m + 1e-6);
      if (lens[b] == 0) {
        CHECK(std::isinf(lse(b, h)));
      } else {
        CHECK(std::fabs(lse(b, h) - rl) <= 1e-5 * std::max(1.0, std::fabs(rl)));
      }
    }
  }
}
}  // namespace

TEST_CASE("cuda: absorbed MLA decode over a paged BF16 latent cache") {
  check_mla<moela::bf16>(512, 64, 1);
  check_mla<moela::bf16>(512, 64, 3);
  check_mla<moela::bf16>(160, 64, 2);  // tiny-v3 shapes
}

TEST_CASE("cuda: absorbed MLA decode over the paged FP8 latent record") {
  check_mla<gpu::tiles::mla_fp8_record>(512, 64, 1);
  check_mla<gpu::tiles::mla_fp8_record>(512, 64, 4);
}

TEST_CASE("cuda: bad shapes throw moela::error naming the op") {
  gpu::device_tensor<float, 2> a({4, 8}), b({4, 9});
  gpu::device_tensor<float, 1> w({8});
  try {
    rmsnorm(tag{}, b.view(), cv(a), cv(w), 1e-6f);
    FAIL("no error");
  } catch (const moela::error& e) {
    CHECK(std::string(e.what()).find("rmsnorm") != std::string::npos);
    CHECK(std::string(e.what()).find("[4, 8]") != std::string::npos);
  }
}

TEST_CASE("cuda: ops agree with the CPU backend on the same inputs") {
  // rmsnorm, softmax, swiglu: same formulas in fp32, different summation orders: the outputs
  // agree to a few fp32 ulp of the row's scale.
  const index_t R = 6, n = 777;
  auto x = random2(R, n, 60);
  auto w1 = random2(1, n, 61);
  tensor<float, 1> w({n});
  for (index_t j = 0; j < n; ++j) w(j) = w1(0, j);
  auto dx = gpu::to_device(x);
  auto dw = gpu::to_device(w);
  gpu::device_tensor<float, 2> dy({R, n});
  tensor<float, 2> cpu_y({R, n});
  auto close = [](const tensor<float, 2>& a, const tensor<float, 2>& b, double tol) {
    double e = 0;
    for (index_t i = 0; i < a.size(); ++i) e = std::max(e, std::fabs(double(a.flat()[i]) - b.flat()[i]));
    return e <= tol;
  };
  rmsnorm(tag{}, dy.view(), cv(dx), cv(dw), 1e-6f);
  moela::rmsnorm(cpu_y.view(), x.cview(), w.cview(), 1e-6f);
  CHECK(close(gpu::to_host(cv(dy)), cpu_y, 4e-5));

  rmsnorm(tag{}, dx.view(), cv(dw), 1e-6f);  // in place
  CHECK(close(gpu::to_host(cv(dx)), cpu_y, 4e-5));

  dx = gpu::to_device(x);
  softmax(tag{}, dx.view());
  tensor<float, 2> sm = x;
  moela::softmax(sm.view());
  CHECK(close(gpu::to_host(cv(dx)), sm, 1e-6));

  auto g = random2(R, n, 62);
  auto dg = gpu::to_device(g);
  dx = gpu::to_device(x);
  swiglu(tag{}, dy.view(), cv(dx), cv(dg));
  swiglu(cpu<>{}, cpu_y.view(), x.cview(), g.cview());
  CHECK(close(gpu::to_host(cv(dy)), cpu_y, 1e-5));

  // matmul, fast and faithful, on CPU-backend weights.
  const index_t M = 12, N = 160, K = 384;
  auto xm = random2(M, K, 63);
  auto wm = random2(N, K, 64, 0.05f);
  auto q = qmatrix<quant::fp8_block<128, 128>>::quantize(wm.cview());
  auto dq = gpu::upload(q);
  auto dxm = gpu::to_device(xm);
  gpu::device_tensor<float, 2> dym({M, N});
  tensor<float, 2> cy({M, N});
  double scale = 0;
  moela::matmul(cy.view(), xm.cview(), q);
  for (float v : cy.flat()) scale = std::max(scale, double(std::fabs(v)));
  matmul(tag{}, dym.view(), cv(dxm), dq.view());
  CHECK(close(gpu::to_host(cv(dym)), cy, 1e-5 * scale));
  moela::matmul(cy.view(), xm.cview(), q, quant::mode::faithful{});
  for (bool tc : {false, true}) {
    gpu::set_tensor_cores(tc);
    matmul(tag{}, dym.view(), cv(dxm), dq.view(), quant::mode::faithful{});
    // Same activation codes and scales on both sides; the tensor-core partials carry the FP8
    // MMA's accumulation precision (see the FP8 test): 2^-10 of the output scale.
    CHECK(close(gpu::to_host(cv(dym)), cy, (tc ? std::ldexp(1.0, -10) : 1e-5) * scale));
  }
  gpu::set_tensor_cores(true);

  // The router against moe::select_experts, V3 (sigmoid, noaux_tc) and V2 (softmax, max groups).
  for (int variant = 0; variant < 2; ++variant) {
    CAPTURE(variant);
    moe::moe_config c;
    c.hidden_size = 64;
    c.n_routed_experts = variant == 0 ? 256 : 160;
    c.num_experts_per_tok = variant == 0 ? 8 : 6;
    c.n_group = 8;
    c.topk_group = variant == 0 ? 4 : 3;
    c.scoring_func = variant == 0 ? moe::score_fn::sigmoid : moe::score_fn::softmax;
    c.topk_method = variant == 0 ? moe::topk_rule::noaux_tc : moe::topk_rule::group_limited_greedy;
    c.norm_topk_prob = variant == 0;
    c.routed_scaling_factor = variant == 0 ? 2.5f : 16.f;
    const index_t T = 200, E = c.n_routed_experts, k = c.num_experts_per_tok;
    auto logits = random2(T, E, 65 + variant, 2.f);
    tensor<float, 1> bias({variant == 0 ? E : 0});
    std::mt19937 rng(67);
    std::uniform_real_distribution<float> ub(0.f, 0.25f);
    for (auto& b : bias.flat()) b = ub(rng);
    moe::routing r;
    moe::with_policies(c, [&](auto scoring, auto group) {
      moe::select_experts<decltype(scoring), decltype(group)>(c, logits.cview(), bias.flat(), r);
    });
    auto dl = gpu::to_device(logits);
    auto db = gpu::to_device(bias);
    gpu::device_tensor<int, 2> ids({T, k});
    gpu::device_tensor<float, 2> wt({T, k});
    route(tag{}, ids.view(), wt.view(), cv(dl), cv(db), gpu::router_params_of(c));
    auto hid = gpu::to_host(cv(ids));
    auto hw = gpu::to_host(cv(wt));
    int same = 0;
    for (index_t t = 0; t < T; ++t) {
      bool eq = true;
      for (index_t j = 0; j < k; ++j) eq = eq && hid(t, j) == r.topk_idx(t, j);
      same += eq;
      if (eq)
        for (index_t j = 0; j < k; ++j) CHECK(std::fabs(hw(t, j) - r.topk_weight(t, j)) <= 1e-5f * std::fabs(r.topk_weight(t, j)));
    }
    CHECK(same >= T - 2);  // exp differs by an ulp between the two: only near-ties may differ
  }
}

int main(int argc, char** argv) {
  doctest::Context ctx(argc, argv);
  bool listing = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    listing = listing || a.rfind("--list", 0) == 0 || a.rfind("-l", 0) == 0 || a == "--help" || a == "-h";
  }
  if (!listing && gpu::device_count() == 0) {
    std::puts("test_cuda_ops: no CUDA device, skipped");
    return 77;  // SKIP_RETURN_CODE
  }
  return ctx.run();
}
