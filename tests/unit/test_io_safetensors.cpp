#include <doctest/doctest.h>

#include <moela/io/safetensors.hpp>

#include <cmath>

TEST_CASE("safetensors: golden FP8 unit file opens and decodes") {
  moela::io::safetensors_file f(MOELA_TEST_DATA_DIR "/golden/fp8-units/fp8-units.safetensors");
  const auto& codes = f.at("decode.codes");
  CHECK(codes.type == moela::io::dtype::f8_e4m3);
  auto c = f.view<moela::fp8_e4m3, 1>("decode.codes");
  auto v = f.view<float, 1>("decode.values");
  REQUIRE(c.extent(0) == 256);
  for (int i = 0; i < 256; ++i) {
    const float want = v(i), got = c(i);
    if (std::isnan(want)) CHECK(std::isnan(got));
    else CHECK(got == want);
  }
  CHECK_THROWS_AS(((void)f.view<float, 1>("decode.codes")), moela::error);
  CHECK_THROWS_AS((void)f.at("nope"), moela::error);
}
