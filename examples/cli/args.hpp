#pragma once
// Command-line values for moela's CLI tools (moela-generate, moela-logits): each parser takes
// the whole string or throws a moela::error naming the tool and the flag, so a typo never turns
// into a truncated or default value.
#include <moela/core/error.hpp>

#include <cerrno>
#include <cstdlib>
#include <limits>
#include <string>
#include <vector>

namespace moela_cli {

/// A whole number in [lo, hi] (fractions, trailing text and out-of-range values are errors).
inline long long parse_int(const char* tool, const std::string& flag, const std::string& v, long long lo,
                           long long hi = std::numeric_limits<int>::max()) {
  char* end = nullptr;
  errno = 0;
  const long long n = std::strtoll(v.c_str(), &end, 10);
  const bool starts_ok = !v.empty() && (v[0] == '-' || v[0] == '+' || (v[0] >= '0' && v[0] <= '9'));  // no spaces
  moela::check(starts_ok && end != v.c_str() && *end == '\0' && errno == 0 && n >= lo && n <= hi, tool, ": ", flag,
               " needs a whole number in [", lo, ", ", hi, "], got '", v, "'");
  return n;
}

/// A whole number in [0, 2^64) written in decimal digits only.
inline unsigned long long parse_u64(const char* tool, const std::string& flag, const std::string& v) {
  bool digits = !v.empty();
  for (char c : v) digits = digits && c >= '0' && c <= '9';
  errno = 0;
  char* end = nullptr;
  const unsigned long long n = digits ? std::strtoull(v.c_str(), &end, 10) : 0;
  moela::check(digits && errno == 0, tool, ": ", flag, " needs a whole number in [0, ",
               std::numeric_limits<unsigned long long>::max(), "], got '", v, "'");
  return n;
}

/// A finite number >= lo.
inline double parse_num(const char* tool, const std::string& flag, const std::string& v, double lo) {
  char* end = nullptr;
  const double d = std::strtod(v.c_str(), &end);
  moela::check(end != v.c_str() && *end == '\0' && d >= lo && d <= std::numeric_limits<double>::max(), tool, ": ",
               flag, " needs a number >= ", lo, ", got '", v, "'");
  return d;
}

/// Token ids "5,17,3": each part a whole number in [0, 2^31); "" gives no ids, and an empty
/// part ("5,,3" or "5,") is an error.
inline std::vector<int> parse_ids(const char* tool, const std::string& flag, const std::string& s) {
  std::vector<int> r;
  if (s.empty()) return r;
  for (std::size_t i = 0;;) {
    std::size_t j = s.find(',', i);
    if (j == std::string::npos) j = s.size();
    const std::string part = s.substr(i, j - i);
    char* end = nullptr;
    const long long v = std::strtoll(part.c_str(), &end, 10);
    moela::check(!part.empty() && *end == '\0' && v >= 0 && v <= std::numeric_limits<int>::max(), tool,
                 ": bad token id '", part, "' in ", flag, " ", s);
    r.push_back(static_cast<int>(v));
    if (j == s.size()) return r;
    i = j + 1;
  }
}

}  // namespace moela_cli
