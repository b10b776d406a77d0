#include <doctest/doctest.h>

#include <moela/io/checkpoint.hpp>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;
using namespace moela::io;

namespace {
struct temp_dir {
  fs::path path;
  temp_dir() {
    std::string tmpl = (fs::temp_directory_path() / "moela-ckpt-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path = tmpl;
  }
  ~temp_dir() { fs::remove_all(path); }
};

void write_text(const fs::path& p, const std::string& s) { std::ofstream(p, std::ios::binary) << s; }

// A raw safetensors image from a header text and a data size (for malformed cases).
std::vector<std::byte> raw(const std::string& header, std::size_t data_bytes) {
  std::vector<std::byte> out(8 + header.size() + data_bytes);
  const std::uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<std::byte>((n >> (8 * i)) & 0xff);
  std::memcpy(out.data() + 8, header.data(), header.size());
  return out;
}

std::string error_of_bytes(std::vector<std::byte> b) {
  try {
    (void)safetensors_file::from_bytes(std::move(b), "bad.safetensors");
  } catch (const moela::error& e) {
    return e.what();
  }
  return "";
}
}  // namespace

TEST_CASE("safetensors_writer round trip") {
  safetensors_writer w;
  const std::vector<float> a = {1.f, -2.f, 3.5f, 0.f, 7.f, 8.f};
  const std::vector<std::int64_t> ids = {5, 17, 3};
  w.add<float>("a", {2, 3}, a);
  w.add<std::int64_t>("ids", {3}, ids);
  w.set_metadata("format", "pt");
  auto f = safetensors_file::from_bytes(w.bytes(), "mem");
  auto va = f.view<float, 2>("a");
  CHECK(va.extent(0) == 2);
  CHECK(va(1, 2) == 8.f);
  CHECK(f.view<std::int64_t, 1>("ids")(1) == 17);
  CHECK(f.metadata().at("format") == "pt");
  CHECK_THROWS_AS(w.add<float>("a", {6}, a), moela::error);
  CHECK_THROWS_AS(w.add<float>("b", {5}, a), moela::error);
}

TEST_CASE("checkpoint: single file, sharded index, and their errors") {
  temp_dir d;
  const std::vector<float> x = {1, 2, 3, 4}, y = {5, 6};
  {
    safetensors_writer s1, s2;
    s1.add<float>("model.x", {2, 2}, x);
    s2.add<float>("model.y", {2}, y);
    s2.add<float>("extra", {2}, y);
    s1.save((d.path / "model-00001-of-00002.safetensors").string());
    s2.save((d.path / "model-00002-of-00002.safetensors").string());
  }
  SUBCASE("no files") { CHECK_THROWS_WITH_AS(checkpoint(d.path.string()), doctest::Contains("neither"), moela::error); }
  SUBCASE("sharded") {
    write_text(d.path / "model.safetensors.index.json",
               R"({"metadata": {"total_size": 24}, "weight_map": {"model.x": "model-00001-of-00002.safetensors",
                   "model.y": "model-00002-of-00002.safetensors", "extra": "model-00002-of-00002.safetensors"}})");
    checkpoint c(d.path.string());
    CHECK(c.shards().size() == 2);
    CHECK(c.tensor_count() == 3);
    CHECK(c.data_bytes() == 32);
    CHECK(c.view<float, 2>("model.x")(1, 0) == 3.f);
    CHECK(c.to_float<1>("model.y")(1) == 6.f);
    CHECK(c.expect("model.x", {2, 2}).numel() == 4);
    CHECK_THROWS_WITH_AS(c.expect("model.x", {4, 1}), doctest::Contains("'model.x' has shape [2, 2] but the config needs [4, 1]"),
                         moela::error);
    CHECK_THROWS_WITH_AS(c.at("model.z"), doctest::Contains("no tensor 'model.z'"), moela::error);
    // Zero copy: the view points into the mapping of the shard.
    const auto& e = c.at("model.x");
    CHECK(reinterpret_cast<const void*>(c.view<float, 2>("model.x").data()) == reinterpret_cast<const void*>(e.data));
  }
  SUBCASE("index errors") {
    write_text(d.path / "model.safetensors.index.json", "{\"weight_map\": ");
    CHECK_THROWS_WITH_AS(checkpoint(d.path.string()), doctest::Contains("not valid JSON"), moela::error);
    write_text(d.path / "model.safetensors.index.json", "{\"metadata\": {}}");
    CHECK_THROWS_WITH_AS(checkpoint(d.path.string()), doctest::Contains("weight_map"), moela::error);
    write_text(d.path / "model.safetensors.index.json", R"({"weight_map": {"model.q": "model-00001-of-00002.safetensors"}})");
    CHECK_THROWS_WITH_AS(checkpoint(d.path.string()), doctest::Contains("'model.q'"), moela::error);
    write_text(d.path / "model.safetensors.index.json", R"({"weight_map": {"model.x": "../etc/passwd"}})");
    CHECK_THROWS_WITH_AS(checkpoint(d.path.string()), doctest::Contains("not a plain file name"), moela::error);
    write_text(d.path / "model.safetensors.index.json", R"({"weight_map": {"model.x": "missing.safetensors"}})");
    CHECK_THROWS_WITH_AS(checkpoint(d.path.string()), doctest::Contains("missing.safetensors"), moela::error);
    // The same tensor in two shards.
    safetensors_writer s3;
    s3.add<float>("model.x", {2, 2}, x);
    s3.add<float>("other", {2}, y);
    s3.save((d.path / "dup.safetensors").string());
    write_text(d.path / "model.safetensors.index.json",
               R"({"weight_map": {"model.x": "model-00001-of-00002.safetensors", "other": "dup.safetensors"}})");
    CHECK_THROWS_WITH_AS(checkpoint(d.path.string()), doctest::Contains("is in both"), moela::error);
  }
  SUBCASE("single file") {
    fs::rename(d.path / "model-00001-of-00002.safetensors", d.path / "model.safetensors");
    checkpoint c(d.path.string());
    CHECK(c.tensor_count() == 1);
    checkpoint c2((d.path / "model.safetensors").string());
    CHECK(c2.contains("model.x"));
  }
}

TEST_CASE("safetensors: malformed files give errors naming file and tensor") {
  // truncated before the header length
  CHECK(error_of_bytes(std::vector<std::byte>(5)).find("truncated") != std::string::npos);
  // header length beyond the file
  {
    auto b = raw("{}", 0);
    b[0] = std::byte{200};
    CHECK(error_of_bytes(b).find("header") != std::string::npos);
  }
  CHECK(error_of_bytes(raw("{\"a\": {", 0)).find("not valid JSON") != std::string::npos);
  CHECK(error_of_bytes(raw("[1]", 0)).find("not a JSON object") != std::string::npos);
  const auto unknown = error_of_bytes(raw(R"({"w": {"dtype": "Q7", "shape": [2], "data_offsets": [0, 2]}})", 2));
  CHECK(unknown.find("bad.safetensors") != std::string::npos);
  CHECK(unknown.find("'w'") != std::string::npos);
  CHECK(unknown.find("unknown dtype 'Q7'") != std::string::npos);
  // data truncated: offsets beyond the data
  CHECK(error_of_bytes(raw(R"({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8)).find("truncated") !=
        std::string::npos);
  // shape does not match the byte count
  CHECK(error_of_bytes(raw(R"({"w": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})", 16)).find("needs 12 bytes") !=
        std::string::npos);
  // overlapping
  CHECK(error_of_bytes(raw(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                               "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                           12))
            .find("overlapping") != std::string::npos);
  // begin > end, negative shape, non-integer offsets, huge shapes
  CHECK(error_of_bytes(raw(R"({"w": {"dtype": "F32", "shape": [0], "data_offsets": [8, 0]}})", 8)).find("begin > end") !=
        std::string::npos);
  CHECK(error_of_bytes(raw(R"({"w": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})", 0)).find("non-negative") !=
        std::string::npos);
  CHECK(error_of_bytes(raw(R"({"w": {"dtype": "F32", "shape": [1], "data_offsets": [0, "4"]}})", 4)).find("data_offsets") !=
        std::string::npos);
  CHECK(error_of_bytes(raw(R"({"w": {"dtype": "F32", "shape": [1099511627776, 1099511627776], "data_offsets": [0, 4]}})", 4))
            .find("too large") != std::string::npos);
  CHECK(error_of_bytes(raw(R"({"w": {"shape": [1], "data_offsets": [0, 4]}})", 4)).find("dtype") != std::string::npos);
  CHECK(error_of_bytes(raw(R"({"w": 5})", 0)).find("not an object") != std::string::npos);
}

TEST_CASE("progress_bar is silent off a terminal and counts") {
  progress_bar p("load", 100, false);
  p.step(40);
  p.step(60);
  p.finish();
  CHECK(true);
}
