#pragma once
/// \file moela/core/error.hpp
/// The one exception type moela throws, and the checks that build its messages.

#include <sstream>
#include <stdexcept>
#include <string>
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

}  // namespace moela
