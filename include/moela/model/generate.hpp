#pragma once
/// \file moela/model/generate.hpp
/// Autoregressive generation: prefill steps over the prompt(s) (one, or steps of
/// `generate_options::prefill_chunk` tokens for long prompts), then one decode step per new
/// token, sampling with `sampler` (greedy, temperature, top-k, top-p, seeded), stopping at a
/// stop token, at `max_new_tokens`, or when the streaming callback says so. Prefill and decode
/// are timed separately.
///
///   moela::generate_options o;  o.max_new_tokens = 100;  o.stop_tokens = {257};
///   o.on_token = [](index_t seq, int tok) { std::putchar(tok); return true; };  // streaming
///   auto r = moela::generate(model, cache, prompt, o, sampler);
///   r.stats.prefill_tokens_per_s(), r.stats.decode_tokens_per_s()
///
/// `generate_batch` runs several prompts of different lengths together: prefill steps with a
/// chunk per prompt (up to `prefill_chunk` tokens in all), then decode steps over all sequences
/// still running (each with its own sampler seeded `seed + index`). Sequences are added to the
/// cache at the start and removed at the end (also when the call throws), so one cache serves
/// many calls.
///
/// Errors (`moela::error`), all raised before any token is computed and leaving the cache as
/// it was: an empty prompt, a token outside the vocabulary, `max_new_tokens < 0`, a prompt
/// whose positions would pass the cache's `max_positions()` (each prompt needs
/// `prompt + max_new_tokens - 1` positions: the last token sampled is not fed back), not
/// enough free sequence slots, and, for a paged cache, fewer free pages than the prompts need
/// at full length (a contiguous cache: a sequence capacity below that length). Generation that
/// stops early at a stop token simply uses less.

#include <algorithm>
#include <chrono>
#include <functional>
#include <limits>
#include <span>
#include <utility>
#include <vector>

#include "moela/model/model.hpp"
#include "moela/model/sampling.hpp"

namespace moela {

/// What `generate` / `generate_batch` do: how many tokens, how the prompt is stepped, how to
/// sample (generate_batch only), when to stop, and the streaming callback.
struct generate_options {
  index_t max_new_tokens = 64;  ///< tokens to sample per prompt (>= 0; 0: prefill only)
  /// Most prompt tokens one prefill step takes (all prompts together); longer prompts are
  /// prefilled in steps of this many tokens. A step's temporaries grow with its tokens (~0.5 MiB
  /// per token for a V2-Lite-shaped model, docs/model.md), so this bounds them for any prompt
  /// length; 512 rows keep the GEMMs at their large-M speed. <= 0: the whole prompt(s) in one step.
  index_t prefill_chunk = 512;
  sampling_params sampling{};    ///< used by generate_batch (generate takes a sampler)
  std::vector<int> stop_tokens;  ///< generation of a sequence ends after emitting one of these
  /// Called for every generated token (stop tokens included); return false to stop that sequence.
  std::function<bool(index_t seq, int token)> on_token;
};

/// Token counts and wall-clock times of one call, prefill and decode apart.
struct generate_stats {
  index_t prompt_tokens = 0;     ///< tokens prefilled
  index_t generated_tokens = 0;  ///< tokens sampled (the first comes from the prefill logits)
  index_t decode_steps = 0;      ///< forward steps after the prefill
  index_t decode_tokens = 0;     ///< tokens processed by those steps
  double prefill_seconds = 0, decode_seconds = 0;
  double prefill_tokens_per_s() const { return prefill_seconds > 0 ? double(prompt_tokens) / prefill_seconds : 0.0; }
  double decode_tokens_per_s() const { return decode_seconds > 0 ? double(decode_tokens) / decode_seconds : 0.0; }
};

/// The output of one call: per prompt its tokens and why it ended, and the call's stats.
struct generate_result {
  std::vector<std::vector<int>> tokens;  ///< generated tokens per prompt (stop token included)
  std::vector<bool> stopped;             ///< true where a stop token (or the callback) ended it
  generate_stats stats;
};

namespace detail {
template <class Model, class Cache>
generate_result run_generation(Model& m, Cache& cache, std::span<const std::vector<int>> prompts,
                               const generate_options& o, std::span<sampler*> samplers) {
  using clock = std::chrono::steady_clock;
  const std::size_t B = prompts.size();
  generate_result r;
  r.tokens.resize(B);
  r.stopped.assign(B, false);
  if (B == 0) return r;
  std::vector<index_t> seq;
  std::vector<step_chunk> chunks;
  std::vector<int> tokens;
  check(o.max_new_tokens >= 0, "generate: max_new_tokens must be >= 0, got ", o.max_new_tokens);
  const index_t vocab = m.config().vocab_size;
  index_t pages_needed = 0;
  for (std::size_t b = 0; b < B; ++b) {
    const auto& p = prompts[b];
    check(!p.empty(), "generate: prompt ", b, " is empty");
    for (std::size_t i = 0; i < p.size(); ++i)
      check(p[i] >= 0 && p[i] < vocab, "generate: token ", p[i], " at index ", i, " of prompt ", b,
            " is outside the vocabulary [0, ", vocab, ")");
    const index_t n = static_cast<index_t>(p.size());
    if constexpr (requires { cache.max_positions(); })
      check(n <= cache.max_positions() && o.max_new_tokens - 1 <= cache.max_positions() - n, "generate: prompt ", b,
            " needs ", n, " + ", o.max_new_tokens, " - 1 positions but the cache holds at most ", cache.max_positions(),
            " per sequence (lower max_new_tokens, or raise the cache's max_positions)");
    // The caches above bound need by max_positions; a cache without that limit: saturate.
    const index_t extra = std::max<index_t>(o.max_new_tokens - 1, 0);
    const index_t need = extra > std::numeric_limits<index_t>::max() - n ? std::numeric_limits<index_t>::max() : n + extra;
    if constexpr (requires { cache.capacity(); })
      check(need <= cache.capacity(), "generate: prompt ", b, " needs ", need, " tokens but the cache's sequences hold ",
            cache.capacity());
    if constexpr (requires { cache.page_size(); }) {
      const index_t pb = (need - 1) / cache.page_size() + 1;  // no overflow for need near the maximum
      pages_needed = pb > std::numeric_limits<index_t>::max() - pages_needed ? std::numeric_limits<index_t>::max()
                                                                             : pages_needed + pb;
    }
    r.stats.prompt_tokens += n;
  }
  if constexpr (requires { cache.free_pages(); })
    check(pages_needed <= cache.free_pages(), "generate: the prompts need ", pages_needed, " pages of ",
          cache.page_size(), " tokens at full length but the cache has ", cache.free_pages(), " free");
  // Sequences are removed again whatever happens, including when adding one fails.
  struct release {
    Cache& c;
    std::vector<index_t>& s;
    ~release() {
      for (auto q : s) c.remove_sequence(q);
    }
  } guard{cache, seq};
  seq.reserve(B);
  for (std::size_t b = 0; b < B; ++b) seq.push_back(cache.add_sequence());

  tensor<float, 2> logits, first;
  std::vector<bool> live(B, o.max_new_tokens > 0);
  auto take = [&](std::size_t b, const float* row) {
    const int tok = (*samplers[b])(std::span<const float>(row, static_cast<std::size_t>(m.config().vocab_size)));
    r.tokens[b].push_back(tok);
    ++r.stats.generated_tokens;
    bool keep = true;
    if (o.on_token) keep = o.on_token(static_cast<index_t>(b), tok);
    for (int s : o.stop_tokens) keep = keep && tok != s;
    if (!keep) r.stopped[b] = true;
    if (!keep || static_cast<index_t>(r.tokens[b].size()) >= o.max_new_tokens) live[b] = false;
  };

  // Prefill: steps of at most `prefill_chunk` tokens taken from the prompts in order; the logits
  // of each prompt's last token go to row b of `first`.
  auto t0 = clock::now();
  const index_t V = vocab;
  const index_t budget = o.prefill_chunk > 0 ? o.prefill_chunk : r.stats.prompt_tokens;
  const bool sample = o.max_new_tokens > 0;
  if (sample) first = tensor<float, 2>({static_cast<index_t>(B), V});
  std::vector<std::pair<index_t, std::size_t>> ends;  // per prompt ending in the step: (chunk, prompt)
  std::size_t next = 0;                               // first prompt with tokens left
  index_t done = 0;                                   // its tokens already prefilled
  while (next < B) {
    chunks.clear();
    tokens.clear();
    ends.clear();
    for (index_t left = budget; next < B && left > 0;) {
      const auto& p = prompts[next];
      const index_t n = std::min(left, static_cast<index_t>(p.size()) - done);
      chunks.push_back({seq[next], n});
      tokens.insert(tokens.end(), p.begin() + done, p.begin() + done + n);
      left -= n;
      done += n;
      if (done == static_cast<index_t>(p.size())) {
        ends.emplace_back(static_cast<index_t>(chunks.size()) - 1, next++);
        done = 0;
      }
    }
    m.forward(cache, chunks, tokens, logits, sample && !ends.empty() ? logits_rows::last : logits_rows::none);
    if (sample)
      for (const auto& [row, b] : ends) std::copy_n(&logits(row, 0), V, &first(static_cast<index_t>(b), 0));
  }
  r.stats.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  if (!sample) return r;
  for (std::size_t b = 0; b < B; ++b) take(b, &first(static_cast<index_t>(b), 0));

  std::vector<std::size_t> rows;
  while (true) {
    chunks.clear();
    tokens.clear();
    rows.clear();
    for (std::size_t b = 0; b < B; ++b)
      if (live[b]) {
        chunks.push_back({seq[b], 1});
        tokens.push_back(r.tokens[b].back());
        rows.push_back(b);
      }
    if (chunks.empty()) break;
    t0 = clock::now();
    m.forward(cache, chunks, tokens, logits, logits_rows::last);
    r.stats.decode_seconds += std::chrono::duration<double>(clock::now() - t0).count();
    ++r.stats.decode_steps;
    r.stats.decode_tokens += static_cast<index_t>(chunks.size());
    for (std::size_t i = 0; i < rows.size(); ++i) take(rows[i], &logits(static_cast<index_t>(i), 0));
  }
  return r;
}
}  // namespace detail

/// Generates for one prompt with `smp` (shared across calls, so several prompts in a row draw
/// from one random stream).
template <class Model, class Cache>
generate_result generate(Model& m, Cache& cache, const std::vector<int>& prompt, const generate_options& o, sampler& smp) {
  sampler* s[1] = {&smp};
  return detail::run_generation(m, cache, std::span<const std::vector<int>>(&prompt, 1), o, std::span<sampler*>(s));
}

/// Generates for several prompts at once (batched decode over the cache).
template <class Model, class Cache>
generate_result generate_batch(Model& m, Cache& cache, std::span<const std::vector<int>> prompts,
                               const generate_options& o) {
  std::vector<sampler> own;
  own.reserve(prompts.size());
  std::vector<sampler*> ptr;
  for (std::size_t b = 0; b < prompts.size(); ++b) {
    auto p = o.sampling;
    p.seed += b;
    own.emplace_back(p);
  }
  for (auto& s : own) ptr.push_back(&s);
  return detail::run_generation(m, cache, prompts, o, std::span<sampler*>(ptr));
}

// Helpers of model::generate (found by argument-dependent lookup when the member is instantiated).
template <class Model, class OnToken>
generate_options make_generate_options(const Model& m, index_t max_new_tokens, OnToken& on_token) {
  generate_options o;
  o.max_new_tokens = max_new_tokens;
  for (auto e : m.config().eos_token_ids) o.stop_tokens.push_back(static_cast<int>(e));
  o.on_token = [&on_token](index_t, int t) { return static_cast<bool>(on_token(t)); };
  return o;
}
template <class Model>
sampler make_sampler(const Model&, const sampling_params& p) {
  return sampler(p);
}
template <class Model, class Cache>
std::vector<int> generate_one(Model& m, Cache& cache, const std::vector<int>& prompt, const generate_options& o,
                              sampler& s) {
  return generate(m, cache, prompt, o, s).tokens[0];
}

/// `moela::sampling` is the parameter struct of the sampler.
using sampling = sampling_params;

}  // namespace moela
