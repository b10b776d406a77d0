// KV caches: sizes, FP8 round trip, page accounting, step protocol and error isolation.
#include <doctest/doctest.h>

#include "test_attn_support.hpp"

#include <cstring>

using namespace moela;

TEST_CASE("cache sizes: V3 latent 1152 B in bf16 vs 81920 naive and 65536 MHA; V2-Lite; FP8 record") {
  const auto v3 = attn::mla_config::deepseek_v3();
  const auto f = attn::footprint(v3, 2);
  CHECK(f.latent == 1152);
  CHECK(f.naive == 81920);
  CHECK(f.mha == 65536);
  CHECK(attn::cache_bf16::record_bytes(v3.kv_rank, v3.rope_dim) == 1152);
  CHECK(attn::cache_f32::record_bytes(v3.kv_rank, v3.rope_dim) == 2304);
  CHECK(attn::cache_fp8::record_bytes(v3.kv_rank, v3.rope_dim) == 644);  // 512 e4m3 + 64 bf16 + f32 scale
  // The pool holds exactly pages x page_size x layers x record bytes: no per-token overhead.
  attn::paged_cache<attn::cache_bf16> c(attn::mla_cache_layout(v3, 61), 10);
  CHECK(c.bytes_per_token() == 1152);
  CHECK(c.memory_bytes() == std::size_t{10} * 64 * 61 * 1152);
  attn::contiguous_cache<attn::cache_fp8> k(attn::mla_cache_layout(v3, 2), 3, 100);
  CHECK(k.memory_bytes() == std::size_t{3} * 100 * 2 * 644);
}

TEST_CASE_TEMPLATE("cache formats: round trip within the format's bound", F, attn::cache_f32, attn::cache_bf16,
                   attn::cache_fp8) {
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.f, 3.f);
  const index_t a = 160, b = 64;
  std::vector<float> va(a), vb(b), out(a + b);
  std::vector<std::byte> rec(F::record_bytes(a, b));
  for (int trial = 0; trial < 20; ++trial) {
    for (auto& v : va) v = nd(rng);
    for (auto& v : vb) v = nd(rng);
    if (trial == 0) std::fill(va.begin(), va.end(), 0.f);  // all-zero latent (FP8 scale fallback)
    F::encode(va.data(), a, vb.data(), b, rec.data());
    F::template decode<xsimd::default_arch>(rec.data(), a, b, out.data());
    float amax = 0;
    for (float v : va) amax = std::max(amax, std::fabs(v));
    for (index_t i = 0; i < a; ++i) {
      const float x = va[static_cast<std::size_t>(i)], y = out[static_cast<std::size_t>(i)];
      if constexpr (std::is_same_v<F, attn::cache_f32>) CHECK(y == x);
      // bf16 RNE: half an ulp of 8 significant bits = 2^-8 relative.
      if constexpr (std::is_same_v<F, attn::cache_bf16>) CHECK(std::fabs(y - x) <= 0x1p-8 * std::fabs(x));
      // e4m3 RNE with scale amax/448: 2^-4 relative for normals, 2^-10 * scale absolute for
      // subnormals (documented in cache_format.hpp).
      if constexpr (std::is_same_v<F, attn::cache_fp8>)
        CHECK(std::fabs(y - x) <= std::max(0x1p-4f * std::fabs(x), 0x1p-10f * amax / 448.f) * 1.0001f);
    }
    for (index_t i = 0; i < b; ++i) {
      const float x = vb[static_cast<std::size_t>(i)], y = out[static_cast<std::size_t>(a + i)];
      if constexpr (std::is_same_v<F, attn::cache_f32>) CHECK(y == x);
      else CHECK(std::fabs(y - x) <= 0x1p-8 * std::fabs(x));  // B part is bf16 in both
    }
  }
}

TEST_CASE("fp8 decode: every code through the SIMD path equals the scalar table") {
  std::vector<std::uint8_t> codes(256);
  for (int i = 0; i < 256; ++i) codes[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(i);
  std::vector<float> out(256);
  attn::detail::widen_e4m3<xsimd::default_arch>(codes.data(), 256, 0.75f, out.data());
  for (int i = 0; i < 256; ++i) {
    if (i == 0x7F || i == 0xFF) continue;  // NaN codes: never written by the saturating encoder
    CAPTURE(i);
    CHECK(out[static_cast<std::size_t>(i)] == float(fp8_e4m3::from_bits(static_cast<std::uint8_t>(i))) * 0.75f);
  }
}

namespace {
template <class Cache>
std::vector<float> snapshot(const Cache& c, index_t seq) {
  const index_t w = c.layout().width(), n = c.length(seq);
  std::vector<float> r(static_cast<std::size_t>(n * w * c.layout().layers));
  for (index_t l = 0; l < c.layout().layers; ++l)
    for (index_t t = 0; t < n; ++t)
      attn::read_record(c, l, seq, t, std::span<float>(r.data() + (l * n + t) * w, static_cast<std::size_t>(w)));
  return r;
}
template <class Cache>
void fill(Cache& c, index_t seq, index_t n, float base) {
  attn::seq_chunk ch{seq, n};
  c.prepare(std::span(&ch, 1));
  std::vector<float> a(static_cast<std::size_t>(c.layout().a)), b(static_cast<std::size_t>(c.layout().b));
  for (index_t l = 0; l < c.layout().layers; ++l)
    for (index_t t = c.length(seq); t < c.length(seq) + n; ++t) {
      for (std::size_t i = 0; i < a.size(); ++i) a[i] = base + float(t) + 0.01f * float(i) + float(l);
      for (std::size_t i = 0; i < b.size(); ++i) b[i] = -base - float(t);
      attn::write_record(c, l, seq, t, a.data(), b.data());
    }
  c.commit();
}
}  // namespace

TEST_CASE("paged cache: pages on demand, release, exhaustion leaves every sequence untouched") {
  attn::paged_cache<attn::cache_f32> c({8, 4, 2}, 5, 4, 100);
  const index_t s0 = c.add_sequence(), s1 = c.add_sequence();
  fill(c, s0, 6, 1.f);  // 2 pages
  fill(c, s1, 3, 2.f);  // 1 page
  CHECK(c.free_pages() == 2);
  CHECK(c.pages_of(s0) == 2);
  CHECK(c.used_bytes() == 3 * (4 * 2 * c.record_bytes() + 4));
  const auto a0 = snapshot(c, s0), a1 = snapshot(c, s1);
  // Needs 2 more pages for s0 (to 14 tokens) and 1 for s1 (to 5): 3 > 2 free.
  const attn::seq_chunk bad[] = {{s0, 8}, {s1, 2}};
  CHECK_THROWS_WITH_AS(c.prepare(bad), doctest::Contains("pages"), moela::error);
  CHECK(c.length(s0) == 6);
  CHECK(c.length(s1) == 3);
  CHECK(c.free_pages() == 2);
  CHECK(!c.in_step());
  CHECK(snapshot(c, s0) == a0);
  CHECK(snapshot(c, s1) == a1);
  // Max positions, unknown and repeated sequences, zero tokens.
  const attn::seq_chunk too_far[] = {{s1, 1}, {s0, 95}};
  CHECK_THROWS_WITH_AS(c.prepare(too_far), doctest::Contains("max_positions"), moela::error);
  const attn::seq_chunk twice[] = {{s1, 1}, {s1, 1}};
  CHECK_THROWS_AS(c.prepare(twice), moela::error);
  const attn::seq_chunk unknown[] = {{7, 1}};
  CHECK_THROWS_AS(c.prepare(unknown), moela::error);
  const attn::seq_chunk zero[] = {{s0, 0}};
  CHECK_THROWS_AS(c.prepare(zero), moela::error);
  CHECK(c.free_pages() == 2);
  CHECK(snapshot(c, s0) == a0);
  CHECK(snapshot(c, s1) == a1);
  // Rollback returns the reserved pages.
  const attn::seq_chunk ok[] = {{s0, 4}};
  c.prepare(ok);
  CHECK(c.free_pages() == 1);
  CHECK(c.pending_length(s0) == 10);
  c.rollback();
  CHECK(c.free_pages() == 2);
  CHECK(c.length(s0) == 6);
  // Removing a sequence frees its pages for others.
  c.remove_sequence(s0);
  CHECK(c.free_pages() == 4);
  const index_t s2 = c.add_sequence();
  CHECK(s2 == s0);
  fill(c, s2, 16, 3.f);
  CHECK(c.free_pages() == 0);
  CHECK(snapshot(c, s1) == a1);
}

TEST_CASE("contiguous cache: capacity errors leave other sequences untouched") {
  attn::contiguous_cache<attn::cache_bf16> c({8, 4, 1}, 2, 10);
  const index_t s0 = c.add_sequence(), s1 = c.add_sequence();
  CHECK_THROWS_AS(c.add_sequence(), moela::error);
  fill(c, s0, 9, 1.f);
  fill(c, s1, 2, 2.f);
  const auto a0 = snapshot(c, s0), a1 = snapshot(c, s1);
  const attn::seq_chunk bad[] = {{s1, 1}, {s0, 2}};
  CHECK_THROWS_WITH_AS(c.prepare(bad), doctest::Contains("capacity"), moela::error);
  CHECK(c.length(s0) == 9);
  CHECK(c.length(s1) == 2);
  CHECK(snapshot(c, s0) == a0);
  CHECK(snapshot(c, s1) == a1);
  fill(c, s1, 8, 4.f);
  CHECK(c.length(s1) == 10);
  CHECK(snapshot(c, s0) == a0);
  std::vector<float> buf(12);
  CHECK_THROWS_AS(attn::read_record(c, 0, s0, 9, std::span<float>(buf)), moela::error);
}

TEST_CASE("caches: queries of a sequence that does not exist, bad sizes") {
  attn::paged_cache<attn::cache_f32> c({8, 4, 2}, 5, 4, 100);
  const index_t s = c.add_sequence();
  CHECK(c.length(s) == 0);
  CHECK(c.pending(s) == 0);
  CHECK(c.pages_of(s) == 0);
  CHECK_THROWS_WITH_AS(c.length(7), "cache::length: sequence 7 does not exist", moela::error);
  CHECK_THROWS_WITH_AS(c.pending(-1), "cache::pending: sequence -1 does not exist", moela::error);
  CHECK_THROWS_WITH_AS(c.pages_of(3), "paged_cache::pages_of: sequence 3 does not exist", moela::error);
  c.remove_sequence(s);
  CHECK_THROWS_AS(c.length(s), moela::error);
  CHECK_THROWS_WITH_AS((attn::paged_cache<attn::cache_f32>({8, 4, 2}, 5, 4, -3)),
                       "paged_cache: pages, page_size and max_positions must be positive (got 5, 4, -3)", moela::error);
  CHECK_THROWS_WITH_AS((attn::contiguous_cache<attn::cache_f32>({8, 4, 2}, 2, 16, 0)),
                       "contiguous_cache: max_sequences, capacity and max_positions must be positive (got 2, 16, 0)",
                       moela::error);
  // Sizes whose product does not fit: an error, not a small allocation behind huge extents.
  CHECK_THROWS_WITH_AS((attn::contiguous_cache<attn::cache_f32>({8, 4, 2}, index_t{1} << 40, index_t{1} << 30)),
                       doctest::Contains("contiguous_cache: size overflows"), moela::error);
  CHECK_THROWS_WITH_AS((attn::paged_cache<attn::cache_f32>({8, 4, 2}, 1 << 30, index_t{1} << 40)),
                       doctest::Contains("paged_cache: size overflows"), moela::error);
}
