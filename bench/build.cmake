# SPDX-License-Identifier: Apache-2.0
# Ceiling programs for the benchmarks (not installed).
add_executable(https_post_ceiling ${CMAKE_SOURCE_DIR}/bench/https_post_ceiling.c)
target_link_libraries(https_post_ceiling PRIVATE PkgConfig::CURL PkgConfig::CJSON)
