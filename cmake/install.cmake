# `cmake --install`: the public headers (include/ckptconv/*.h), libckptconv.so with its version
# links, the `ckptconv` command, a CMake package (find_package(ckptconv) -> ckptconv::ckptconv)
# and a pkg-config file (ckptconv.pc). Included from the top-level CMakeLists.txt.
#
# The package is libckptconv.so alone: it links the internal static library `ckpt` PRIVATE and
# hides its symbols (-Wl,--exclude-libs,ALL), so nothing internal is exported or installed —
# consumers need only the shared library and the public header, which includes nothing but the
# standard library. Both the CMake package and ckptconv.pc are relocatable: they find the prefix
# from where they are installed, so `cmake --install build --prefix DIR` works for any DIR.
include(CMakePackageConfigHelpers)

set(CKPT_INSTALL_CMAKEDIR "${CMAKE_INSTALL_LIBDIR}/cmake/ckptconv" CACHE STRING
    "Where the CMake package files (ckptconvConfig.cmake ...) are installed, relative to the prefix")
set(CKPT_INSTALL_PKGCONFIGDIR "${CMAKE_INSTALL_LIBDIR}/pkgconfig" CACHE STRING
    "Where ckptconv.pc is installed, relative to the prefix")

# What a consumer of the public header needs from its compiler: std::filesystem, string_view,
# optional.
target_compile_features(ckptconv_lib INTERFACE cxx_std_17)

# The installed `ckptconv` links the internals statically and needs no library of this project;
# should it link libckptconv.so, it finds it next to itself: <prefix>/bin -> <prefix>/lib.
# (In the build tree it finds it in the build directory; the build RUNPATH also gives the install
# step an entry to rewrite.)
file(RELATIVE_PATH _ckpt_bin_to_lib "${CMAKE_INSTALL_FULL_BINDIR}" "${CMAKE_INSTALL_FULL_LIBDIR}")
set_target_properties(ckptconv PROPERTIES
  BUILD_RPATH "$<TARGET_FILE_DIR:ckptconv_lib>"
  INSTALL_RPATH "$ORIGIN/${_ckpt_bin_to_lib}")

install(TARGETS ckptconv_lib EXPORT ckptconvTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Runtime
          NAMELINK_COMPONENT Development
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT Development
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT Runtime)
install(TARGETS ckptconv RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR} COMPONENT Runtime)

# Only the public headers: the internal ones (formats/, pipeline/, transforms/) stay private.
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/ckptconv
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} COMPONENT Development
  FILES_MATCHING PATTERN "*.h")

install(EXPORT ckptconvTargets NAMESPACE ckptconv:: FILE ckptconvTargets.cmake
  DESTINATION ${CKPT_INSTALL_CMAKEDIR} COMPONENT Development)
configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/ckptconvConfig.cmake.in
  ${PROJECT_BINARY_DIR}/ckptconvConfig.cmake
  INSTALL_DESTINATION ${CKPT_INSTALL_CMAKEDIR})
# 0.x: the soname is libckptconv.so.0 (SOVERSION is the major version), and a request for 0.1
# accepts any 0.y.z >= 0.1, like the soname does.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/ckptconvConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/ckptconvConfig.cmake ${PROJECT_BINARY_DIR}/ckptconvConfigVersion.cmake
  DESTINATION ${CKPT_INSTALL_CMAKEDIR} COMPONENT Development)

# ckptconv.pc. pkg-config sets ${pcfiledir} to the directory the file is found in, so the prefix
# is written relative to it (absolute install directories are written as they are).
function(_ckpt_pc_dir out dir)
  if(IS_ABSOLUTE "${dir}")
    set(${out} "${dir}" PARENT_SCOPE)
  else()
    set(${out} "\${prefix}/${dir}" PARENT_SCOPE)
  endif()
endfunction()
if(IS_ABSOLUTE "${CKPT_INSTALL_PKGCONFIGDIR}")
  set(CKPT_PC_PREFIX "${CMAKE_INSTALL_PREFIX}")
else()
  file(RELATIVE_PATH _ckpt_pc_up "/prefix/${CKPT_INSTALL_PKGCONFIGDIR}" "/prefix")
  string(REGEX REPLACE "/$" "" _ckpt_pc_up "${_ckpt_pc_up}")
  set(CKPT_PC_PREFIX "\${pcfiledir}/${_ckpt_pc_up}")
endif()
_ckpt_pc_dir(CKPT_PC_LIBDIR "${CMAKE_INSTALL_LIBDIR}")
_ckpt_pc_dir(CKPT_PC_INCLUDEDIR "${CMAKE_INSTALL_INCLUDEDIR}")
configure_file(${CMAKE_CURRENT_LIST_DIR}/ckptconv.pc.in ${PROJECT_BINARY_DIR}/ckptconv.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/ckptconv.pc DESTINATION ${CKPT_INSTALL_PKGCONFIGDIR} COMPONENT Development)
