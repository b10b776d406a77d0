#include <doctest/doctest.h>

#include <moela/backend/cpu/parallel_for.hpp>

#include <atomic>
#include <cstdlib>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

using moela::index_t;

namespace {
/// Runs parallel_for(n, ..., grain) and returns how often each index was visited, checking
/// that every chunk is a non-empty sub-range of [0, n).
std::vector<int> visit_counts(index_t n, index_t grain, int& bad_chunks) {
  std::vector<std::atomic<int>> hits(static_cast<std::size_t>(n > 0 ? n : 0));
  std::atomic<int> bad{0};
  moela::parallel_for(
      n,
      [&](index_t b, index_t e) {
        if (!(0 <= b && b < e && e <= n)) ++bad;
        for (index_t i = b; i < e && i < n && i >= 0; ++i) ++hits[static_cast<std::size_t>(i)];
      },
      grain);
  bad_chunks = bad.load();
  std::vector<int> out;
  for (auto& h : hits) out.push_back(h.load());
  return out;
}
}  // namespace

// First in the file: the pool is created on first use, so this sees the start-up thread count.
TEST_CASE("parallel_for: the default thread count comes from MOELA_NUM_THREADS") {
  // `MOELA_TEST_EXPECT_THREADS` is set by the ctest variants that run this case with a given
  // environment (tests/system): a number, or "hw" for std::thread::hardware_concurrency().
  const char* expect = std::getenv("MOELA_TEST_EXPECT_THREADS");
  const char* env = std::getenv("MOELA_NUM_THREADS");
  const int hw = std::thread::hardware_concurrency() ? static_cast<int>(std::thread::hardware_concurrency()) : 1;
  int want = hw;
  if (expect) {
    want = std::string(expect) == "hw" ? hw : std::atoi(expect);
  } else if (env && std::atoi(env) > 0) {
    want = std::atoi(env);
  }
  INFO("MOELA_NUM_THREADS=", env ? env : "(unset)");
  CHECK(moela::num_threads() == want);
}

TEST_CASE("parallel_for: every index exactly once, for every size, grain and thread count") {
  for (int threads : {1, 2, 3, 7}) {
    moela::set_num_threads(threads);
    REQUIRE(moela::num_threads() == threads);
    for (index_t n : {0L, 1L, 2L, 3L, 5L, 7L, 8L, 63L, 64L, 1000L, 100003L}) {
      for (index_t grain : {0L, 1L, 3L, 64L, 1L << 20}) {
        int bad = 0;
        const auto hits = visit_counts(n, grain, bad);
        int wrong = 0;
        for (int h : hits) wrong += h != 1;
        CHECK_MESSAGE(wrong == 0, "threads ", threads, " n ", n, " grain ", grain);
        CHECK(bad == 0);
      }
    }
  }
  int bad = 0;
  CHECK(visit_counts(-5, 0, bad).empty());  // negative n: no call
}

TEST_CASE("parallel_for: static split: one chunk per thread, chunk c from c n / t to (c + 1) n / t") {
  moela::set_num_threads(4);
  std::mutex mu;
  std::vector<std::pair<index_t, index_t>> chunks;
  moela::parallel_for(10, [&](index_t b, index_t e) {
    std::lock_guard<std::mutex> lk(mu);
    chunks.emplace_back(b, e);
  });
  CHECK(chunks.size() == 4);
  std::set<std::pair<index_t, index_t>> got(chunks.begin(), chunks.end());
  CHECK(got == std::set<std::pair<index_t, index_t>>{{0, 2}, {2, 5}, {5, 7}, {7, 10}});
}

TEST_CASE("parallel_for: short regions with more threads than cores (late workers) run every chunk once") {
  // 16 threads on a machine with fewer cores: workers often wake after the caller has taken
  // their chunks, or join a later region; no chunk may be lost or run twice.
  moela::set_num_threads(16);
  int failed_regions = 0;
  for (int rep = 0; rep < 2000; ++rep) {
    const index_t n = 1 + rep % 37, grain = rep % 3 == 0 ? 0 : 1 + rep % 5;
    int bad = 0;
    const auto hits = visit_counts(n, grain, bad);
    int wrong = 0;
    for (int h : hits) wrong += h != 1;
    failed_regions += wrong != 0 || bad != 0;
  }
  CHECK(failed_regions == 0);
  CHECK(moela::num_threads() == 16);
}

TEST_CASE("parallel_for: the work really runs on several threads") {
  moela::set_num_threads(3);
  std::mutex mu;
  std::set<std::thread::id> ids;
  std::atomic<int> arrived{0};
  moela::parallel_for(3, [&](index_t, index_t) {
    {
      std::lock_guard<std::mutex> lk(mu);
      ids.insert(std::this_thread::get_id());
    }
    // Wait (bounded) until all three chunks are in flight at once: proves concurrency
    // without timing anything.
    ++arrived;
    for (int spin = 0; arrived.load() < 3 && spin < 200000000; ++spin) std::this_thread::yield();
  });
  CHECK(ids.size() == 3);
  CHECK(arrived.load() == 3);
}

TEST_CASE("parallel_for: exceptions propagate to the caller, and the pool stays usable") {
  for (index_t grain : {0L, 5L}) {
    moela::set_num_threads(4);
    std::atomic<int> calls{0};
    try {
      moela::parallel_for(
          100,
          [&](index_t b, index_t) {
            ++calls;
            if (b == 0) throw moela::error("chunk 0 failed");
          },
          grain);
      FAIL("no exception");
    } catch (const moela::error& e) {
      CHECK(std::string(e.what()) == "chunk 0 failed");
    }
    CHECK(calls.load() >= 1);
    // Other exception types too.
    CHECK_THROWS_AS(moela::parallel_for(
                        100, [](index_t b, index_t) { if (b > 0) throw std::out_of_range("x"); }, grain),
                    std::out_of_range);
    int bad = 0;
    const auto hits = visit_counts(1000, grain, bad);
    int wrong = 0;
    for (int h : hits) wrong += h != 1;
    CHECK(wrong == 0);
  }
  // With one thread the exception comes straight through.
  moela::set_num_threads(1);
  CHECK_THROWS_AS(moela::parallel_for(10, [](index_t, index_t) { throw moela::error("x"); }), moela::error);
}

TEST_CASE("parallel_for: nested calls run serially inside the chunk and cover their range") {
  moela::set_num_threads(4);
  constexpr index_t outer = 8, inner = 50;
  std::vector<std::atomic<int>> hits(outer * inner);
  std::atomic<int> nested_chunks{0};
  moela::parallel_for(outer, [&](index_t b, index_t e) {
    for (index_t i = b; i < e; ++i)
      moela::parallel_for(
          inner,
          [&](index_t ib, index_t ie) {
            ++nested_chunks;
            for (index_t j = ib; j < ie; ++j) ++hits[static_cast<std::size_t>(i * inner + j)];
          },
          7);
  });
  int wrong = 0;
  for (auto& h : hits) wrong += h.load() != 1;
  CHECK(wrong == 0);
  CHECK(nested_chunks.load() == outer);  // one serial chunk [0, inner) per nested call
}

TEST_CASE("parallel_for: calls from several user threads at once are safe") {
  moela::set_num_threads(3);
  std::vector<long long> sums(4, 0);
  std::vector<std::thread> users;
  for (int u = 0; u < 4; ++u)
    users.emplace_back([&, u] {
      for (int rep = 0; rep < 50; ++rep) {
        std::atomic<long long> s{0};
        moela::parallel_for(
            1000, [&](index_t b, index_t e) {
              long long local = 0;
              for (index_t i = b; i < e; ++i) local += i;
              s += local;
            },
            rep % 2 ? 0 : 37);
        sums[static_cast<std::size_t>(u)] += s.load();
      }
    });
  for (auto& t : users) t.join();
  for (long long s : sums) CHECK(s == 50LL * 999 * 1000 / 2);
}

TEST_CASE("set_num_threads: validates its argument and refuses to run inside a kernel") {
  CHECK_THROWS_AS(moela::set_num_threads(0), moela::error);
  CHECK_THROWS_AS(moela::set_num_threads(-3), moela::error);
  try {
    moela::set_num_threads(0);
  } catch (const moela::error& e) {
    CHECK(std::string(e.what()).find("set_num_threads: thread count must be >= 1, got 0") != std::string::npos);
  }
  moela::set_num_threads(2);
  std::atomic<int> refused{0};
  moela::parallel_for(2, [&](index_t, index_t) {
    try {
      moela::set_num_threads(5);
    } catch (const moela::error& e) {
      if (std::string(e.what()).find("inside parallel_for") != std::string::npos) ++refused;
    }
  });
  CHECK(refused.load() == 2);
  CHECK(moela::num_threads() == 2);
  moela::set_num_threads(5);
  CHECK(moela::num_threads() == 5);
  moela::set_num_threads(1);
  CHECK(moela::num_threads() == 1);
}
