# moela_target_arch(<target> <arch>)
#
# A header-only library inherits its user's flags: the kernels it instantiates use the
# instruction set the *user's* translation unit is compiled for. This helper sets that
# instruction set on a target: `native` (the build machine's best), an x86-64 level
# (`x86-64-v4` = AVX-512, `x86-64-v3` = AVX2+FMA, `x86-64`), or `none` (compiler default).
# moela::build_info() reports what a binary was built with, and moela::check_cpu() stops a
# binary whose kernels need an ISA the running CPU lacks, with a message naming the feature.
function(moela_target_arch target arch)
  get_target_property(_type ${target} TYPE)
  if(_type STREQUAL "INTERFACE_LIBRARY")
    set(_scope INTERFACE)
  else()
    set(_scope PRIVATE)
  endif()
  if(arch STREQUAL "none" OR arch STREQUAL "")
    return()
  elseif(arch STREQUAL "native")
    target_compile_options(${target} ${_scope} $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
  else()
    target_compile_options(${target} ${_scope} $<$<COMPILE_LANGUAGE:CXX>:-march=${arch}>)
  endif()
endfunction()
