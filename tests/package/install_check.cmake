# cmake -DSOURCE_DIR=... -DWORK_DIR=... -DGENERATOR=... -DCXX=... [-DMAKE_PROGRAM=...] -P install_check.cmake
#
# Configures moela as a user installing it would (tests, examples, benches off), installs it to
# WORK_DIR/prefix with `cmake --install --prefix` (a different prefix than configured, so the
# installed files must be relocatable), and checks the layout of a header-only package.
file(REMOVE_RECURSE ${WORK_DIR})
set(gen_args -G "${GENERATOR}")
if(MAKE_PROGRAM)
  list(APPEND gen_args -DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM})
endif()
macro(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}")
  endif()
endmacro()
run(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/build ${gen_args} -DCMAKE_CXX_COMPILER=${CXX}
    -DCMAKE_BUILD_TYPE=Release -DMOELA_BUILD_TESTS=OFF -DMOELA_BUILD_EXAMPLES=OFF
    -DMOELA_BUILD_BENCHMARKS=OFF -DCMAKE_INSTALL_PREFIX=${WORK_DIR}/configured-prefix)
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${CMAKE_COMMAND} --install ${WORK_DIR}/build --prefix ${WORK_DIR}/prefix)

set(p ${WORK_DIR}/prefix)
foreach(f share/cmake/moela/moelaConfig.cmake share/cmake/moela/moelaConfigVersion.cmake
          share/cmake/moela/moelaTargets.cmake share/pkgconfig/moela.pc
          include/moela/moela.hpp include/moela/core/minifloat.hpp include/moela/backend/cpu/parallel_for.hpp)
  if(NOT EXISTS ${p}/${f})
    message(FATAL_ERROR "installed package lacks ${f}")
  endif()
endforeach()
foreach(d lib lib64 bin)
  if(EXISTS ${p}/${d})
    message(FATAL_ERROR "a header-only install has no ${d}/ (found ${p}/${d})")
  endif()
endforeach()
if(EXISTS ${WORK_DIR}/configured-prefix)
  message(FATAL_ERROR "install wrote to the configured prefix instead of --prefix")
endif()
file(GLOB_RECURSE installed RELATIVE ${p} ${p}/*)
foreach(f IN LISTS installed)
  file(READ ${p}/${f} content)
  string(FIND "${content}" "${WORK_DIR}/configured-prefix" at)
  if(NOT at EQUAL -1)
    message(FATAL_ERROR "${f} hard-codes the configure-time prefix: not relocatable")
  endif()
endforeach()
message(STATUS "moela installed to ${p}: config, version file, targets, pkg-config file, headers; no lib/")
