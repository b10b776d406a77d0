#pragma once
/// \file moela/io/json_value.hpp
/// The one rule for reading a config.json integer, shared by every config reader
/// (`io::parse_config`, `moe::moe_config::from_hf_json`, `attn::mla_config_from_hf`):
/// `json_index(v)` is the value of `v` as an `index_t` when it is a JSON integer or an
/// integral float whose magnitude is below 9e15 (exact in a double; Python writes some
/// configs' sizes as 2048.0), else nullopt (the caller names the field in its error).

#include <cmath>
#include <cstdint>
#include <optional>

#include <nlohmann/json.hpp>

#include "moela/core/config.hpp"

namespace moela::io {

inline std::optional<index_t> json_index(const nlohmann::json& v) {
  if (v.is_number_integer()) return static_cast<index_t>(v.get<std::int64_t>());
  if (v.is_number_float()) {
    const double x = v.get<double>();
    if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 9.0e15) return static_cast<index_t>(x);
  }
  return std::nullopt;
}

}  // namespace moela::io
