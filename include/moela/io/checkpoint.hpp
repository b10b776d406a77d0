#pragma once
/// \file moela/io/checkpoint.hpp
/// A Hugging Face checkpoint directory: one `model.safetensors`, or shards listed by
/// `model.safetensors.index.json` (`{"weight_map": {tensor name: shard file}}`). Every shard is
/// memory-mapped and validated once (see safetensors.hpp); tensors are looked up by name across
/// shards and stay views into the mappings (zero copy).
///
/// Also here: `progress_bar`, a one-line progress display that draws only when stderr is a
/// terminal (so logs and CI output stay clean).
///
/// Errors (all `moela::error`, naming the file and the tensor): no safetensors file in the
/// directory, an index that is not valid JSON or lacks `weight_map`, a shard path that escapes
/// the directory, a tensor the index lists but its shard lacks, a tensor present in two shards,
/// a missing tensor on lookup, and every defect safetensors_file reports.

#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include <unistd.h>

#include <nlohmann/json.hpp>

#include "moela/io/safetensors.hpp"

namespace moela::io {

/// A progress line on stderr, drawn only when stderr is a terminal (or when forced).
/// `step(n)` advances by n units; the line is redrawn at most ~20 times a second.
class progress_bar {
 public:
  progress_bar(std::string label, std::size_t total, bool force = false)
      : label_(std::move(label)), total_(total), enabled_(force || ::isatty(2) == 1),
        start_(std::chrono::steady_clock::now()) {}
  ~progress_bar() { finish(); }
  progress_bar(const progress_bar&) = delete;
  progress_bar& operator=(const progress_bar&) = delete;

  void step(std::size_t n = 1) {
    done_ += n;
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (done_ < total_ && now - last_ < std::chrono::milliseconds(50)) return;
    last_ = now;
    draw();
  }
  void finish() {
    if (!enabled_ || finished_) return;
    finished_ = true;
    draw();
    std::fputc('\n', stderr);
  }
  bool enabled() const { return enabled_; }

 private:
  void draw() const {
    const double frac = total_ ? static_cast<double>(done_) / static_cast<double>(total_) : 1.0;
    const int width = 30, fill = static_cast<int>(frac * width + 0.5);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    std::string bar(static_cast<std::size_t>(fill), '#');
    bar.resize(width, ' ');
    std::fprintf(stderr, "\r%s [%s] %3d%% %.1f/%.1f MiB %.1fs", label_.c_str(), bar.c_str(),
                 static_cast<int>(frac * 100 + 0.5), static_cast<double>(done_) / 1048576.0,
                 static_cast<double>(total_) / 1048576.0, secs);
    std::fflush(stderr);
  }
  std::string label_;
  std::size_t total_, done_ = 0;
  bool enabled_, finished_ = false;
  std::chrono::steady_clock::time_point start_, last_{};
};

/// All tensors of a checkpoint directory (single file or sharded), memory-mapped.
class checkpoint {
 public:
  /// Opens `path`: a directory (with `model.safetensors.index.json` or `model.safetensors`)
  /// or a single `.safetensors` file.
  explicit checkpoint(const std::string& path) : dir_(path) {
    const bool is_file = path.size() > 12 && path.compare(path.size() - 12, 12, ".safetensors") == 0;
    if (is_file) {
      open_single(path);
      const auto slash = path.find_last_of('/');
      dir_ = slash == std::string::npos ? "." : path.substr(0, slash);
      return;
    }
    const std::string index = path + "/model.safetensors.index.json";
    if (std::ifstream(index)) {
      open_index(index);
    } else {
      const std::string single = path + "/model.safetensors";
      check(static_cast<bool>(std::ifstream(single)), "checkpoint: '", path,
            "' has neither model.safetensors nor model.safetensors.index.json");
      open_single(single);
    }
  }

  const std::string& directory() const { return dir_; }
  /// The shards, in the order they were opened.
  const std::vector<std::shared_ptr<safetensors_file>>& shards() const { return shards_; }
  std::size_t tensor_count() const { return where_.size(); }
  /// Total bytes of tensor data over all shards.
  std::size_t data_bytes() const {
    std::size_t n = 0;
    for (const auto& [name, f] : where_) n += f->at(name).nbytes;
    return n;
  }
  /// Bytes of all shard files (headers included).
  std::size_t file_bytes() const {
    std::size_t n = 0;
    for (const auto& s : shards_) n += s->file_size();
    return n;
  }
  bool contains(const std::string& name) const { return where_.count(name) != 0; }
  /// Names of every tensor, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> r;
    r.reserve(where_.size());
    for (const auto& [n, f] : where_) r.push_back(n);
    return r;
  }

  /// The shard holding `name`; throws naming the checkpoint when absent.
  const safetensors_file& file_of(const std::string& name) const {
    auto it = where_.find(name);
    check(it != where_.end(), "checkpoint: '", dir_, "' has no tensor '", name, "'");
    return *it->second;
  }
  const tensor_entry& at(const std::string& name) const { return file_of(name).at(name); }
  template <class T, std::size_t Rank>
  const_view<T, Rank> view(const std::string& name) const {
    return file_of(name).template view<T, Rank>(name);
  }
  template <std::size_t Rank>
  tensor<float, Rank> to_float(const std::string& name) const {
    return file_of(name).template to_float<Rank>(name);
  }

  /// Checks that `name` exists and has exactly `shape`; the message names file, tensor and both shapes.
  const tensor_entry& expect(const std::string& name, std::initializer_list<index_t> shape) const {
    const auto& e = at(name);
    const std::vector<index_t> want(shape);
    if (e.shape != want) {
      tensor_entry w;
      w.shape = want;
      fail("checkpoint: '", file_of(name).path(), "' tensor '", name, "' has shape ", e.shape_string(),
           " but the config needs ", w.shape_string());
    }
    return e;
  }

 private:
  void open_single(const std::string& file) {
    auto f = std::make_shared<safetensors_file>(file);
    shards_.push_back(f);
    for (const auto& [n, e] : f->tensors()) where_[n] = f.get();
  }

  void open_index(const std::string& index) {
    std::ifstream in(index, std::ios::binary);
    std::ostringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    nlohmann::json j = nlohmann::json::parse(text, nullptr, false);
    check(!j.is_discarded(), "checkpoint: index '", index, "' is not valid JSON");
    check(j.is_object() && j.contains("weight_map") && j["weight_map"].is_object(), "checkpoint: index '", index,
          "' has no 'weight_map' object");
    std::map<std::string, std::vector<std::string>> by_shard;
    for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
      check(it.value().is_string(), "checkpoint: index '", index, "' maps tensor '", it.key(),
            "' to a non-string shard");
      const std::string shard = it.value().get<std::string>();
      check(!shard.empty() && shard.find('/') == std::string::npos && shard != "." && shard != "..",
            "checkpoint: index '", index, "' names shard '", shard, "' for tensor '", it.key(),
            "', which is not a plain file name in the checkpoint directory");
      by_shard[shard].push_back(it.key());
    }
    check(!by_shard.empty(), "checkpoint: index '", index, "' lists no tensors");
    for (const auto& [shard, tensors] : by_shard) {
      auto f = std::make_shared<safetensors_file>(dir_ + "/" + shard);
      for (const auto& t : tensors)
        check(f->contains(t), "checkpoint: index '", index, "' puts tensor '", t, "' in '", f->path(),
              "', which does not contain it");
      for (const auto& [n, e] : f->tensors()) {
        auto [it, fresh] = where_.emplace(n, f.get());
        check(fresh || it->second == f.get(), "checkpoint: tensor '", n, "' is in both '", it->second->path(),
              "' and '", f->path(), "'");
      }
      shards_.push_back(std::move(f));
    }
  }

  std::string dir_;
  std::vector<std::shared_ptr<safetensors_file>> shards_;
  std::map<std::string, const safetensors_file*> where_;
};

}  // namespace moela::io
