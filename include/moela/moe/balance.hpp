#pragma once
/// \file moela/moe/balance.hpp
/// DeepSeek-V3's auxiliary-loss-free load balancing (spec §6.5): after a step, each routed
/// expert's correction bias moves by `gamma` toward balance,
/// ```
/// bias_i += gamma * sign(mean_load - load_i)        (sign(0) = 0)
/// ```
/// so overloaded experts become less attractive to the selection and underloaded ones more.
/// The bias only affects *which* experts are selected, never the combine weights. V3 used
/// gamma = 0.001; inference keeps the bias frozen.

#include <cmath>
#include <span>

#include "moela/core/config.hpp"
#include "moela/core/error.hpp"

namespace moela::moe {

/// Applies one update to `bias [E]` from the per-expert token counts `load [E]`
/// (e.g. `moe_layer::last_load()`). Throws when the sizes differ, E is 0 or gamma is not finite.
inline void balance_bias(std::span<float> bias, std::span<const index_t> load, float gamma) {
  check(!bias.empty() && bias.size() == load.size(), "moe::balance_bias: bias has ", bias.size(),
        " entries but load has ", load.size(), " (one per routed expert, at least one)");
  check(std::isfinite(gamma), "moe::balance_bias: gamma must be finite, got ", gamma);
  double total = 0;
  for (index_t l : load) total += static_cast<double>(l);
  const double mean = total / static_cast<double>(load.size());
  for (std::size_t i = 0; i < bias.size(); ++i) {
    const double l = static_cast<double>(load[i]);
    const float sign = mean > l ? 1.0f : (mean < l ? -1.0f : 0.0f);
    bias[i] += gamma * sign;
  }
}

}  // namespace moela::moe
