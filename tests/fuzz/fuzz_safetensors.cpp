// libFuzzer target: the safetensors header parser and every accessor on what it accepts.
// Any input must either parse into tensors whose bytes lie inside the buffer, or throw
// moela::error. Crashes, sanitizer reports and other exception types are findings.
#include <moela/io/safetensors.hpp>

#include <cstddef>
#include <cstdint>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> bytes(size);
  for (std::size_t i = 0; i < size; ++i) bytes[i] = static_cast<std::byte>(data[i]);
  try {
    const auto f = moela::io::safetensors_file::from_bytes(std::move(bytes), "fuzz.safetensors");
    unsigned acc = 0;
    for (const auto& [name, e] : f.tensors()) {
      // Touch every byte a tensor claims (ASan flags any that lie outside the buffer).
      for (std::size_t i = 0; i < e.nbytes; ++i) acc += std::to_integer<unsigned>(e.data[i]);
      try {
        switch (e.shape.size()) {
          case 1: (void)f.to_float<1>(name); break;
          case 2: (void)f.to_float<2>(name); break;
          case 3: (void)f.to_float<3>(name); break;
          default: break;
        }
        if (e.shape.size() == 1) (void)f.view<float, 1>(name);
      } catch (const moela::error&) {
      }
    }
    (void)f.metadata();
    volatile unsigned sink = acc;
    (void)sink;
  } catch (const moela::error&) {
  }
  return 0;
}
