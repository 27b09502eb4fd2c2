# SPDX-License-Identifier: Apache-2.0
# Benchmark helpers (not installed). Append-only: each area adds its own lines.

# witness: bare sign and durable-commit ceilings, HTTP load (bench/witness)
add_executable(lv-witness-bench ${CMAKE_CURRENT_LIST_DIR}/witness_bench.c)
target_link_libraries(lv-witness-bench PRIVATE lvcore)

# relay: the bare libcurl HTTPS POST ceiling (bench/drain)
add_executable(https_post_ceiling ${CMAKE_CURRENT_LIST_DIR}/https_post_ceiling.c)
target_link_libraries(https_post_ceiling PRIVATE PkgConfig::CURL PkgConfig::CJSON)

# spool: the token's bare C_Sign rate through p11-kit alone, the ceiling
# bench/enqueue reads its rates against
add_executable(lv-bench-sign ${CMAKE_CURRENT_LIST_DIR}/token_sign_rate.c)
target_link_libraries(lv-bench-sign PRIVATE PkgConfig::P11KIT)
