#pragma once
/// \file moela/core/error.hpp
/// The one exception type moela throws, and the checks that build its messages.

#include <limits>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace moela {

/// Thrown for every invalid input at a public API boundary (bad shape, out-of-range view,
/// malformed file, unsupported configuration). The message names the operation and the
/// values involved, e.g. `matmul: x is [3, 128] but W is [64, 256] (K must match)`.
class error : public std::runtime_error {
 public:
  explicit error(const std::string& what) : std::runtime_error(what) {}
};

namespace detail {
template <class... Args>
[[noreturn]] inline void throw_error(Args&&... args) {
  std::ostringstream os;
  (os << ... << std::forward<Args>(args));
  throw error(os.str());
}
}  // namespace detail

/// Builds a message from the arguments (streamed in order) and throws moela::error.
template <class... Args>
[[noreturn]] inline void fail(Args&&... args) {
  detail::throw_error(std::forward<Args>(args)...);
}

/// Throws moela::error with the streamed arguments when `cond` is false.
template <class... Args>
inline void check(bool cond, Args&&... args) {
  if (!cond) [[unlikely]] detail::throw_error(std::forward<Args>(args)...);
}

/// The product of the non-negative `factors`, or a moela::error "`who`: size overflows (...)"
/// when it does not fit in `T` (sizes and byte counts computed from user input).
template <class T, class... F>
T checked_product(const char* who, F... factors) {
  static_assert(std::is_integral_v<T>);
  T r = 1;
  const T v[] = {static_cast<T>(factors)...};
  for (T f : v)
    if (f != 0 && r > std::numeric_limits<T>::max() / f) {
      std::ostringstream os;
      os << who << ": size overflows (";
      const char* sep = "";
      ((os << sep << factors, sep = " x "), ...);
      os << ")";
      throw error(os.str());
    } else {
      r *= f;
    }
  return r;
}

}  // namespace moela
