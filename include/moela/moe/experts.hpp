#pragma once
/// \file moela/moe/experts.hpp
/// Grouped execution of several SwiGLU experts, each on its own block of token rows, as two
/// task-parallel phases (the engine behind `moe_layer`):
///
/// 1. for every (expert job, range R of intermediate rows):
///    `g = x · gate[R]ᵀ`, `u = x · up[R]ᵀ`, `h[:, R] = silu(g) ⊙ u`;
/// 2. for every (expert job, range R of output rows): `out[:, R] = h · down[R]ᵀ`.
///
/// Tasks are handed out dynamically over the thread pool, largest first, so work spreads by
/// expert *and* by rows, and many small experts share threads without a fork/join per matrix.
/// Inside a task `moela::matmul` runs single-threaded on a row slice of the weight, a zero-copy
/// `qmatrix` borrowed over rows `[r0, r1)` (GEMV when the job has one token, GEMM when it has
/// many). Each weight row is read once per forward; experts without a job are never touched.
///
/// How a matrix is cut: each phase aims at `tasks_per_thread` tasks per thread of about equal
/// work (tokens x rows). A matrix is cut into fewer, larger ranges when the jobs are many (a
/// prefill batch over 64 experts: one task per matrix) and into more, smaller ones when they
/// are few (a hot expert that received every token, or a decode step), down to `chunk_rows`
/// rows: 128 rounded up to the format's block rows (FP8 blocks are never split). Fewer cuts
/// matter for the packed GEMM, which packs its x once per call: at 48 rows of x and 128 weight
/// rows per call, packing x costs over a third of decoding the weights.
///
/// Formats whose default mode is `quant::mode::int8_activations` (e.g. `int4_group_a8<32>`):
/// each job's `x` is quantized once before phase 1 and its `h` once before phase 2
/// (`quant::int8_activation_rows`), not once per weight chunk; at T = 1 that is 2 quantizations
/// per expert instead of 2 x I/128 + D/128 (38 at V2-Lite's shape).

#include <algorithm>
#include <span>
#include <vector>

#include "moela/backend/cpu/parallel_for.hpp"
#include "moela/backend/tags.hpp"
#include "moela/core/error.hpp"
#include "moela/core/tensor.hpp"
#include "moela/core/workspace.hpp"
#include "moela/moe/ffn.hpp"
#include "moela/ops/matmul.hpp"
#include "moela/ops/swiglu.hpp"
#include "moela/quant/activation.hpp"

namespace moela::moe {

/// The smallest row range a task gets for `Format`: 128, rounded up to a multiple of
/// `slice_rows_of<Format>`.
template <class Format>
constexpr index_t chunk_rows_for() {
  constexpr index_t br = slice_rows_of<Format>;
  return (128 + br - 1) / br * br;
}

/// One SwiGLU expert as the runner sees it: zero-copy views of its three matrices, which the
/// tasks slice into row ranges on multiples of `chunk` rows.
template <class Format>
struct sliced_ffn {
  index_t hidden = 0, inter = 0, chunk = 0;
  qmatrix<Format> gate, up, down;  ///< borrowed views of `w`'s matrices

  sliced_ffn() = default;
  /// Views `w`'s storage (which must outlive this object; moving `w` keeps the storage).
  /// `chunk_rows`: the smallest range a task gets, a multiple of the format's block rows.
  explicit sliced_ffn(const swiglu_weights<Format>& w, index_t chunk_rows = chunk_rows_for<Format>())
      : hidden(w.hidden_size()), inter(w.intermediate_size()), chunk(chunk_rows),
        gate(row_slice(w.gate_proj, 0, inter)), up(row_slice(w.up_proj, 0, inter)),
        down(row_slice(w.down_proj, 0, hidden)) {
    constexpr index_t br = slice_rows_of<Format>;
    check(chunk_rows > 0 && chunk_rows % br == 0, "moe::sliced_ffn: chunk_rows ", chunk_rows,
          " is not a positive multiple of the format's ", br, " block rows");
  }
};

/// One expert evaluation: `out[m, D] = FFN(x[m, D])`, rows contiguous.
template <class Format>
struct expert_job {
  const sliced_ffn<Format>* ffn;
  const_view<float, 2> x;
  tensor_view<float, 2> out;
};

/// Runs a list of expert jobs in the two phases described above. Owns the task lists; the `h`
/// scratch (grown on demand) is the calling thread's, shared by every runner on it (see
/// moela/core/workspace.hpp). One runner must not run two calls at once.
class expert_runner {
 public:
  /// Tasks per thread that each phase aims at: enough that dynamic scheduling, largest task
  /// first, evens out the threads' work; few enough that most matrices stay whole in a prefill.
  static constexpr index_t tasks_per_thread = 8;

  template <class Arch, class Format>
  void run(cpu<Arch>, std::span<const expert_job<Format>> jobs) {
    h_off_.resize(jobs.size() + 1);
    h_off_[0] = 0;
    for (std::size_t j = 0; j < jobs.size(); ++j) {
      const auto& jb = jobs[j];
      const auto& f = *jb.ffn;
      check(jb.x.extent(0) == jb.out.extent(0) && jb.x.extent(1) == f.hidden && jb.out.extent(1) == f.hidden,
            "moe::expert_runner: job ", j, " has x ", to_string(jb.x.shape()), " and out ", to_string(jb.out.shape()),
            " for an expert of hidden size ", f.hidden);
      check(jb.x.rows_contiguous() && jb.out.rows_contiguous(), "moe::expert_runner: rows must be contiguous");
      h_off_[j + 1] = h_off_[j] + jb.x.extent(0) * f.inter;
    }
    plan(jobs, &sliced_ffn<Format>::inter, tasks1_);
    plan(jobs, &sliced_ffn<Format>::hidden, tasks2_);
    if (tasks1_.empty()) return;
    auto& sc = moela::detail::thread_workspace<scratch>();
    const auto total = static_cast<std::size_t>(h_off_.back());
    if (sc.h.size() < total) {
      sc.h.resize(total);
      sc.u.resize(total);
    }
    // Job j's hidden state h [m, I].
    auto h_of = [&](std::size_t j) {
      return const_view<float, 2>(sc.h.data() + h_off_[j], {jobs[j].x.extent(0), jobs[j].ffn->inter});
    };
    // Int8-activation formats: quantize every job's rows once (`to[j] = quantized rows_of(j)`).
    constexpr bool int8_x = std::is_same_v<quant::default_mode_t<Format>, quant::mode::int8_activations>;
    [[maybe_unused]] auto quantize_jobs = [&](std::vector<quant::int8_activation_rows>& to, auto rows_of) {
      if (to.size() < jobs.size()) to.resize(jobs.size());
      parallel_for(
          static_cast<index_t>(jobs.size()),
          [&](index_t j0, index_t j1) {
            for (index_t j = j0; j < j1; ++j) to[static_cast<std::size_t>(j)].assign(rows_of(static_cast<std::size_t>(j)));
          },
          1);
    };
    if constexpr (int8_x) quantize_jobs(sc.xq, [&](std::size_t j) { return jobs[j].x; });
    // What job j's matmuls read: its rows quantized once above (`q[j]`), or the rows themselves.
    auto input = [&]([[maybe_unused]] const std::vector<quant::int8_activation_rows>& q, [[maybe_unused]] std::size_t j,
                     auto rows) -> decltype(auto) {
      if constexpr (int8_x) return (q[j]);
      else return rows;
    };
    // Phase 1: gate and up row ranges, then silu(gate) * up on the range.
    parallel_for(
        static_cast<index_t>(tasks1_.size()),
        [&](index_t t0, index_t t1) {
          for (index_t t = t0; t < t1; ++t) {
            const auto [j, r0, r1] = tasks1_[static_cast<std::size_t>(t)];
            const auto& jb = jobs[static_cast<std::size_t>(j)];
            const auto& f = *jb.ffn;
            const index_t m = jb.x.extent(0);
            float* hb = sc.h.data() + h_off_[static_cast<std::size_t>(j)];
            float* ub = sc.u.data() + h_off_[static_cast<std::size_t>(j)];
            tensor_view<float, 2> g(hb + r0, {m, r1 - r0}, {f.inter, 1}), u(ub + r0, {m, r1 - r0}, {f.inter, 1});
            const auto& in = input(sc.xq, static_cast<std::size_t>(j), jb.x);
            matmul(cpu<Arch>{}, g, in, row_slice(f.gate, r0, r1));
            matmul(cpu<Arch>{}, u, in, row_slice(f.up, r0, r1));
            for (index_t i = 0; i < m; ++i)
              moela::detail::swiglu_kernel<Arch>(&g(i, 0), &g(i, 0), &u(i, 0), static_cast<std::size_t>(r1 - r0));
          }
        },
        1);
    if constexpr (int8_x) quantize_jobs(sc.hq, h_of);
    // Phase 2: down row ranges over the whole h of the job.
    parallel_for(
        static_cast<index_t>(tasks2_.size()),
        [&](index_t t0, index_t t1) {
          for (index_t t = t0; t < t1; ++t) {
            const auto [j, r0, r1] = tasks2_[static_cast<std::size_t>(t)];
            const auto& jb = jobs[static_cast<std::size_t>(j)];
            tensor_view<float, 2> o = jb.out.slice(1, r0, r1);
            matmul(cpu<Arch>{}, o, input(sc.hq, static_cast<std::size_t>(j), h_of(static_cast<std::size_t>(j))),
                   row_slice(jb.ffn->down, r0, r1));
          }
        },
        1);
  }

 private:
  struct task {
    index_t job, r0, r1;  // rows [r0, r1) of the job's matrix
  };

  // Cuts each job's matrix (`rows` of them: sliced_ffn::inter or ::hidden) into ranges of whole
  // chunks, so that the tasks number about tasks_per_thread per thread and carry about equal
  // work (tokens x rows); then orders them largest first. Jobs without tokens get no task.
  template <class Format>
  static void plan(std::span<const expert_job<Format>> jobs, index_t sliced_ffn<Format>::*rows,
                   std::vector<task>& out) {
    out.clear();
    index_t total = 0;
    for (const auto& jb : jobs) total += jb.x.extent(0) * ((*jb.ffn).*rows);
    if (total == 0) return;
    const index_t cap = std::max<index_t>(1, total / (tasks_per_thread * num_threads()));
    for (std::size_t j = 0; j < jobs.size(); ++j) {
      const auto& f = *jobs[j].ffn;
      const index_t m = jobs[j].x.extent(0), R = f.*rows;
      if (m == 0) continue;
      const index_t chunks = (R + f.chunk - 1) / f.chunk;
      const index_t pieces = std::clamp<index_t>((m * R + cap - 1) / cap, 1, chunks);
      for (index_t p = 0; p < pieces; ++p)
        out.push_back({static_cast<index_t>(j), chunks * p / pieces * f.chunk,
                       std::min(R, chunks * (p + 1) / pieces * f.chunk)});
    }
    auto work = [&](const task& t) { return jobs[static_cast<std::size_t>(t.job)].x.extent(0) * (t.r1 - t.r0); };
    std::sort(out.begin(), out.end(), [&](const task& a, const task& b) {
      const index_t wa = work(a), wb = work(b);
      return wa != wb ? wa > wb : (a.job != b.job ? a.job < b.job : a.r0 < b.r0);
    });
  }

  /// The hidden states of a run and, for int8-activation formats, each job's quantized rows:
  /// shared by every runner on the calling thread (moela/core/workspace.hpp).
  struct scratch {
    std::vector<float> h, u;
    std::vector<quant::int8_activation_rows> xq, hq;  // per job, int8-activation formats only
    std::size_t bytes() const {
      std::size_t b = moela::detail::capacity_bytes(h, u);
      for (const auto* v : {&xq, &hq})
        for (const auto& r : *v) b += r.bytes();
      return b;
    }
  };

  std::vector<index_t> h_off_;
  std::vector<task> tasks1_, tasks2_;
};

}  // namespace moela::moe
