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
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i, gen] { worker_loop(i, gen); });
  }

  /// Runs task(worker_index) on every thread of the pool, including the caller (index 0).
  void run_on_all(const std::function<void(int)>& task) {
    // One parallel region at a time: callers on different threads take turns (each region
    // already uses every thread of the pool).
    std::lock_guard<std::mutex> run(run_mu_);
    if (workers_.empty()) {
      task(0);
      return;
    }
    std::exception_ptr first_error;
    std::mutex err_mu;
    const std::function<void(int)> guarded = [&](int idx) {
      try {
        task(idx);
      } catch (...) {
        std::lock_guard<std::mutex> lk(err_mu);
        if (!first_error) first_error = std::current_exception();
      }
    };
    // Publish the task, then the generation (release): a worker that sees the new generation
    // (acquire) sees task_ and pending_.
    task_ = &guarded;
    pending_.store(static_cast<int>(workers_.size()), std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    generation_.notify_all();
    guarded(0);
    for (int p = pending_.load(std::memory_order_acquire); p != 0;) p = spin_then_wait(pending_, p, spin_us_);
    task_ = nullptr;
    if (first_error) std::rethrow_exception(first_error);
  }

 private:
  void worker_loop(int idx, std::uint32_t seen) {
    for (;;) {
      seen = spin_then_wait(generation_, seen, spin_us_);
      if (quit_.load(std::memory_order_acquire)) return;
      (*task_)(idx);  // the task marks its own parallel scope
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) pending_.notify_one();
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
  std::mutex run_mu_;  // held for a whole run_on_all or resize
  const std::function<void(int)>* task_ = nullptr;
  std::atomic<std::uint32_t> generation_{0};  // bumped once per region (and to stop the workers)
  std::atomic<int> pending_{0};               // workers still running the current region
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

/// Calls `fn(begin, end)` over chunks of `[0, n)`; at most one chunk per thread when
/// `grain` is 0, else chunks of about `grain` items handed out dynamically (for uneven work,
/// e.g. experts with different token counts).
template <class Fn>
void parallel_for(index_t n, Fn&& fn, index_t grain = 0) {
  if (n <= 0) return;
  auto& pool = detail::global_pool();
  const int nt = pool.size();
  if (nt == 1 || n == 1 || detail::thread_pool::in_parallel()) {
    fn(index_t{0}, n);
    return;
  }
  if (grain <= 0) {
    // Static split: thread t gets [t*n/nt, (t+1)*n/nt).
    pool.run_on_all([&](int t) {
      const index_t b = n * t / nt, e = n * (t + 1) / nt;
      if (b < e) {
        detail::parallel_scope scope;
        fn(b, e);
      }
    });
    return;
  }
  std::atomic<index_t> next{0};
  pool.run_on_all([&](int) {
    detail::parallel_scope scope;
    for (;;) {
      const index_t b = next.fetch_add(grain, std::memory_order_relaxed);
      if (b >= n) break;
      fn(b, std::min(n, b + grain));
    }
  });
}

}  // namespace moela
