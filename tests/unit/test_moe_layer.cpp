// The whole MoE layer against a dense float64 evaluation (every expert on every token, combined
// with the reference router's weights), edge cases of the dispatch, load statistics, the bias
// balancer and construction errors.
#include <doctest/doctest.h>

#include <moela/moe.hpp>

#include "moe_reference.hpp"

#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "support/random.hpp"

using namespace moela;
using namespace moela::moe;

namespace {

using moela_test::random_matrix;

moe_config small_config(index_t E, index_t K, index_t G, index_t TG, score_fn s, topk_rule m, bool norm, float scale,
                        index_t shared, index_t hidden = 48, index_t inter = 20) {
  moe_config c;
  c.hidden_size = hidden;
  c.n_routed_experts = E;
  c.num_experts_per_tok = K;
  c.n_group = G;
  c.topk_group = TG;
  c.scoring_func = s;
  c.topk_method = m;
  c.norm_topk_prob = norm;
  c.routed_scaling_factor = scale;
  c.n_shared_experts = shared;
  c.moe_intermediate_size = inter;  // 20: not a multiple of any SIMD width on purpose
  return c;
}

template <class Format>
swiglu_weights<Format> random_ffn(std::mt19937& rng, index_t D, index_t I) {
  const float sd_in = 1.0f / std::sqrt(float(D)), sd_out = 1.0f / std::sqrt(float(I));
  return {qmatrix<Format>::quantize(random_matrix(rng, I, D, sd_in).cview()), qmatrix<Format>::quantize(random_matrix(rng, I, D, sd_in).cview()),
          qmatrix<Format>::quantize(random_matrix(rng, D, I, sd_out).cview())};
}

template <class Format>
moe_weights<Format> random_weights(std::mt19937& rng, const moe_config& c, float bias_spread = 0.2f) {
  moe_weights<Format> w;
  w.gate = random_matrix(rng, c.n_routed_experts, c.hidden_size, 1.0f / std::sqrt(float(c.hidden_size)));
  if (c.has_bias()) {
    w.bias = tensor<float, 1>({c.n_routed_experts});
    std::uniform_real_distribution<float> ud(0.f, bias_spread);
    for (auto& v : w.bias.flat()) v = ud(rng);
  }
  for (index_t e = 0; e < c.n_routed_experts; ++e)
    w.experts.push_back(random_ffn<Format>(rng, c.hidden_size, c.moe_intermediate_size));
  if (c.n_shared_experts > 0) w.shared = random_ffn<Format>(rng, c.hidden_size, c.shared_intermediate_size());
  return w;
}

// An expert's float64 output, and for each output element a slack: the most that int8 codes
// sitting on a rounding boundary may move it (zero outside the int8-activation mode).
struct expert_ref {
  std::vector<double> y, slack;
};

// v rounded the way the int8-activation mode rounds it (the library's grouped INT8 quantizer,
// tested against its definition in test_quant_formats), dequantized exactly, plus each
// element's scale where its value / scale lies within 1e-3 of a rounding boundary (else 0).
// The layer computes h in fp32 (SIMD exp in silu, fp32 sums: relative error ~1e-6, i.e. up to
// ~1e-4 code steps), so there its code may be the neighbour of the float64 one.
std::pair<std::vector<double>, std::vector<double>> int8_rounded(const std::vector<double>& v) {
  const auto n = static_cast<index_t>(v.size());
  tensor<float, 2> t({1, n});
  for (index_t i = 0; i < n; ++i) t(0, i) = static_cast<float>(v[i]);
  quant::int8_activation_rows q(t.cview());
  std::vector<double> r(v.size()), edge(v.size(), 0.0);
  for (index_t i = 0; i < n; ++i) {
    const double sc = q.scales()(0, i / quant::int8_activation_group);
    r[i] = double(q.codes()(0, i)) * sc;
    const double u = v[i] / sc;
    if (sc > 0 && std::abs(u - std::floor(u) - 0.5) < 1e-3) edge[i] = sc;
  }
  return {r, edge};
}

// v rounded to bf16 (RNE, through fp32 as the layer rounds its fp32 values), plus each element's
// bf16 ulp where its value lies within 1e-3 ulp of a rounding boundary (else 0): there the
// layer's fp32 h (relative error ~1e-6, ~1e-4 ulp) may round to the neighbouring value.
std::pair<std::vector<double>, std::vector<double>> bf16_rounded(const std::vector<double>& v) {
  std::vector<double> r(v.size()), edge(v.size(), 0.0);
  for (std::size_t i = 0; i < v.size(); ++i) {
    r[i] = moela::bf16(static_cast<float>(v[i])).to_float();
    if (v[i] == 0) continue;
    const double ulp = std::ldexp(1.0, std::ilogb(v[i]) - 7);
    const double u = std::abs(v[i]) / ulp;
    if (std::abs(u - std::floor(u) - 0.5) < 1e-3) edge[i] = ulp;
  }
  return {r, edge};
}

// float64 SwiGLU with the layer's (dequantised) weights. Formats that multiply int8 (bf16)
// activations have x and h rounded to int8 groups (bf16) first, as the layer does.
template <class Format>
expert_ref ref_expert(const swiglu_weights<Format>& w, const std::vector<double>& x) {
  constexpr bool a8 = std::is_same_v<quant::default_mode_t<Format>, quant::mode::int8_activations>;
  constexpr bool a16 = std::is_same_v<quant::default_mode_t<Format>, quant::mode::bf16_activations>;
  auto rounded = [](const std::vector<double>& v) {
    return a8 ? int8_rounded(v) : a16 ? bf16_rounded(v) : std::pair{v, std::vector<double>(v.size(), 0.0)};
  };
  const auto g = w.gate_proj.dequantize(), u = w.up_proj.dequantize(), dn = w.down_proj.dequantize();
  const index_t I = g.extent(0), D = g.extent(1);
  const auto xq = rounded(x).first;  // x is fp32 in the layer too: the same codes
  std::vector<double> h(I);
  for (index_t i = 0; i < I; ++i) {
    double a = 0, b = 0;
    for (index_t d = 0; d < D; ++d) {
      a += g(i, d) * xq[d];
      b += u(i, d) * xq[d];
    }
    h[i] = a / (1.0 + std::exp(-a)) * b;
  }
  const auto [hq, edge] = rounded(h);
  expert_ref r{std::vector<double>(D, 0.0), std::vector<double>(D, 0.0)};
  for (index_t d = 0; d < D; ++d)
    for (index_t i = 0; i < I; ++i) {
      r.y[d] += dn(d, i) * hq[i];
      r.slack[d] += std::abs(dn(d, i)) * edge[i];
    }
  return r;
}

struct dense_reference {
  std::vector<std::vector<double>> y;      // [T][D]
  std::vector<std::vector<double>> slack;  // [T][D], see expert_ref
  std::vector<index_t> load;           // [E]
  int near_ties = 0;
};

// Every expert on every token (dense), combined with the float64 router's weights.
template <class Layer>
dense_reference evaluate_dense(const Layer& layer, const tensor<float, 2>& x) {
  const moe_config& c = layer.config();
  const index_t T = x.extent(0), D = c.hidden_size, E = c.n_routed_experts;
  const auto W = layer.router().gate_weight().dequantize();
  std::vector<double> bias(layer.router().bias().begin(), layer.router().bias().end());
  dense_reference r;
  r.load.assign(E, 0);
  for (index_t t = 0; t < T; ++t) {
    std::vector<double> xt(D), logits(E);
    for (index_t d = 0; d < D; ++d) xt[d] = x(t, d);
    for (index_t e = 0; e < E; ++e)
      for (index_t d = 0; d < D; ++d) logits[e] += W(e, d) * xt[d];
    const auto route = moe_ref::reference_route(c, logits, bias);
    if (route.margin <= 1e-5) ++r.near_ties;
    std::vector<double> combine(E, 0.0);
    for (std::size_t i = 0; i < route.idx.size(); ++i) {
      combine[route.idx[i]] = route.weight[i];
      ++r.load[route.idx[i]];
    }
    std::vector<double> y(D, 0.0), slack(D, 0.0);
    for (index_t e = 0; e < E; ++e) {
      const auto ye = ref_expert(layer.experts()[e], xt);  // dense: evaluated even when unused
      for (index_t d = 0; d < D; ++d) {
        y[d] += combine[e] * ye.y[d];
        slack[d] += std::abs(combine[e]) * ye.slack[d];
      }
    }
    if (c.n_shared_experts > 0) {
      const auto ys = ref_expert(layer.shared(), xt);
      for (index_t d = 0; d < D; ++d) {
        y[d] += ys.y[d];
        slack[d] += ys.slack[d];
      }
    }
    r.y.push_back(y);
    r.slack.push_back(slack);
  }
  return r;
}

// max|got - want| / max|want| (the golden README's metric).
double rel_err(const tensor<float, 2>& got, const std::vector<std::vector<double>>& want) {
  double num = 0, den = 0;
  for (index_t t = 0; t < got.extent(0); ++t)
    for (index_t d = 0; d < got.extent(1); ++d) {
      num = std::max(num, std::abs(got(t, d) - want[t][d]));
      den = std::max(den, std::abs(want[t][d]));
    }
  return den > 0 ? num / den : num;
}

// FP32 evaluation of a 48 -> 20/40 -> 48 SwiGLU, the gate and the combine: every step has
// relative error ~1e-6 (sums of <= 48 products), so 1e-4 of the output's max is a bound with a
// wide margin, while a wrong expert, weight or missing shared expert moves e by >= 1e-2.
constexpr double tol = 1e-4;

template <class Format, class Router = config_router>
void check_layer(const moe_config& c, index_t T, std::uint32_t seed) {
  CAPTURE(T);
  std::mt19937 rng(seed);
  moe_layer<cpu<>, Format, Router> layer(c, random_weights<Format>(rng, c));
  const tensor<float, 2> x = random_matrix(rng, T, c.hidden_size, 1.0f);
  tensor<float, 2> y({T, c.hidden_size});
  layer.forward(y.view(), x.cview());
  const dense_reference ref = evaluate_dense(layer, x);
  CHECK(ref.near_ties == 0);  // fixed seeds chosen without near-ties; routing must then agree
  // |y - ref| <= tol * max|ref| (+ the slack of int8 codes on a rounding boundary, 0 unless the
  // format multiplies int8 activations).
  double den = 0;
  for (const auto& row : ref.y)
    for (double v : row) den = std::max(den, std::abs(v));
  int bad = 0;
  for (index_t t = 0; t < T; ++t)
    for (index_t d = 0; d < c.hidden_size; ++d)
      bad += std::abs(double(y(t, d)) - ref.y[t][d]) > tol * den + ref.slack[t][d];
  CHECK(bad == 0);
  for (index_t e = 0; e < c.n_routed_experts; ++e) CHECK(layer.last_load()[e] == ref.load[e]);
  CHECK(std::accumulate(layer.last_load().begin(), layer.last_load().end(), index_t{0}) == T * c.num_experts_per_tok);
}

}  // namespace

// The reference uses each format's dequantised weights, so every format meets the same bound.
TEST_CASE_TEMPLATE("moe_layer equals a dense float64 evaluation", F, quant::f32, quant::bf16, quant::fp16,
                   quant::fp8_block<128, 128>, quant::int8_rowwise<>) {
  SUBCASE("V2-Lite-like: softmax, greedy, 2 shared") {
    const auto c = small_config(16, 6, 1, 1, score_fn::softmax, topk_rule::greedy, false, 1.0f, 2);
    check_layer<F, v2_lite_router>(c, 1, 1);
    check_layer<F>(c, 9, 2);
    check_layer<F>(c, 70, 3);
  }
  SUBCASE("V2-like: softmax, group max, x16") {
    const auto c = small_config(24, 4, 4, 2, score_fn::softmax, topk_rule::group_limited_greedy, false, 16.0f, 2);
    check_layer<F, v2_router>(c, 5, 4);
    check_layer<F>(c, 33, 5);
  }
  SUBCASE("V3-like: sigmoid, bias, top-2 group sum, normalised, x2.5, 1 shared") {
    const auto c = small_config(32, 8, 8, 4, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f, 1);
    check_layer<F, v3_router>(c, 1, 6);
    check_layer<F>(c, 40, 7);
  }
  SUBCASE("experts wider than one task chunk (several row chunks, partial blocks)") {
    // I = 300 and D = 200: 3 and 2 chunks of 128 rows, the last ones partial.
    const auto c = small_config(8, 3, 2, 1, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f, 2, 200, 300);
    check_layer<F>(c, 1, 21);
    check_layer<F>(c, 13, 22);
  }
  SUBCASE("no shared expert; top-k = number of experts") {
    check_layer<F>(small_config(8, 3, 1, 1, score_fn::sigmoid, topk_rule::greedy, true, 1.0f, 0), 11, 8);
    check_layer<F>(small_config(6, 6, 1, 1, score_fn::softmax, topk_rule::greedy, false, 1.0f, 1), 7, 9);
    check_layer<F>(small_config(8, 8, 2, 2, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.0f, 1), 4, 10);
  }
}

// Formats whose default is int8 activations: the reference rounds x and h to int8 groups the
// same way, so the bound above holds except where an fp32 h sits on a rounding boundary of its
// group and takes the neighbouring code: one code step on one term, which the reference's
// slack allows for exactly those elements (measured: such flips move an output by up to 4e-4 of
// max|y|; away from them the error is fp32 rounding). A layer that quantized a wrong or
// incomplete row (another job's x, h before all of its chunks are written) misses by >= 1e-2.
// The same for bf16 activations (int4_group_a16: x and h rounded to bf16, the slack one bf16 ulp
// of the h elements within 1e-3 ulp of a rounding boundary).
TEST_CASE_TEMPLATE("moe_layer with int8 or bf16 activations equals the float64 evaluation of the mode", F,
                   quant::int8_rowwise_a8<>, quant::int4_group_a8<32>, quant::int4_group_a16<32>) {
  SUBCASE("V3-like: sigmoid, bias, top-2 group sum, 1 shared") {
    const auto c = small_config(32, 8, 8, 4, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f, 1, 64, 96);
    check_layer<F>(c, 1, 6);
    check_layer<F>(c, 3, 11);
    check_layer<F>(c, 40, 7);
  }
  SUBCASE("experts wider than one task chunk, hidden wider than an activation group") {
    // I = 320, D = 192: 3 and 2 chunks of 128 rows; D spans two activation groups (128 + 64).
    const auto c = small_config(8, 3, 2, 1, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f, 2, 192, 320);
    check_layer<F>(c, 1, 21);
    check_layer<F>(c, 13, 22);
  }
}

TEST_CASE_TEMPLATE("row_slice: a chunk of rows equals those rows of the matrix", F, quant::f32, quant::bf16,
                   quant::fp8_block<128, 128>, quant::int8_rowwise<>, quant::int8_group<32>, quant::int4_group<32>,
                   quant::int4_group_asym<64>) {
  std::mt19937 rng(30);
  const qmatrix<F> w = qmatrix<F>::quantize(random_matrix(rng, 300, 256, 1.0f).cview());
  const auto full = w.dequantize();
  for (auto [r0, r1] : {std::pair<index_t, index_t>{0, 128}, {128, 256}, {256, 300}, {0, 300}}) {
    const qmatrix<F> s = row_slice(w, r0, r1);
    CHECK(s.rows() == r1 - r0);
    CHECK(!s.owns_storage());
    const auto part = s.dequantize();
    for (index_t r = r0; r < r1; ++r)
      for (index_t k = 0; k < 256; ++k) REQUIRE(part(r - r0, k) == full(r, k));
  }
  if constexpr (F::block_rows > 1) CHECK_THROWS_WITH_AS(row_slice(w, 64, 128), doctest::Contains("block boundary"), moela::error);
}

// The runner cuts each matrix into row ranges that depend on the jobs and on the thread count:
// a hot job alone is cut into many ranges, many small jobs keep their matrices whole. With
// 8-row chunks (I = 64: up to 8 ranges, D = 32: up to 4) every kind of cut happens here; each
// job's rows must equal its float64 expert, and the result must not depend on the thread count
// (the cuts do). Bound: the file's `tol`, fp32 sums of 32-64 products against float64.
TEST_CASE_TEMPLATE("expert_runner: every cut of the matrices into row ranges gives the float64 result", F, quant::f32,
                   quant::bf16, quant::int4_group<32>) {
  const index_t D = 32, I = 64;
  std::mt19937 rng(40);
  std::vector<swiglu_weights<F>> ffn;
  for (int e = 0; e < 6; ++e) ffn.push_back(random_ffn<F>(rng, D, I));
  std::vector<sliced_ffn<F>> sliced;
  for (const auto& w : ffn) sliced.emplace_back(w, 8);
  const std::vector<std::vector<index_t>> batches = {
      {37},                    // one hot job
      {1, 0, 5, 12, 3, 1},     // uneven, with a job without tokens
      {3, 2, 3, 1, 2, 3, 2, 1, 3, 2, 2, 3, 1, 2, 3, 3, 2, 1}};  // many small jobs
  for (const auto& ms : batches) {
    index_t T = 0;
    for (index_t m : ms) T += m;
    const tensor<float, 2> x = random_matrix(rng, T, D, 1.0f);
    auto run = [&](int threads) {
      tensor<float, 2> y({T, D});
      std::vector<expert_job<F>> jobs;
      for (index_t j = 0, t = 0; j < static_cast<index_t>(ms.size()); t += ms[static_cast<std::size_t>(j)], ++j) {
        const index_t t1 = t + ms[static_cast<std::size_t>(j)];
        jobs.push_back({&sliced[static_cast<std::size_t>(j) % sliced.size()], x.cview().slice(0, t, t1),
                        y.view().slice(0, t, t1)});
      }
      const int n = num_threads();
      set_num_threads(threads);
      expert_runner().run(cpu<>{}, std::span<const expert_job<F>>(jobs));
      set_num_threads(n);
      return y;
    };
    const tensor<float, 2> y1 = run(1), y2 = run(std::max(2, num_threads()));
    for (index_t i = 0; i < y1.size(); ++i) REQUIRE(y1.data()[i] == y2.data()[i]);  // bit-identical
    double err = 0, mx = 0;
    for (index_t j = 0, t = 0; j < static_cast<index_t>(ms.size()); ++j)
      for (index_t r = 0; r < ms[static_cast<std::size_t>(j)]; ++r, ++t) {
        std::vector<double> xr(static_cast<std::size_t>(D));
        for (index_t d = 0; d < D; ++d) xr[static_cast<std::size_t>(d)] = x(t, d);
        const expert_ref want = ref_expert(ffn[static_cast<std::size_t>(j) % ffn.size()], xr);
        for (index_t d = 0; d < D; ++d) {
          err = std::max(err, std::abs(double(y1(t, d)) - want.y[static_cast<std::size_t>(d)]));
          mx = std::max(mx, std::abs(want.y[static_cast<std::size_t>(d)]));
        }
      }
    CHECK(err <= tol * mx);
  }
  CHECK_THROWS_WITH_AS(sliced_ffn<F>(ffn[0], 0), doctest::Contains("chunk_rows 0"), moela::error);
}

TEST_CASE("moe_layer: T = 0") {
  const auto c = small_config(16, 4, 4, 2, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f, 1);
  std::mt19937 rng(1);
  moe_layer<cpu<>, quant::f32> layer(c, random_weights<quant::f32>(rng, c));
  tensor<float, 2> x({0, 48}), y({0, 48});
  layer.forward(y.view(), x.cview());
  CHECK(layer.routing().tokens() == 0);
  CHECK(layer.plan().active.empty());
  for (index_t l : layer.last_load()) CHECK(l == 0);
  CHECK(layer.active_weight_bytes() == layer.router().gate_weight().bytes() + layer.shared().bytes());
}

TEST_CASE("moe_layer: one token touches only its K experts") {
  const auto c = small_config(16, 4, 1, 1, score_fn::softmax, topk_rule::greedy, false, 1.0f, 1);
  std::mt19937 rng(2);
  moe_layer<cpu<>, quant::bf16> layer(c, random_weights<quant::bf16>(rng, c));
  const tensor<float, 2> x = random_matrix(rng, 1, 48, 1.0f);
  tensor<float, 2> y({1, 48});
  layer.forward(y.view(), x.cview());
  CHECK(layer.plan().active.size() == 4);
  index_t idle = 0;
  for (index_t l : layer.last_load()) idle += (l == 0);
  CHECK(idle == 12);
  CHECK(layer.active_weight_bytes() ==
        layer.router().gate_weight().bytes() + layer.shared().bytes() + 4 * layer.experts()[0].bytes());
}

TEST_CASE("moe_layer: owned routed experts move into one shared buffer; borrowed ones stay in place") {
  const auto c = small_config(16, 4, 1, 1, score_fn::softmax, topk_rule::greedy, false, 1.0f, 1);
  std::mt19937 rng(3);
  auto w = random_weights<quant::bf16>(rng, c);
  // Borrowed copies of the same weights (as a memory-mapped checkpoint would give), over
  // storage that `keep` holds (the owned layer gives its experts' old storage back).
  const auto keep = w.experts;
  moe_weights<quant::bf16> wb{w.gate, w.bias, {}, w.shared};
  for (const auto& e : w.experts)
    wb.experts.push_back({qmatrix<quant::bf16>::borrow(e.gate_proj.codes()), qmatrix<quant::bf16>::borrow(e.up_proj.codes()),
                          qmatrix<quant::bf16>::borrow(e.down_proj.codes())});
  const moela::bf16* src = w.experts[2].up_proj.row_codes(0);
  moe_layer<cpu<>, quant::bf16> borrowed(c, std::move(wb));
  CHECK(borrowed.experts()[2].up_proj.row_codes(0) == src);
  CHECK(!borrowed.experts()[2].up_proj.owns_storage());
  moe_layer<cpu<>, quant::bf16> owned(c, std::move(w));
  const std::uint8_t* prev = nullptr;
  for (const auto& e : owned.experts())
    for (const auto* m : {&e.gate_proj, &e.up_proj, &e.down_proj}) {
      const auto* p = reinterpret_cast<const std::uint8_t*>(m->row_codes(0));
      CHECK(m->owns_storage());
      if (prev) CHECK(p == prev + m->bytes());  // back to back (each size a multiple of 64 bytes)
      prev = p;
    }
  // Both layers compute the same thing.
  const tensor<float, 2> x = random_matrix(rng, 5, 48, 1.0f);
  tensor<float, 2> ya({5, 48}), yb({5, 48});
  owned.forward(ya.view(), x.cview());
  borrowed.forward(yb.view(), x.cview());
  CHECK(std::memcmp(ya.data(), yb.data(), ya.bytes()) == 0);
}

TEST_CASE("moe_layer: all tokens on one expert (a hot expert)") {
  // A large correction bias on expert 5 makes it every token's first choice; the weight still
  // comes from its unbiased score.
  const auto c = small_config(16, 2, 4, 2, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f, 1);
  std::mt19937 rng(3);
  auto w = random_weights<quant::f32>(rng, c);
  w.bias(5) = 50.0f;
  moe_layer<cpu<>, quant::f32> layer(c, std::move(w));
  const index_t T = 64;
  const tensor<float, 2> x = random_matrix(rng, T, 48, 1.0f);
  tensor<float, 2> y({T, 48});
  layer.forward(y.view(), x.cview());
  CHECK(layer.last_load()[5] == T);
  for (index_t t = 0; t < T; ++t) CHECK(layer.routing().topk_idx(t, 0) == 5);
  const dense_reference ref = evaluate_dense(layer, x);
  CHECK(ref.load[5] == T);
  CHECK(rel_err(y, ref.y) <= tol);
}

TEST_CASE("moe_layer: the result does not depend on the thread count") {
  const auto c = small_config(16, 4, 4, 2, score_fn::sigmoid, topk_rule::noaux_tc, true, 2.5f, 1);
  std::mt19937 rng(4);
  moe_layer<cpu<>, quant::f32> layer(c, random_weights<quant::f32>(rng, c));
  const tensor<float, 2> x = random_matrix(rng, 100, 48, 1.0f);
  tensor<float, 2> y1({100, 48}), y2({100, 48});
  const int n = num_threads();
  set_num_threads(1);
  layer.forward(y1.view(), x.cview());
  set_num_threads(std::max(2, n));
  layer.forward(y2.view(), x.cview());
  set_num_threads(n);
  for (index_t i = 0; i < y1.size(); ++i) REQUIRE(y1.data()[i] == y2.data()[i]);  // bit-identical
}

TEST_CASE("balance_bias: bias += gamma * sign(mean_load - load)") {
  std::vector<float> bias = {0.f, 0.1f, -0.2f, 0.f};
  const std::vector<index_t> load = {10, 2, 4, 0};  // mean 4
  balance_bias(bias, load, 0.001f);
  CHECK(bias[0] == doctest::Approx(-0.001f));
  CHECK(bias[1] == doctest::Approx(0.101f));
  CHECK(bias[2] == -0.2f);  // exactly at the mean: unchanged
  CHECK(bias[3] == doctest::Approx(0.001f));
  CHECK_THROWS_WITH_AS(balance_bias(bias, std::vector<index_t>{1, 2}, 0.001f), doctest::Contains("one per routed expert"),
                       moela::error);
  CHECK_THROWS_AS(balance_bias(bias, load, NAN), moela::error);
}

TEST_CASE("balance_bias: repeated updates even out a skewed load") {
  const auto c = small_config(16, 2, 1, 1, score_fn::sigmoid, topk_rule::noaux_tc, true, 1.0f, 0);
  std::mt19937 rng(5);
  auto w = random_weights<quant::f32>(rng, c);
  for (index_t d = 0; d < 48; ++d) w.gate(3, d) += 0.5f;  // expert 3 attracts most tokens
  moe_layer<cpu<>, quant::f32> layer(c, std::move(w));
  std::normal_distribution<float> nd(0.5f, 1.0f);
  tensor<float, 2> x({256, 48}), y({256, 48});
  for (auto& v : x.flat()) v = nd(rng);
  layer.forward(y.view(), x.cview());
  const index_t first = *std::max_element(layer.last_load().begin(), layer.last_load().end());
  for (int step = 0; step < 200; ++step) {
    balance_bias(layer.router().bias(), layer.last_load(), 0.01f);
    layer.forward(y.view(), x.cview());
  }
  const index_t last = *std::max_element(layer.last_load().begin(), layer.last_load().end());
  CHECK(first > 100);    // skewed at the start (mean load is 32)
  CHECK(last < first / 2);
}

TEST_CASE("moe_layer: construction and call errors") {
  const auto c = small_config(8, 2, 1, 1, score_fn::softmax, topk_rule::greedy, false, 1.0f, 1);
  std::mt19937 rng(6);
  {
    auto w = random_weights<quant::f32>(rng, c);
    w.experts.pop_back();
    CHECK_THROWS_WITH_AS((moe_layer<cpu<>, quant::f32>(c, std::move(w))), doctest::Contains("7 routed experts"),
                         moela::error);
  }
  {
    auto w = random_weights<quant::f32>(rng, c);
    w.experts[3].down_proj = qmatrix<quant::f32>::quantize(tensor<float, 2>({48, 21}).cview());
    CHECK_THROWS_WITH_AS((moe_layer<cpu<>, quant::f32>(c, std::move(w))), doctest::Contains("experts.3"), moela::error);
  }
  {
    auto w = random_weights<quant::f32>(rng, c);
    w.shared.up_proj = qmatrix<quant::f32>::quantize(tensor<float, 2>({40, 48}).cview());  // width 20 expected
    CHECK_THROWS_WITH_AS((moe_layer<cpu<>, quant::f32>(c, std::move(w))), doctest::Contains("shared_experts"),
                         moela::error);
  }
  moe_layer<cpu<>, quant::f32> layer(c, random_weights<quant::f32>(rng, c));
  tensor<float, 2> x({3, 48}), y({2, 48});
  CHECK_THROWS_WITH_AS(layer.forward(y.view(), x.cview()), doctest::Contains("[T, 48]"), moela::error);
}

TEST_CASE("dispatch_plan: counting sort is stable and complete") {
  routing r;
  r.resize(5, 2, 4);
  const int ids[5][2] = {{3, 0}, {0, 1}, {3, 1}, {2, 3}, {0, 3}};
  for (index_t t = 0; t < 5; ++t)
    for (index_t s = 0; s < 2; ++s) {
      r.topk_idx(t, s) = ids[t][s];
      r.topk_weight(t, s) = float(10 * t + s);
    }
  dispatch_plan p;
  p.build(r, 4);
  CHECK(p.offsets == std::vector<index_t>{0, 3, 5, 6, 10});
  CHECK(p.token == std::vector<index_t>{0, 1, 4, 1, 2, 3, 0, 2, 3, 4});
  CHECK(p.active == std::vector<std::int32_t>{0, 1, 2, 3});
  for (index_t t = 0; t < 5; ++t)
    for (index_t s = 0; s < 2; ++s) {
      const index_t pos = p.position[t * 2 + s];
      CHECK(p.token[pos] == t);
      CHECK(p.weight[pos] == float(10 * t + s));
    }
  r.topk_idx(2, 1) = 4;
  CHECK_THROWS_WITH_AS(p.build(r, 4), doctest::Contains("expert id 4"), moela::error);
  r.topk_idx(2, 1) = 1;
  // gather needs exactly the plan's token rows in x
  tensor<float, 2> xs({10, 3}), x4({4, 3}), x5({5, 3});
  CHECK_THROWS_WITH_AS(p.gather(xs.view(), x4.cview()),
                       "moe::dispatch_plan::gather: x has 4 rows but the plan routes 5 tokens", moela::error);
  CHECK_NOTHROW(p.gather(xs.view(), x5.cview()));
  // build needs weights of the ids' shape
  r.topk_weight = tensor<float, 2>({5, 1});
  CHECK_THROWS_WITH_AS(p.build(r, 4), "moe::dispatch_plan: topk_weight is [5, 1] but topk_idx is [5, 2]", moela::error);
}

TEST_CASE("select_experts: validates the config before routing") {
  // top-k 8 of 4 experts: would overrun the per-token buffers; rejected by moe_config::validate.
  moe_config c = small_config(4, 8, 1, 1, score_fn::softmax, topk_rule::greedy, false, 1.0f, 0);
  tensor<float, 2> logits({2, 4});
  routing r;
  CHECK_THROWS_AS((select_experts<softmax_scoring, no_group_limit>(c, logits.cview(), {}, r)), moela::error);
}
