"""A stand-in recipe for a header-only library already installed on the system (a Debian
package), so that `conan create` of moela runs without a package index. CI exports it as
eigen/3.4.0, xsimd/8.1.0 and nlohmann_json/3.11.2 with the matching `--name`/`--version`;
package_info points at the system headers and uses Conan Center's CMake names.
"""
from conan import ConanFile

# name -> (system include dir, CMake file name, CMake target)
_SYSTEM = {
    "eigen": ("/usr/include/eigen3", "Eigen3", "Eigen3::Eigen"),
    "xsimd": ("/usr/include", "xsimd", "xsimd"),
    "nlohmann_json": ("/usr/include", "nlohmann_json", "nlohmann_json::nlohmann_json"),
}


class SystemHeaderLibrary(ConanFile):
    package_type = "header-library"
    description = "System-installed header library (stand-in for the Conan Center recipe)"

    def package_id(self):
        self.info.clear()

    def package_info(self):
        include_dir, file_name, target = _SYSTEM[self.name]
        self.cpp_info.includedirs = [include_dir]
        self.cpp_info.bindirs = []
        self.cpp_info.libdirs = []
        self.cpp_info.set_property("cmake_file_name", file_name)
        self.cpp_info.set_property("cmake_target_name", target)
