#!/usr/bin/env bash
# Clang check: every test and example translation unit (except the CUDA ones) through Clang's
# front end with the project's warning flags, -fsyntax-only: the library is header-only, so
# this instantiates its templates as the GCC build does and catches what only Clang rejects
# (GCC-only intrinsic types, dead-code diagnostics GCC does not give) at ~1/10 of a build.
# AVX-512 VNNI + BF16 flags so that every kernel header is compiled; nothing runs. The matmul
# tests once more with AVX512-VBMI, whose table-lookup FP8 decode replaces a path of the first
# pass; every unit but the AVX-512 test once more for x86-64-v3 (AVX2 + FMA: the AVX2 kernels,
# where code that only the AVX-512 branches use must not be left unused).
set -euo pipefail
cd "$(dirname "$0")/../.."
CXX="${CLANGXX:-clang++}"
"$CXX" --version | head -1
common=(-std=c++20 -fsyntax-only -Wall -Wextra -Werror -Iinclude -Itests -isystem /usr/include/eigen3
       -DMOELA_SOURCE_DIR="\"$PWD\"" -DMOELA_TEST_DATA_DIR="\"$PWD/tests/data\""
       -DMOELA_DEFAULT_MODEL_DIR="\"$PWD/examples/models/tiny-fortunes\"")
flags=("${common[@]}" -march=x86-64-v4 -mavx512vnni -mavx512bf16)
v3=("${common[@]}" -march=x86-64-v3)
files=$(ls tests/unit/*.cpp tests/quant_avx512/*.cpp examples/*.cpp examples/*/*.cpp | grep -v cuda)
fail=0
for f in $files; do echo "$f"; done | xargs -P "$(nproc)" -I{} sh -c '"$0" "$@" {} || { echo "FAILED: {}"; exit 255; }' "$CXX" "${flags[@]}" || fail=1
echo "$files" | grep -v quant_avx512 | xargs -P "$(nproc)" -I{} sh -c '"$0" "$@" {} || { echo "FAILED (x86-64-v3): {}"; exit 255; }' "$CXX" "${v3[@]}" || fail=1
"$CXX" "${flags[@]}" -mavx512vbmi tests/unit/test_quant_matmul.cpp || { echo "FAILED: test_quant_matmul.cpp with VBMI"; fail=1; }
if [ "$fail" != 0 ]; then echo "clang check FAILED"; exit 1; fi
echo "clang check: $(echo "$files" | wc -l) translation units OK for x86-64-v4 and x86-64-v3 (+1 with VBMI)"
