#!/usr/bin/env bash
# Validates the packaging recipes without the public package indexes:
#  1. vcpkg overlay port: vcpkg.json parses; portfile.cmake replayed by cmake/ci/vcpkg-replay.cmake
#     (configure with the port's options, install to a staging prefix, config fixup, layout
#     checks, then the consumer built against it with find_package).
#  2. Conan 2 recipe: conan from PyPI in a virtual environment; `conan export` of the recipe and
#     `conan create` with its test_package, where Eigen, xsimd and nlohmann_json are the Debian
#     packages behind local stand-in recipes (cmake/conan/system/conanfile.py); remotes disabled.
# Work goes to build/packaging/. Set MOELA_SKIP_CONAN=1 where PyPI cannot be reached.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
work=$root/build/packaging
mkdir -p "$work"

echo "-- vcpkg: manifest"
python3 -m json.tool cmake/vcpkg/ports/moela/vcpkg.json >/dev/null
echo "-- vcpkg: replaying portfile.cmake"
cmake -DPORT_DIR="$root/cmake/vcpkg/ports/moela" -DWORK_DIR="$work/vcpkg" \
      -DCONSUMER_DIR="$root/cmake/conan/test_package" -P cmake/ci/vcpkg-replay.cmake > "$work/vcpkg.log" 2>&1 \
  || { tail -50 "$work/vcpkg.log"; echo "vcpkg replay FAILED"; exit 1; }
grep -E "^-- (install has|vcpkg replay)" "$work/vcpkg.log"

echo "-- conan: recipe syntax"
python3 -m py_compile cmake/conan/conanfile.py cmake/conan/test_package/conanfile.py cmake/conan/system/conanfile.py
if [ "${MOELA_SKIP_CONAN:-0}" = 1 ]; then
  echo "-- conan: skipped (MOELA_SKIP_CONAN=1)"
  exit 0
fi
if [ ! -x "$work/venv/bin/conan" ]; then
  echo "-- conan: installing from PyPI into build/packaging/venv"
  python3 -m venv "$work/venv"
  "$work/venv/bin/pip" install -q "conan>=2.0,<3"
fi
export PATH="$work/venv/bin:$PATH"
export CONAN_HOME="$work/conan-home"
rm -rf "$CONAN_HOME"
conan --version
conan profile detect --force >/dev/null 2>&1
for r in $(conan remote list --format=json | python3 -c 'import json,sys; print(" ".join(r["name"] for r in json.load(sys.stdin)))'); do
  conan remote disable "$r" >/dev/null
done
# Versions of the system packages stand in for Conan Center's recipes.
deb_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null | sed -E 's/^[0-9]+://; s/[-~+].*$//'; }
eigen_v=$(deb_version libeigen3-dev); xsimd_v=$(deb_version libxsimd-dev); json_v=$(deb_version nlohmann-json3-dev)
echo "-- conan: system stand-ins eigen/$eigen_v xsimd/$xsimd_v nlohmann_json/$json_v"
conan export cmake/conan/system --name eigen --version "$eigen_v" >/dev/null
conan export cmake/conan/system --name xsimd --version "$xsimd_v" >/dev/null
conan export cmake/conan/system --name nlohmann_json --version "$json_v" >/dev/null
echo "-- conan: export"
conan export cmake/conan
echo "-- conan: create (+ test_package)"
conan create cmake/conan --build=missing -s compiler.cppstd=20 \
  -c tools.cmake.cmaketoolchain:generator=Ninja > "$work/conan-create.log" 2>&1 \
  || { tail -60 "$work/conan-create.log"; echo "conan create FAILED"; exit 1; }
sed -n '/Testing the package: Executing test/,$p' "$work/conan-create.log"
echo "-- packaging checks passed"
