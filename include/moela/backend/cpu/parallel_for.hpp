#pragma once
/// \file moela/backend/cpu/parallel_for.hpp
/// The thread pool every CPU kernel runs on.
///
/// `parallel_for(n, fn)` calls `fn(begin, end)` on disjoint chunks covering `[0, n)`, on the
/// calling thread and the pool's workers, and returns when all chunks are done. Nested calls
/// (from inside a chunk) run serially on the calling thread. Exceptions thrown by `fn` are
/// rethrown on the calling thread (the first one wins; the other chunks still run). Calls from
/// several user threads at once are safe: they take turns on the pool.
///
/// Threads claim the chunks of a region one at a time from a shared counter. A worker that is
/// late (waking up, or its core taken by another process) therefore holds nothing up: the
/// threads that run take its chunks, and the caller waits only for chunks already running. On
/// a busy machine a region runs at the speed of the threads that get a core, instead of
/// waiting a scheduler time slice for each worker (which made a small model's decode steps
/// ~1000x slower with one of two cores taken: docs/performance.md).
///
/// The thread count is `set_num_threads(n)` if called, else the `MOELA_NUM_THREADS`
/// environment variable, else `std::thread::hardware_concurrency()`. Between regions the
/// workers spin for `MOELA_SPIN_US` microseconds (default 1000; 0: never) before they sleep, so
/// that back-to-back regions (the GEMVs of a decode step) start without a wake-up latency.

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

#include "moela/core/config.hpp"
#include "moela/core/error.hpp"

namespace moela {

namespace detail {

struct parallel_scope {  // marks the current thread as inside a parallel region (RAII)
  bool was;
  parallel_scope();
  ~parallel_scope();
};

inline int default_thread_count() {
  if (const char* env = std::getenv("MOELA_NUM_THREADS")) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && v > 0 && v <= 4096) return static_cast<int>(v);
  }
  const unsigned hc = std::thread::hardware_concurrency();
  return hc ? static_cast<int>(hc) : 1;
}

/// Waits until `a` holds a value other than `old` and returns it: first by spinning for about
/// `spin_us` microseconds (a hand-off between the pool's threads then costs well under a
/// microsecond instead of a futex wake-up, which measured ~45 us per parallel region on a
/// 2-vCPU VM and was most of a small GEMV's time), then by blocking in `std::atomic::wait`.
template <class T>
T spin_then_wait(const std::atomic<T>& a, T old, int spin_us) {
  T v = a.load(std::memory_order_acquire);
  if (v == old && spin_us > 0) {
    const auto until = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us);
    for (unsigned i = 1; v == old; ++i) {
#if defined(__x86_64__) || defined(__i386__)
      __builtin_ia32_pause();
#endif
      v = a.load(std::memory_order_acquire);
      if (i % 64 == 0 && std::chrono::steady_clock::now() > until) break;
    }
  }
  while (v == old) {
    a.wait(old, std::memory_order_acquire);
    v = a.load(std::memory_order_acquire);
  }
  return v;
}

/// How long (microseconds) the pool's threads spin waiting for work or for each other before
/// they block: `MOELA_SPIN_US` if set (0 blocks at once), else 1000, long enough to bridge the
/// serial work between two parallel regions of a decode step. Pools with more threads than the
/// hardware has never spin (a spinning thread would then hold a core that a worker needs).
inline int default_spin_us(int threads) {
  const unsigned hc = std::thread::hardware_concurrency();
  if (hc != 0 && static_cast<unsigned>(threads) > hc) return 0;
  if (const char* env = std::getenv("MOELA_SPIN_US")) {
    char* end = nullptr;
    const long v = std::strtol(env, &end, 10);
    if (end != env && v >= 0 && v <= 1000000) return static_cast<int>(v);
  }
  return 1000;
}

class thread_pool {
 public:
  explicit thread_pool(int n) { resize(n); }
  ~thread_pool() { stop(); }
  thread_pool(const thread_pool&) = delete;
  thread_pool& operator=(const thread_pool&) = delete;

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void resize(int n) {
    std::lock_guard<std::mutex> run(run_mu_);  // never while a parallel_for is running
    n = std::max(1, n);
    if (n == size() && !workers_.empty()) return;
    stop();
    quit_.store(false, std::memory_order_relaxed);
    spin_us_ = default_spin_us(n);
    // New workers wait for the *next* generation: runs before this resize are not theirs.
    const std::uint32_t gen = generation_.load(std::memory_order_relaxed);
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, gen] { worker_loop(gen); });
  }

  /// Runs task(c) once for every chunk c in [0, chunks), on the caller and the workers, and
  /// returns when all are done. Chunks are claimed one at a time from a shared counter, so a
  /// worker that has not started yet (asleep, or its core busy with another process) holds
  /// nothing up: the threads that are running take its chunks. The caller waits only for
  /// chunks already claimed and running.
  void run_chunks(std::uint32_t chunks, const std::function<void(std::uint32_t)>& task) {
    if (chunks == 0) return;
    // One parallel region at a time: callers on different threads take turns (each region
    // already uses every thread of the pool).
    std::lock_guard<std::mutex> run(run_mu_);
    std::exception_ptr first_error;
    std::mutex err_mu;
    const std::function<void(std::uint32_t)> guarded = [&](std::uint32_t c) {
      try {
        task(c);
      } catch (...) {
        std::lock_guard<std::mutex> lk(err_mu);
        if (!first_error) first_error = std::current_exception();
      }
    };
    if (workers_.empty()) {
      for (std::uint32_t c = 0; c < chunks; ++c) guarded(c);
    } else {
      // Publish the task and the chunk count, then the claim word (release): a thread whose
      // claim succeeds (acquire) sees them. Then wake the workers.
      task_ = &guarded;
      chunks_ = chunks;
      pending_.store(chunks, std::memory_order_relaxed);
      const std::uint32_t gen = generation_.load(std::memory_order_relaxed) + 1;
      claims_.store(std::uint64_t{gen} << 32 | chunks, std::memory_order_release);
      generation_.store(gen, std::memory_order_release);
      generation_.notify_all();
      run_claimed();
      for (std::uint32_t p = pending_.load(std::memory_order_acquire); p != 0;) p = spin_then_wait(pending_, p, spin_us_);
      task_ = nullptr;
    }
    if (first_error) std::rethrow_exception(first_error);
  }

 private:
  /// Claims and runs chunks of the current region, in order, until none is left. The claim word
  /// holds the region's generation (high 32 bits) and its unclaimed chunks (low 32 bits); a
  /// thread that read the word of a finished region fails its compare-exchange, since the
  /// generation moved.
  void run_claimed() {
    std::uint64_t w = claims_.load(std::memory_order_acquire);
    while (static_cast<std::uint32_t>(w) != 0) {
      if (!claims_.compare_exchange_weak(w, w - 1, std::memory_order_acq_rel, std::memory_order_acquire)) continue;
      (*task_)(chunks_ - static_cast<std::uint32_t>(w));  // the task marks its own parallel scope
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
      w = claims_.load(std::memory_order_acquire);
    }
  }

  void worker_loop(std::uint32_t seen) {
    for (;;) {
      seen = spin_then_wait(generation_, seen, spin_us_);
      if (quit_.load(std::memory_order_acquire)) return;
      run_claimed();
    }
  }

  void stop() {
    quit_.store(true, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

 public:
  static bool& in_parallel() {
    thread_local bool flag = false;
    return flag;
  }

 private:
  std::vector<std::thread> workers_;
  std::mutex run_mu_;  // held for a whole run_chunks or resize
  const std::function<void(std::uint32_t)>* task_ = nullptr;
  std::atomic<std::uint32_t> generation_{0};  // bumped once per region (and to stop the workers)
  std::atomic<std::uint64_t> claims_{0};      // generation << 32 | chunks not yet claimed
  std::uint32_t chunks_ = 0;                  // the current region's chunk count
  std::atomic<std::uint32_t> pending_{0};     // chunks of the current region not yet done
  std::atomic<bool> quit_{false};
  int spin_us_ = 0;
};

inline parallel_scope::parallel_scope() : was(thread_pool::in_parallel()) { thread_pool::in_parallel() = true; }
inline parallel_scope::~parallel_scope() { thread_pool::in_parallel() = was; }

inline thread_pool& global_pool() {
  static thread_pool pool(default_thread_count());
  return pool;
}

}  // namespace detail

/// Sets the number of threads CPU kernels use (>= 1). Not to be called from inside a kernel.
inline void set_num_threads(int n) {
  check(n >= 1, "set_num_threads: thread count must be >= 1, got ", n);
  check(!detail::thread_pool::in_parallel(), "set_num_threads: called from inside parallel_for");
  detail::global_pool().resize(n);
}

/// The number of threads CPU kernels use.
inline int num_threads() { return detail::global_pool().size(); }

/// Calls `fn(begin, end)` over chunks of `[0, n)`: one per thread when `grain` is 0 (thread
/// count t: chunk c is [c n / t, (c + 1) n / t)), else chunks of `grain` items (for uneven work,
/// e.g. experts with different token counts). Threads claim chunks in order as they come, so
/// one thread may run several (see thread_pool::run_chunks).
template <class Fn>
void parallel_for(index_t n, Fn&& fn, index_t grain = 0) {
  if (n <= 0) return;
  auto& pool = detail::global_pool();
  const int nt = pool.size();
  if (nt == 1 || n == 1 || detail::thread_pool::in_parallel()) {
    fn(index_t{0}, n);
    return;
  }
  constexpr index_t max_chunks = index_t{1} << 30;
  index_t chunks = 0;
  if (grain <= 0) {
    chunks = std::min<index_t>(nt, n);
  } else {
    grain = std::max(grain, (n + max_chunks - 1) / max_chunks);  // chunk ids fit the claim word
    chunks = (n + grain - 1) / grain;
  }
  pool.run_chunks(static_cast<std::uint32_t>(chunks), [&](std::uint32_t c) {
    const index_t b = grain <= 0 ? n * c / chunks : c * grain;
    const index_t e = grain <= 0 ? n * (c + 1) / chunks : std::min(n, b + grain);
    detail::parallel_scope scope;
    fn(b, e);
  });
}

}  // namespace moela
