#pragma once
/// \file moela/io/json_value.hpp
/// How every config reader (`io::parse_config`, `moe::moe_config::from_hf_json`,
/// `attn::mla_config_from_hf`) reads a config.json field:
/// - `json_index(v)`: the value of `v` as an `index_t` when it is a JSON integer or an integral
///   float whose magnitude is below 9e15 (exact in a double; Python writes some configs' sizes
///   as 2048.0), else nullopt;
/// - `json_fields`: typed reads of one object's fields, where absent and null both mean "take
///   the default" (as Hugging Face's config classes read them) and a value of the wrong type is
///   a `moela::error` naming the field:
///   `<what> field '<name>' must be an integer, got "64"`.
/// \code
///   const moela::io::json_fields f(j, "moe_config: config.json");
///   const auto experts = f.required_integer("n_routed_experts", 0);  // no default: must be given
///   const double eps = f.number("rms_norm_eps", 1e-6);
/// \endcode

#include <cmath>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "moela/core/config.hpp"
#include "moela/core/error.hpp"

namespace moela::io {

inline std::optional<index_t> json_index(const nlohmann::json& v) {
  if (v.is_number_integer()) return static_cast<index_t>(v.get<std::int64_t>());
  if (v.is_number_float()) {
    const double x = v.get<double>();
    if (std::isfinite(x) && x == std::floor(x) && std::fabs(x) < 9.0e15) return static_cast<index_t>(x);
  }
  return std::nullopt;
}

/// `v` as JSON text for an error message, cut to 60 characters.
inline std::string json_excerpt(const nlohmann::json& v) {
  std::string s = v.dump();
  return s.size() > 60 ? s.substr(0, 57) + "..." : s;
}

/// Typed reads of the fields of one JSON object (see the file comment). `what` begins every
/// error message ("config: 'model/config.json'"); `path` is put before the field names of a
/// nested object ("rope_scaling."). Holds a reference to the object: use it while that lives.
class json_fields {
 public:
  json_fields(const nlohmann::json& obj, std::string what, std::string path = {})
      : j_(obj), what_(std::move(what)), path_(std::move(path)) {}

  /// Whether the field is present and not null.
  bool has(const char* k) const { return j_.is_object() && j_.contains(k) && !j_.at(k).is_null(); }
  /// Whether the field is present and null (where Hugging Face gives null a meaning of its own,
  /// e.g. `q_lora_rank: null`, no query compression).
  bool is_null(const char* k) const { return j_.is_object() && j_.contains(k) && j_.at(k).is_null(); }
  /// The field's JSON value (has(k) must hold).
  const nlohmann::json& at(const char* k) const { return j_.at(k); }
  /// Throws "<what> field '<field>' <why...>" (`field` as given: the caller's full name).
  template <class... Why>
  [[noreturn]] void bad(const std::string& field, const Why&... why) const {
    fail(what_, " field '", field, "' ", why...);
  }

  /// An integer field (json_index); `dflt` when absent or null.
  index_t integer(const char* k, index_t dflt) const {
    if (!has(k)) return dflt;
    if (const auto i = json_index(j_.at(k))) return *i;
    bad(path_ + k, "must be an integer, got ", json_excerpt(j_.at(k)));
  }
  /// An integer field whose default `dflt` may be 0 for "none": then the field must be given
  /// ("<what> has no '<name>'").
  index_t required_integer(const char* k, index_t dflt) const {
    if (!has(k) && dflt == 0) fail(what_, " has no '", path_ + k, "'");
    return integer(k, dflt);
  }
  /// A number field (integer or float); `dflt` when absent or null.
  double number(const char* k, double dflt) const {
    if (!has(k)) return dflt;
    if (!j_.at(k).is_number()) bad(path_ + k, "must be a number, got ", json_excerpt(j_.at(k)));
    return j_.at(k).get<double>();
  }
  /// A boolean field; `dflt` when absent or null.
  bool boolean(const char* k, bool dflt) const {
    if (!has(k)) return dflt;
    if (!j_.at(k).is_boolean()) bad(path_ + k, "must be true or false, got ", json_excerpt(j_.at(k)));
    return j_.at(k).get<bool>();
  }
  /// The fields of a nested object (has(k) must hold), their names prefixed "<path><k>.";
  /// "<what> field '<name>' must be an object, got ..." when it is not one.
  json_fields object(const char* k) const {
    if (!j_.at(k).is_object()) bad(path_ + k, "must be an object or null, got ", json_excerpt(j_.at(k)));
    return json_fields(j_.at(k), what_, path_ + k + ".");
  }
  /// A string field; `dflt` when absent or null.
  std::string string(const char* k, const std::string& dflt) const {
    if (!has(k)) return dflt;
    if (!j_.at(k).is_string()) bad(path_ + k, "must be a string, got ", json_excerpt(j_.at(k)));
    return j_.at(k).get<std::string>();
  }

 private:
  const nlohmann::json& j_;
  std::string what_, path_;
};

}  // namespace moela::io
