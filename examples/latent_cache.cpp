// Fills a paged MLA latent cache for several sequences of different lengths (chunked prefill),
// decodes a few steps for all of them in one batch, and prints the cache memory measured from
// the pools next to what a standard MHA cache with the same heads takes for the same tokens.
//
// The layer has DeepSeek-V2-Lite's attention shapes (16 heads, kv_lora_rank 512, rope 64,
// nope 128, v 128) with random weights and a reduced hidden size (256) to keep it quick.
// ctest-args:
#include <moela/attention.hpp>
#include <moela/core/build_info.hpp>

#include <cmath>
#include <cstdio>
#include <random>
#include <vector>

using namespace moela;

int main() {
  std::printf("%s\n", build_info().summary().c_str());
  attn::mla_config cfg = attn::mla_config::deepseek_v2_lite();
  cfg.hidden = 256;

  // Random weights, N(0, 1/fan_in), stored bf16.
  std::mt19937 rng(1);
  auto mat = [&](index_t r, index_t c) {
    std::normal_distribution<float> nd(0.f, 1.f / std::sqrt(float(c)));
    tensor<float, 2> t({r, c});
    for (index_t i = 0; i < t.size(); ++i) t.data()[i] = nd(rng);
    return qmatrix<quant::bf16>::quantize(t.cview());
  };
  attn::mla_weights<quant::bf16> w;
  w.q_proj = mat(cfg.q_width(), cfg.hidden);
  w.kv_a_proj = mat(cfg.latent_width(), cfg.hidden);
  w.kv_a_norm = tensor<float, 1>({cfg.kv_rank});
  for (index_t i = 0; i < cfg.kv_rank; ++i) w.kv_a_norm(i) = 1.f;
  w.kv_b_proj = mat(cfg.heads * (cfg.nope_dim + cfg.v_dim), cfg.kv_rank);
  w.o_proj = mat(cfg.hidden, cfg.heads * cfg.v_dim);
  attn::mla<cpu<>, quant::bf16, attn::cache_bf16> layer(cfg, std::move(w));

  // One shared pool of 64-token pages for every sequence.
  attn::paged_cache<attn::cache_bf16> cache(attn::mla_cache_layout(cfg), /*pages=*/32, 64, cfg.rope.max_positions);
  const index_t prompt[] = {24, 70, 130, 200};
  std::vector<index_t> seqs;
  for (std::size_t i = 0; i < std::size(prompt); ++i) seqs.push_back(cache.add_sequence());

  // Chunked prefill: at most 64 tokens per sequence per step, all sequences in one batch.
  std::normal_distribution<float> nd(0.f, 1.f);
  tensor<float, 2> x({256, cfg.hidden}), out({256, cfg.hidden});
  for (bool more = true; more;) {
    std::vector<attn::seq_chunk> chunks;
    index_t rows = 0;
    for (std::size_t i = 0; i < seqs.size(); ++i) {
      const index_t left = prompt[i] - cache.length(seqs[i]);
      if (left > 0) {
        chunks.push_back({seqs[i], std::min<index_t>(left, 64)});
        rows += chunks.back().tokens;
      }
    }
    more = !chunks.empty();
    if (!more) break;
    for (index_t i = 0; i < rows * cfg.hidden; ++i) x.data()[i] = nd(rng);
    layer.forward(cache, chunks, x.cview().slice(0, 0, rows), out.view().slice(0, 0, rows));
  }
  // Decode 8 steps, one token per sequence per step, all sequences batched.
  double checksum = 0;
  for (int step = 0; step < 8; ++step) {
    std::vector<attn::seq_chunk> chunks;
    for (index_t s : seqs) chunks.push_back({s, 1});
    const index_t rows = static_cast<index_t>(chunks.size());
    for (index_t i = 0; i < rows * cfg.hidden; ++i) x.data()[i] = nd(rng);
    layer.forward(cache, chunks, x.cview().slice(0, 0, rows), out.view().slice(0, 0, rows));
    for (index_t i = 0; i < rows * cfg.hidden; ++i) checksum += std::fabs(out.data()[i]);
  }

  index_t tokens = 0;
  for (index_t s : seqs) tokens += cache.length(s);
  std::printf("sequences: %zu, lengths:", seqs.size());
  for (index_t s : seqs) std::printf(" %ld", cache.length(s));
  std::printf(" (%ld tokens), decode checksum %.4f\n", tokens, checksum);

  // The same tokens in a standard MHA cache with the same heads (K and V of 16 x 128), reserved
  // in a pool of the same kind: measured from the pool, not computed from a formula.
  attn::gqa_config mha;
  mha.hidden = cfg.hidden; mha.heads = cfg.heads; mha.kv_heads = cfg.heads; mha.head_dim = cfg.v_dim;
  mha.rope.dim = cfg.rope_dim;
  attn::paged_cache<attn::cache_bf16> mha_cache(mha.layout(), 32, 64);
  std::vector<attn::seq_chunk> same;
  for (index_t s : seqs) same.push_back({mha_cache.add_sequence(), cache.length(s)});
  mha_cache.prepare(same);
  mha_cache.commit();

  const auto fp = attn::footprint(cfg, 2);
  std::printf("\nper token per layer (bf16):  MLA latent %zu B | naive MLA cache %zu B | MHA same heads %zu B\n",
              cache.bytes_per_token(), fp.naive, mha_cache.bytes_per_token());
  std::printf("measured for %ld tokens:     MLA %zu B in %ld pages | MHA %zu B in %ld pages  (%.1fx smaller)\n",
              tokens, cache.used_bytes(), cache.pages() - cache.free_pages(), mha_cache.used_bytes(),
              mha_cache.pages() - mha_cache.free_pages(), double(mha_cache.used_bytes()) / double(cache.used_bytes()));
  const auto v3 = attn::footprint(attn::mla_config::deepseek_v3(), 2);
  std::printf("DeepSeek-V3 (per token per layer, bf16): MLA %zu B, naive %zu B, MHA %zu B; FP8 latent record %zu B\n",
              v3.latent, v3.naive, v3.mha, attn::cache_fp8::record_bytes(512, 64));
  const bool ok = std::isfinite(checksum) && cache.bytes_per_token() == 1152 && mha_cache.bytes_per_token() == 65536 / 8;
  return ok ? 0 : 1;
}
