# vcpkg overlay port for moela (header-only). It builds from the source tree it lives in
# (cmake/vcpkg/ports/moela/ of a moela checkout), so `--overlay-ports=<checkout>/cmake/vcpkg/ports`
# needs no download. A registry copy would fetch a release instead:
#   vcpkg_from_github(OUT_SOURCE_PATH SOURCE_PATH REPO moela/moela REF "v${VERSION}" SHA512 <sha512>)
get_filename_component(SOURCE_PATH "${CMAKE_CURRENT_LIST_DIR}/../../../.." ABSOLUTE)
if(NOT EXISTS "${SOURCE_PATH}/include/moela/moela.hpp")
  message(FATAL_ERROR "moela overlay port: no moela source tree at ${SOURCE_PATH}")
endif()

set(VCPKG_BUILD_TYPE release)  # header-only: one configuration is enough

vcpkg_check_features(OUT_FEATURE_OPTIONS FEATURE_OPTIONS
  FEATURES
    cuda MOELA_ENABLE_CUDA)

vcpkg_cmake_configure(
  SOURCE_PATH "${SOURCE_PATH}"
  OPTIONS
    -DMOELA_BUILD_TESTS=OFF
    -DMOELA_BUILD_EXAMPLES=OFF
    -DMOELA_BUILD_BENCHMARKS=OFF
    -DMOELA_INSTALL=ON
    ${FEATURE_OPTIONS})
vcpkg_cmake_install()
vcpkg_cmake_config_fixup(CONFIG_PATH share/cmake/moela)
vcpkg_fixup_pkgconfig()

# Nothing is compiled: no lib/ or debug/ tree.
file(REMOVE_RECURSE "${CURRENT_PACKAGES_DIR}/lib" "${CURRENT_PACKAGES_DIR}/debug")

file(INSTALL "${CMAKE_CURRENT_LIST_DIR}/usage" DESTINATION "${CURRENT_PACKAGES_DIR}/share/${PORT}")
vcpkg_install_copyright(FILE_LIST "${SOURCE_PATH}/LICENSE")
