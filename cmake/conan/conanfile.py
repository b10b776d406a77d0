"""Conan 2 recipe for moela, a header-only C++20 library.

From a checkout:  conan create cmake/conan --build=missing -s compiler.cppstd=20
Consumers:        self.requires("moela/0.1.0"), then find_package(moela CONFIG REQUIRED) and
                  target_link_libraries(app PRIVATE moela::moela) with CMakeDeps.
"""
import os
import re

from conan import ConanFile
from conan.tools.build import check_min_cppstd
from conan.tools.files import copy, load
from conan.tools.layout import basic_layout

required_conan_version = ">=2.0"


class MoelaConan(ConanFile):
    name = "moela"
    license = "MIT"
    description = "Header-only C++20 MoE + Multi-head Latent Attention inference library (CPU via xsimd + Eigen, optional CUDA)"
    topics = ("inference", "llm", "moe", "mla", "fp8", "header-only")
    package_type = "header-library"
    settings = "os", "arch", "compiler", "build_type"
    no_copy_source = True

    # The recipe lives in cmake/conan/ of the source tree it packages.
    def _root(self):
        return os.path.join(self.recipe_folder, "..", "..")

    def set_version(self):
        if self.version:
            return
        text = load(self, os.path.join(self._root(), "include", "moela", "core", "config.hpp"))
        parts = [re.search(r"#define MOELA_VERSION_%s (\d+)" % p, text).group(1) for p in ("MAJOR", "MINOR", "PATCH")]
        self.version = ".".join(parts)

    def export_sources(self):
        root = self._root()
        copy(self, "*.hpp", os.path.join(root, "include"), os.path.join(self.export_sources_folder, "include"))
        copy(self, "MoelaArch.cmake", os.path.join(root, "cmake"), os.path.join(self.export_sources_folder, "cmake"))
        copy(self, "LICENSE*", root, self.export_sources_folder)

    def layout(self):
        basic_layout(self, src_folder=".")

    def requirements(self):
        # Header-only: every dependency is part of the interface consumers compile against.
        self.requires("eigen/[>=3.4 <4]", transitive_headers=True)
        self.requires("xsimd/[>=8.1 <15]", transitive_headers=True)
        self.requires("nlohmann_json/[>=3.10 <4]", transitive_headers=True)

    def package_id(self):
        self.info.clear()

    def validate(self):
        if self.settings.compiler.get_safe("cppstd"):
            check_min_cppstd(self, 20)

    def package(self):
        copy(self, "*.hpp", os.path.join(self.source_folder, "include"), os.path.join(self.package_folder, "include"))
        copy(self, "MoelaArch.cmake", os.path.join(self.source_folder, "cmake"),
             os.path.join(self.package_folder, "lib", "cmake", "moela"))
        copy(self, "LICENSE*", self.source_folder, os.path.join(self.package_folder, "licenses"))

    def package_info(self):
        # The same names as moela's own CMake package, so CMake code works with either.
        self.cpp_info.set_property("cmake_file_name", "moela")
        self.cpp_info.set_property("cmake_target_name", "moela::moela")
        self.cpp_info.set_property("pkg_config_name", "moela")
        # moela_target_arch(<target> native|x86-64-v3|...), as with the CMake package.
        self.cpp_info.set_property("cmake_build_modules", [os.path.join("lib", "cmake", "moela", "MoelaArch.cmake")])
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        if self.settings.os in ("Linux", "FreeBSD"):
            self.cpp_info.system_libs = ["pthread"]
