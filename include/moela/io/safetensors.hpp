#pragma once
/// \file moela/io/safetensors.hpp
/// Reader for the safetensors format: a little-endian u64 header length, a JSON header
/// mapping tensor names to `{dtype, shape, data_offsets}`, then the packed data.
///
/// `safetensors_file` memory-maps the file read-only (tensors are views into the mapping:
/// zero copy) and validates the header completely when it is opened: JSON syntax, known
/// dtypes, shapes whose byte size equals the offsets, offsets inside the file and not
/// overlapping. Every failure throws `moela::error` naming the file and the tensor.

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "moela/core/error.hpp"
#include "moela/core/minifloat.hpp"
#include "moela/core/tensor.hpp"

namespace moela::io {

/// Element types a safetensors file can hold (the subset moela reads).
enum class dtype { f64, f32, f16, bf16, f8_e4m3, f8_e5m2, i64, i32, i16, i8, u8, boolean };

inline std::size_t dtype_size(dtype t) {
  switch (t) {
    case dtype::f64: case dtype::i64: return 8;
    case dtype::f32: case dtype::i32: return 4;
    case dtype::f16: case dtype::bf16: case dtype::i16: return 2;
    default: return 1;
  }
}

inline const char* dtype_name(dtype t) {
  switch (t) {
    case dtype::f64: return "F64";
    case dtype::f32: return "F32";
    case dtype::f16: return "F16";
    case dtype::bf16: return "BF16";
    case dtype::f8_e4m3: return "F8_E4M3";
    case dtype::f8_e5m2: return "F8_E5M2";
    case dtype::i64: return "I64";
    case dtype::i32: return "I32";
    case dtype::i16: return "I16";
    case dtype::i8: return "I8";
    case dtype::u8: return "U8";
    case dtype::boolean: return "BOOL";
  }
  return "?";
}

/// Parses a dtype name; returns false for names moela does not know.
inline bool parse_dtype(const std::string& s, dtype& out) {
  static const std::pair<const char*, dtype> table[] = {
      {"F64", dtype::f64}, {"F32", dtype::f32}, {"F16", dtype::f16}, {"BF16", dtype::bf16},
      {"F8_E4M3", dtype::f8_e4m3}, {"F8_E5M2", dtype::f8_e5m2}, {"I64", dtype::i64},
      {"I32", dtype::i32}, {"I16", dtype::i16}, {"I8", dtype::i8}, {"U8", dtype::u8}, {"BOOL", dtype::boolean}};
  for (auto& [n, t] : table)
    if (s == n) {
      out = t;
      return true;
    }
  return false;
}

template <class T> inline constexpr bool dtype_matches(dtype) { return false; }
template <> inline constexpr bool dtype_matches<double>(dtype t) { return t == dtype::f64; }
template <> inline constexpr bool dtype_matches<float>(dtype t) { return t == dtype::f32; }
template <> inline constexpr bool dtype_matches<moela::fp16>(dtype t) { return t == dtype::f16; }
template <> inline constexpr bool dtype_matches<moela::bf16>(dtype t) { return t == dtype::bf16; }
template <> inline constexpr bool dtype_matches<moela::fp8_e4m3>(dtype t) { return t == dtype::f8_e4m3; }
template <> inline constexpr bool dtype_matches<moela::fp8_e5m2>(dtype t) { return t == dtype::f8_e5m2; }
template <> inline constexpr bool dtype_matches<std::int64_t>(dtype t) { return t == dtype::i64; }
template <> inline constexpr bool dtype_matches<std::int32_t>(dtype t) { return t == dtype::i32; }
template <> inline constexpr bool dtype_matches<std::int8_t>(dtype t) { return t == dtype::i8; }
template <> inline constexpr bool dtype_matches<std::uint8_t>(dtype t) { return t == dtype::u8; }

/// One tensor of a file: its dtype, shape and bytes (inside the file's mapping).
struct tensor_entry {
  std::string name;
  dtype type = dtype::f32;
  std::vector<index_t> shape;
  const std::byte* data = nullptr;
  std::size_t nbytes = 0;

  index_t numel() const {
    index_t n = 1;
    for (auto e : shape) n *= e;
    return n;
  }
  std::string shape_string() const {
    std::string r = "[";
    for (std::size_t i = 0; i < shape.size(); ++i) r += (i ? ", " : "") + std::to_string(shape[i]);
    return r + "]";
  }
};

namespace detail {
/// A read-only file mapping (or an owned buffer for in-memory data).
class mapped_file {
 public:
  explicit mapped_file(const std::string& path) : path_(path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    check(fd >= 0, "safetensors: cannot open '", path, "': ", std::strerror(errno));
    struct stat st{};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      fail("safetensors: cannot stat '", path, "'");
    }
    size_ = static_cast<std::size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      ::close(fd);
      check(p != MAP_FAILED, "safetensors: cannot map '", path, "': ", std::strerror(errno));
      data_ = static_cast<const std::byte*>(p);
      mapped_ = true;
    } else {
      ::close(fd);
    }
  }
  explicit mapped_file(std::vector<std::byte> bytes, std::string label)
      : path_(std::move(label)), owned_(std::move(bytes)) {
    data_ = owned_.data();
    size_ = owned_.size();
  }
  ~mapped_file() {
    if (mapped_) ::munmap(const_cast<std::byte*>(data_), size_);
  }
  mapped_file(const mapped_file&) = delete;
  mapped_file& operator=(const mapped_file&) = delete;
  const std::byte* data() const { return data_; }
  std::size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::vector<std::byte> owned_;
  const std::byte* data_ = nullptr;
  std::size_t size_ = 0;
  bool mapped_ = false;
};
}  // namespace detail

/// A validated, memory-mapped safetensors file.
class safetensors_file {
 public:
  /// Opens and validates `path`. Throws moela::error (naming the file and tensor) on any defect.
  explicit safetensors_file(const std::string& path) : file_(std::make_shared<detail::mapped_file>(path)) { parse(); }

  /// Parses an in-memory image (used by tests and the fuzz target). `label` names it in errors.
  static safetensors_file from_bytes(std::vector<std::byte> bytes, std::string label = "<memory>") {
    return safetensors_file(std::make_shared<detail::mapped_file>(std::move(bytes), std::move(label)));
  }

  const std::string& path() const { return file_->path(); }
  std::size_t file_size() const { return file_->size(); }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::map<std::string, tensor_entry>& tensors() const { return tensors_; }
  bool contains(const std::string& name) const { return tensors_.count(name) != 0; }

  /// The entry named `name`; throws naming the file when absent.
  const tensor_entry& at(const std::string& name) const {
    auto it = tensors_.find(name);
    check(it != tensors_.end(), "safetensors: '", path(), "' has no tensor '", name, "'");
    return it->second;
  }

  /// A zero-copy view of `name` as `T` with rank `Rank`; the stored dtype must be T's and the
  /// rank must match. The view lives as long as this object (or a copy of it).
  template <class T, std::size_t Rank>
  const_view<T, Rank> view(const std::string& name) const {
    const auto& e = at(name);
    check(dtype_matches<T>(e.type), "safetensors: '", path(), "' tensor '", name, "' is ", dtype_name(e.type),
          ", not the requested type");
    check(e.shape.size() == Rank, "safetensors: '", path(), "' tensor '", name, "' has rank ", e.shape.size(),
          " (shape ", e.shape_string(), "), not ", Rank);
    check(reinterpret_cast<std::uintptr_t>(e.data) % alignof(T) == 0, "safetensors: '", path(), "' tensor '", name,
          "' is not aligned for its type");
    shape_t<Rank> s{};
    for (std::size_t i = 0; i < Rank; ++i) s[i] = e.shape[i];
    return const_view<T, Rank>(reinterpret_cast<const T*>(e.data), s);
  }

  /// Copies `name` into a float tensor of rank `Rank`, converting any floating dtype (and
  /// integer dtypes) exactly where float can hold the value.
  template <std::size_t Rank>
  tensor<float, Rank> to_float(const std::string& name) const {
    const auto& e = at(name);
    check(e.shape.size() == Rank, "safetensors: '", path(), "' tensor '", name, "' has rank ", e.shape.size(),
          " (shape ", e.shape_string(), "), not ", Rank);
    shape_t<Rank> s{};
    for (std::size_t i = 0; i < Rank; ++i) s[i] = e.shape[i];
    tensor<float, Rank> t(s);
    float* out = t.data();
    const index_t n = e.numel();
    auto load = [&](auto tag) {
      using T = decltype(tag);
      for (index_t i = 0; i < n; ++i) {
        T v;
        std::memcpy(&v, e.data + static_cast<std::size_t>(i) * sizeof(T), sizeof(T));
        out[i] = static_cast<float>(v);
      }
    };
    switch (e.type) {
      case dtype::f64: load(double{}); break;
      case dtype::f32: load(float{}); break;
      case dtype::f16: load(moela::fp16{}); break;
      case dtype::bf16: load(moela::bf16{}); break;
      case dtype::f8_e4m3: load(moela::fp8_e4m3{}); break;
      case dtype::f8_e5m2: load(moela::fp8_e5m2{}); break;
      case dtype::i64: load(std::int64_t{}); break;
      case dtype::i32: load(std::int32_t{}); break;
      case dtype::i16: load(std::int16_t{}); break;
      case dtype::i8: load(std::int8_t{}); break;
      case dtype::u8: case dtype::boolean: load(std::uint8_t{}); break;
    }
    return t;
  }

 private:
  explicit safetensors_file(std::shared_ptr<detail::mapped_file> f) : file_(std::move(f)) { parse(); }

  void parse() {
    const std::string& p = file_->path();
    const std::size_t size = file_->size();
    check(size >= 8, "safetensors: '", p, "' is truncated (", size, " bytes, no header length)");
    std::uint64_t hlen = 0;
    for (int i = 0; i < 8; ++i) hlen |= static_cast<std::uint64_t>(std::to_integer<unsigned>(file_->data()[i])) << (8 * i);
    check(hlen <= size - 8, "safetensors: '", p, "' declares a ", hlen, "-byte header but only ", size - 8,
          " bytes follow");
    check(hlen <= (std::uint64_t{100} << 20), "safetensors: '", p, "' header is larger than 100 MiB (", hlen, ")");
    const char* hb = reinterpret_cast<const char*>(file_->data() + 8);
    nlohmann::json j = nlohmann::json::parse(hb, hb + hlen, nullptr, /*allow_exceptions=*/false);
    check(!j.is_discarded(), "safetensors: '", p, "' header is not valid JSON");
    check(j.is_object(), "safetensors: '", p, "' header is not a JSON object");
    const std::byte* base = file_->data() + 8 + hlen;
    const std::size_t data_size = size - 8 - static_cast<std::size_t>(hlen);
    std::vector<std::pair<std::size_t, std::size_t>> ranges;
    for (auto it = j.begin(); it != j.end(); ++it) {
      const std::string& name = it.key();
      const auto& v = it.value();
      if (name == "__metadata__") {
        check(v.is_object(), "safetensors: '", p, "' __metadata__ is not an object");
        for (auto m = v.begin(); m != v.end(); ++m)
          if (m.value().is_string()) metadata_[m.key()] = m.value().get<std::string>();
        continue;
      }
      auto bad = [&](const std::string& why) { fail("safetensors: '", p, "' tensor '", name, "': ", why); };
      if (!v.is_object()) bad("entry is not an object");
      if (!v.contains("dtype") || !v["dtype"].is_string()) bad("missing or non-string dtype");
      tensor_entry e;
      e.name = name;
      const std::string dt = v["dtype"].get<std::string>();
      if (!parse_dtype(dt, e.type)) bad("unknown dtype '" + dt + "'");
      if (!v.contains("shape") || !v["shape"].is_array()) bad("missing shape");
      std::uint64_t numel = 1;
      for (const auto& d : v["shape"]) {
        if (!d.is_number_unsigned()) bad("shape entries must be non-negative integers");
        const std::uint64_t x = d.get<std::uint64_t>();
        if (x > (std::uint64_t{1} << 40)) bad("shape entry too large");
        if (x != 0 && numel > (std::uint64_t{1} << 48) / x) bad("shape too large");
        numel *= x;
        e.shape.push_back(static_cast<index_t>(x));
      }
      if (e.shape.size() > 8) bad("rank above 8");
      if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2 ||
          !v["data_offsets"][0].is_number_unsigned() || !v["data_offsets"][1].is_number_unsigned())
        bad("data_offsets must be two non-negative integers");
      const std::uint64_t b = v["data_offsets"][0].get<std::uint64_t>(), en = v["data_offsets"][1].get<std::uint64_t>();
      if (b > en) bad("data_offsets begin > end");
      if (en > data_size)
        bad("data_offsets [" + std::to_string(b) + ", " + std::to_string(en) + ") run past the end of the data (" +
            std::to_string(data_size) + " bytes): file truncated?");
      if (en - b != numel * dtype_size(e.type))
        bad("shape " + e.shape_string() + " of " + dt + " needs " + std::to_string(numel * dtype_size(e.type)) +
            " bytes but data_offsets hold " + std::to_string(en - b));
      e.data = base + b;
      e.nbytes = static_cast<std::size_t>(en - b);
      if (e.nbytes) ranges.emplace_back(static_cast<std::size_t>(b), static_cast<std::size_t>(en));
      tensors_.emplace(name, std::move(e));
    }
    std::sort(ranges.begin(), ranges.end());
    for (std::size_t i = 1; i < ranges.size(); ++i)
      check(ranges[i].first >= ranges[i - 1].second, "safetensors: '", p, "' has overlapping tensor data at bytes [",
            ranges[i].first, ", ", ranges[i - 1].second, ")");
  }

  std::shared_ptr<detail::mapped_file> file_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, tensor_entry> tensors_;
};

/// Builds a safetensors image in memory and writes it: `add(name, dtype, shape, bytes)` or the
/// typed `add<T>(name, shape, span)`, then `bytes()` or `save(path)`. Tensors are laid out in
/// the order added, each at an offset aligned to 8 bytes by padding the header with spaces.
class safetensors_writer {
 public:
  void add(const std::string& name, dtype type, std::vector<index_t> shape, std::span<const std::byte> data) {
    std::size_t n = dtype_size(type);
    for (auto e : shape) {
      check(e >= 0, "safetensors_writer: tensor '", name, "' has a negative extent");
      n *= static_cast<std::size_t>(e);
    }
    check(n == data.size(), "safetensors_writer: tensor '", name, "' has ", data.size(), " bytes but its shape needs ", n);
    for (const auto& t : entries_) check(t.name != name, "safetensors_writer: tensor '", name, "' added twice");
    entries_.push_back({name, type, std::move(shape), std::vector<std::byte>(data.begin(), data.end())});
  }
  template <class T>
  void add(const std::string& name, std::vector<index_t> shape, std::span<const T> data) {
    dtype t{};
    bool known = false;
    for (dtype d : {dtype::f64, dtype::f32, dtype::f16, dtype::bf16, dtype::f8_e4m3, dtype::f8_e5m2, dtype::i64,
                    dtype::i32, dtype::i8, dtype::u8})
      if (dtype_matches<T>(d)) {
        t = d;
        known = true;
      }
    check(known, "safetensors_writer: no safetensors dtype for the element type of '", name, "'");
    add(name, t, std::move(shape), std::as_bytes(data));
  }
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  std::vector<std::byte> bytes() const {
    nlohmann::ordered_json h = nlohmann::ordered_json::object();
    if (!metadata_.empty()) h["__metadata__"] = metadata_;
    std::size_t off = 0;
    for (const auto& e : entries_) {
      h[e.name] = {{"dtype", dtype_name(e.type)}, {"shape", e.shape}, {"data_offsets", {off, off + e.data.size()}}};
      off += e.data.size();
    }
    std::string hs = h.dump();
    while ((8 + hs.size()) % 8 != 0) hs.push_back(' ');
    std::vector<std::byte> out(8 + hs.size() + off);
    const std::uint64_t n = hs.size();
    for (int i = 0; i < 8; ++i) out[static_cast<std::size_t>(i)] = static_cast<std::byte>((n >> (8 * i)) & 0xff);
    std::memcpy(out.data() + 8, hs.data(), hs.size());
    std::size_t p = 8 + hs.size();
    for (const auto& e : entries_) {
      if (!e.data.empty()) std::memcpy(out.data() + p, e.data.data(), e.data.size());
      p += e.data.size();
    }
    return out;
  }
  void save(const std::string& path) const {
    const auto b = bytes();
    std::FILE* f = std::fopen(path.c_str(), "wb");
    check(f != nullptr, "safetensors_writer: cannot create '", path, "': ", std::strerror(errno));
    const bool ok = std::fwrite(b.data(), 1, b.size(), f) == b.size();
    const bool closed = std::fclose(f) == 0;
    check(ok && closed, "safetensors_writer: writing '", path, "' failed");
  }

 private:
  struct entry {
    std::string name;
    dtype type;
    std::vector<index_t> shape;
    std::vector<std::byte> data;
  };
  std::vector<entry> entries_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace moela::io
