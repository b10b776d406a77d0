#pragma once
/// \file moela/model/sampling.hpp
/// Token sampling: greedy, temperature, top-k, top-p (nucleus), seeded.
///
/// `sampler s(sampling_params{...}); int id = s(logits);` picks one token id from a row of
/// logits (`std::span<const float>`, length = vocabulary). The procedure, in float64:
///   1. temperature == 0: argmax (the lowest id among equal maxima). Otherwise:
///   2. p = softmax(logits / temperature), computed as exp((l - max l) / temperature) so
///      that no temperature overflows; a logit of -inf gets probability 0;
///   3. order the ids by p, descending (ties: lower id first); keep the first top_k
///      (top_k <= 0: all), then, of those, the shortest prefix whose cumulative probability
///      *renormalised over the top_k kept* reaches top_p (as Hugging Face's top-k then top-p
///      warpers: top_k = 2, top_p = 0.5 over p = 0.4, 0.3, 0.2, 0.1 keeps only the first id);
///   4. draw u in [0, 1) and return the first kept id whose cumulative (renormalised)
///      probability exceeds u (inverse CDF).
/// The random numbers come from `pcg64_stream`: the PCG64 generator seeded as NumPy's
/// `numpy.random.default_rng(seed)` seeds it, one `random()` double per sampled token; so a
/// Python reference that samples this way with NumPy reproduces moela's choices.
///
/// Errors (moela::error): empty logits, a NaN logit, a temperature that is negative or not
/// finite, top_p outside (0, 1]; when sampling (temperature > 0), a logit of +inf or logits
/// that are all -inf (no distribution to draw from). Greedy takes the argmax of any non-NaN
/// row (+inf wins; all -inf gives id 0).

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <span>
#include <vector>

#include "moela/core/error.hpp"

namespace moela {

/// PCG64 (128-bit LCG, XSL-RR output) with NumPy's SeedSequence seeding, so that
/// `pcg64_stream(s).next_double()` equals `numpy.random.default_rng(s).random()` call by call.
class pcg64_stream {
 public:
  explicit pcg64_stream(std::uint64_t seed = 42) {
    // SeedSequence(seed): entropy words (little-endian u32), a pool of 4 words, then 8 output words.
    std::vector<std::uint32_t> entropy;
    do {
      entropy.push_back(static_cast<std::uint32_t>(seed & 0xffffffffu));
      seed >>= 32;
    } while (seed != 0);
    std::uint32_t pool[4];
    std::uint32_t hash_const = 0x43b0d7e5u;
    auto hashmix = [&](std::uint32_t v) {
      v ^= hash_const;
      hash_const *= 0x931e8875u;
      v *= hash_const;
      v ^= v >> 16;
      return v;
    };
    auto mix = [](std::uint32_t x, std::uint32_t y) {
      std::uint32_t r = 0xca01f9ddu * x - 0x4973f715u * y;
      r ^= r >> 16;
      return r;
    };
    for (std::size_t i = 0; i < 4; ++i) pool[i] = hashmix(i < entropy.size() ? entropy[i] : 0u);
    for (std::size_t s = 0; s < 4; ++s)
      for (std::size_t d = 0; d < 4; ++d)
        if (s != d) pool[d] = mix(pool[d], hashmix(pool[s]));
    for (std::size_t s = 4; s < entropy.size(); ++s)
      for (std::size_t d = 0; d < 4; ++d) pool[d] = mix(pool[d], hashmix(entropy[s]));
    std::uint32_t words[8];
    std::uint32_t hc = 0x8b51f9ddu;
    for (std::size_t i = 0; i < 8; ++i) {
      std::uint32_t v = pool[i % 4];
      v ^= hc;
      hc *= 0x58f38dedu;
      v *= hc;
      v ^= v >> 16;
      words[i] = v;
    }
    std::uint64_t s64[4];
    for (std::size_t i = 0; i < 4; ++i) s64[i] = std::uint64_t{words[2 * i]} | (std::uint64_t{words[2 * i + 1]} << 32);
    const u128 initstate = (u128{s64[0]} << 64) | s64[1];
    const u128 initseq = (u128{s64[2]} << 64) | s64[3];
    state_ = 0;
    inc_ = (initseq << 1) | 1u;
    step();
    state_ += initstate;
    step();
  }

  std::uint64_t next_u64() {
    step();
    const auto hi = static_cast<std::uint64_t>(state_ >> 64), lo = static_cast<std::uint64_t>(state_);
    const unsigned rot = static_cast<unsigned>(state_ >> 122);
    const std::uint64_t x = hi ^ lo;
    return (x >> rot) | (x << ((64u - rot) & 63u));
  }
  /// A double in [0, 1) with 53 random bits.
  double next_double() { return static_cast<double>(next_u64() >> 11) * (1.0 / 9007199254740992.0); }

 private:
  using u128 = unsigned __int128;
  void step() {
    const u128 mult = (u128{0x2360ed051fc65da4ull} << 64) | 0x4385df649fccf645ull;
    state_ = state_ * mult + inc_;
  }
  u128 state_ = 0, inc_ = 0;
};

/// How to pick the next token. Defaults are greedy.
struct sampling_params {
  double temperature = 0.0;  ///< 0: greedy (argmax)
  int top_k = 0;             ///< keep the k most probable ids; <= 0: no limit
  double top_p = 1.0;        ///< nucleus: keep the smallest set reaching this probability
  std::uint64_t seed = 42;   ///< seed of the pcg64_stream
};

/// Index of the largest value (the lowest index among equal maxima). Throws on empty input or NaN.
inline int argmax(std::span<const float> logits) {
  check(!logits.empty(), "argmax: empty logits");
  std::size_t best = 0;
  for (std::size_t i = 0; i < logits.size(); ++i) {
    check(!std::isnan(logits[i]), "sampler: logit ", i, " is NaN");
    if (logits[i] > logits[best]) best = i;
  }
  return static_cast<int>(best);
}

/// A stateful sampler: holds its parameters and its random stream.
class sampler {
 public:
  explicit sampler(sampling_params p = {}) : p_(p), rng_(p.seed) {
    check(p.temperature >= 0.0 && std::isfinite(p.temperature), "sampler: temperature must be finite and >= 0, got ",
          p.temperature);
    check(p.top_p > 0.0 && p.top_p <= 1.0, "sampler: top_p must be in (0, 1], got ", p.top_p);
  }
  const sampling_params& params() const { return p_; }
  bool greedy() const { return p_.temperature == 0.0; }

  /// Picks a token id from one row of logits.
  int operator()(std::span<const float> logits) {
    if (greedy()) return argmax(logits);
    const std::size_t n = logits.size();
    check(n > 0, "sampler: empty logits");
    double mx = -INFINITY;
    for (std::size_t i = 0; i < n; ++i) {
      check(!std::isnan(logits[i]), "sampler: logit ", i, " is NaN");
      check(logits[i] != INFINITY, "sampler: logit ", i, " is +inf (no distribution to sample from)");
      mx = std::max(mx, static_cast<double>(logits[i]));
    }
    check(mx != -INFINITY, "sampler: every logit is -inf (no distribution to sample from)");
    prob_.resize(n);
    double sum = 0.0;
    for (std::size_t i = 0; i < n; ++i)
      sum += prob_[i] = std::exp((static_cast<double>(logits[i]) - mx) / p_.temperature);
    for (auto& v : prob_) v /= sum;
    order_.resize(n);
    std::iota(order_.begin(), order_.end(), 0);
    std::stable_sort(order_.begin(), order_.end(), [&](int a, int b) { return prob_[static_cast<std::size_t>(a)] > prob_[static_cast<std::size_t>(b)]; });
    std::size_t keep = n;
    if (p_.top_k > 0) keep = std::min(keep, static_cast<std::size_t>(p_.top_k));
    if (p_.top_p < 1.0) {
      // top_p applies to the distribution renormalised over the top_k kept (without a top_k
      // cut the sums are the plain ones, unchanged by a division).
      double mass = 1.0;
      if (keep < n) {
        mass = 0.0;
        for (std::size_t i = 0; i < keep; ++i) mass += prob_[static_cast<std::size_t>(order_[i])];
      }
      double c = 0.0;
      for (std::size_t i = 0; i < keep; ++i) {
        c += prob_[static_cast<std::size_t>(order_[i])];
        if (c >= p_.top_p * mass) {
          keep = i + 1;
          break;
        }
      }
    }
    double kept = 0.0;
    for (std::size_t i = 0; i < keep; ++i) kept += prob_[static_cast<std::size_t>(order_[i])];
    const double u = rng_.next_double() * kept;
    double c = 0.0;
    for (std::size_t i = 0; i < keep; ++i) {
      c += prob_[static_cast<std::size_t>(order_[i])];
      if (u < c) return order_[i];
    }
    return order_[keep - 1];
  }

 private:
  sampling_params p_;
  pcg64_stream rng_;
  std::vector<double> prob_;
  std::vector<int> order_;
};

}  // namespace moela
