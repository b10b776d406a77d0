# Debian 12's libxsimd-dev 8.1.0-7 exports target `xsimd` with INTERFACE_LINK_LIBRARIES `xtl`
# but neither depends on xtl-dev nor finds it, so a plain link fails with "cannot find -lxtl".
# Give the name a target: the real xtl when installed, else an empty interface target.
if(TARGET xsimd AND NOT TARGET xtl)
  get_target_property(_moela_xsimd_libs xsimd INTERFACE_LINK_LIBRARIES)
  if(_moela_xsimd_libs AND "xtl" IN_LIST _moela_xsimd_libs)
    find_package(xtl CONFIG QUIET)
    if(NOT TARGET xtl)
      add_library(xtl INTERFACE IMPORTED)
    endif()
  endif()
  unset(_moela_xsimd_libs)
endif()
