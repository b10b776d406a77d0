#include <benchmark/benchmark.h>

#include <moela/core/build_info.hpp>

#include <cstdio>

int main(int argc, char** argv) {
  benchmark::AddCustomContext("moela", moela::build_info().summary());
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
