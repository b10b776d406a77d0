// libFuzzer target: config.json parsing and validation. Any input must either give a validated
// model_config or throw moela::error.
#include <moela/io/config.hpp>

#include <cstddef>
#include <cstdint>
#include <string>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto c = moela::io::parse_config(std::string(reinterpret_cast<const char*>(data), size), "fuzz.json");
    volatile double s = c.softmax_scale();
    volatile bool m = c.is_moe_layer(c.num_hidden_layers - 1);
    (void)s;
    (void)m;
  } catch (const moela::error&) {
  }
  return 0;
}
