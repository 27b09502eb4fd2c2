# SPDX-License-Identifier: Apache-2.0
# Benchmark helpers (not installed): ceilings measured in the same run as
# the figures they bound. bench/enqueue runs lv-bench-sign.
add_executable(lv-bench-sign ${CMAKE_CURRENT_LIST_DIR}/token_sign_rate.c)
target_link_libraries(lv-bench-sign PRIVATE PkgConfig::P11KIT)
