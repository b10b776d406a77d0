// The shared attention kernel against float64, over thread counts and context lengths that
// take the plain and the split-KV paths, with GQA grouping and causal prefill blocks.
#include <doctest/doctest.h>

#include "test_attn_support.hpp"

using namespace moela;

TEST_CASE("attend: float64 reference, GQA, causal chunks, split-KV, lse") {
  const index_t KV = 2, G = 3, H = KV * G, d = 24;
  for (int threads : {1, 2, 5}) {
    set_num_threads(threads);
    for (index_t ctx : {0L, 40L, 700L, 2100L}) {
      for (index_t n_new : {1L, 3L, 70L}) {
        CAPTURE(threads);
        CAPTURE(ctx);
        CAPTURE(n_new);
        attn::paged_cache<attn::cache_f32> cache({2 * KV * d, 0, 1}, 64);
        const index_t s = cache.add_sequence();
        std::mt19937 rng(unsigned(ctx + 7 * n_new));
        const index_t keys = ctx + n_new, W = 2 * KV * d;
        const auto kv = attn_test::random_matrix(rng, keys, W, 1.f);
        attn::seq_chunk c{s, keys};
        if (ctx > 0) {
          c.tokens = ctx;
          cache.prepare(std::span(&c, 1));
          for (index_t t = 0; t < ctx; ++t) attn::write_record(cache, 0, s, t, kv.data() + t * W, nullptr);
          cache.commit();
        }
        c.tokens = n_new;
        cache.prepare(std::span(&c, 1));
        for (index_t t = ctx; t < keys; ++t) attn::write_record(cache, 0, s, t, kv.data() + t * W, nullptr);
        const auto q = attn_test::random_matrix(rng, n_new * H, d, 1.f);
        tensor<float, 2> o({n_new * H, d}), lse({n_new, H});
        attn::attend_shape sh;
        sh.heads = H; sh.kv_heads = KV; sh.dk = d; sh.dv = d; sh.key_step = d; sh.value_offset = KV * d;
        sh.value_step = d; sh.q_ld = d; sh.o_ld = d; sh.scale = 0.3f;
        attn::attend_work work;
        attn::attend(cache, 0, std::span(&c, 1), sh, q.data(), o.data(), lse.data(), work);
        double err = 0, mx = 0, lerr = 0;
        for (index_t i = 0; i < n_new; ++i)
          for (index_t h = 0; h < H; ++h) {
            const index_t g = h / G, lim = ctx + i + 1;
            std::vector<double> sc(static_cast<std::size_t>(lim));
            double m = -1e300, sum = 0;
            for (index_t t = 0; t < lim; ++t) {
              double a = 0;
              for (index_t j = 0; j < d; ++j) a += double(q(i * H + h, j)) * kv(t, g * d + j);
              sc[static_cast<std::size_t>(t)] = 0.3 * a;
              m = std::max(m, sc[static_cast<std::size_t>(t)]);
            }
            for (auto& e : sc) sum += (e = std::exp(e - m));
            for (index_t j = 0; j < d; ++j) {
              double a = 0;
              for (index_t t = 0; t < lim; ++t) a += sc[static_cast<std::size_t>(t)] / sum * kv(t, KV * d + g * d + j);
              err = std::max(err, std::fabs(a - o(i * H + h, j)));
              mx = std::max(mx, std::fabs(a));
            }
            lerr = std::max(lerr, std::fabs(m + std::log(sum) - lse(i, h)));
          }
        // FP32 dot products of 24 terms and sums over up to 2170 keys: well under 1e-5 of
        // max|o|; the log-sum-exp is an O(1) value with FP32 exp/log rounding.
        CHECK(err / mx <= 1e-5);
        CHECK(lerr <= 1e-4);
        cache.rollback();
      }
    }
  }
  set_num_threads(2);
}
