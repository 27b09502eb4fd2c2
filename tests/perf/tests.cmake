# SPDX-License-Identifier: Apache-2.0
# Performance area: behaviour the benchmarks rely on (no timing assertions;
# figures come from bench/run).
lv_add_pytest(perf_drain_stop ${CMAKE_CURRENT_LIST_DIR}/test_drain_stop.py LABELS perf TIMEOUT 600)
set_property(TEST perf_drain_stop APPEND PROPERTY ENVIRONMENT
             "LV_RECEIVER=$<TARGET_FILE:attesto-local-vault-receiver>")
lv_add_pytest(perf_enqueue_pipeline ${CMAKE_CURRENT_LIST_DIR}/test_enqueue_pipeline.py LABELS perf
              TIMEOUT 600)
# The benchmarks' ceiling programs, run with tiny counts to show they work.
if(TARGET lv-witness-bench)
  lv_add_pytest(perf_ceiling_witness_bench ${CMAKE_CURRENT_LIST_DIR}/test_ceiling_witness_bench.py
                LABELS perf TIMEOUT 300)
  set_property(TEST perf_ceiling_witness_bench APPEND PROPERTY ENVIRONMENT
               "LV_WITNESS_BENCH=$<TARGET_FILE:lv-witness-bench>")
endif()
if(TARGET lv-bench-sign)
  lv_add_pytest(perf_ceiling_sign ${CMAKE_CURRENT_LIST_DIR}/test_ceiling_sign.py LABELS perf
                TIMEOUT 300)
  set_property(TEST perf_ceiling_sign APPEND PROPERTY ENVIRONMENT
               "LV_BENCH_SIGN=$<TARGET_FILE:lv-bench-sign>")
endif()
if(TARGET https_post_ceiling)
  lv_add_pytest(perf_ceiling_post ${CMAKE_CURRENT_LIST_DIR}/test_ceiling_post.py LABELS perf
                TIMEOUT 300)
  set_property(TEST perf_ceiling_post APPEND PROPERTY ENVIRONMENT
               "LV_POST_CEILING=$<TARGET_FILE:https_post_ceiling>"
               "LV_RECEIVER=$<TARGET_FILE:attesto-local-vault-receiver>")
endif()
# Group commit of the witness endpoint (witness_submit_batch).
lv_add_cmocka(perf_witness_batch ${CMAKE_CURRENT_LIST_DIR}/test_witness_batch.c LABELS perf)
# It reaches the token through the fault-injecting shim (tests/shim).
add_dependencies(perf_witness_batch p11shim)
set_property(TEST perf_witness_batch APPEND PROPERTY ENVIRONMENT "LV_SHIM=$<TARGET_FILE:p11shim>")
# Batched enqueue pipelined across its commit groups (spool_enqueue_groups).
lv_add_cmocka(perf_enqueue_groups ${CMAKE_CURRENT_LIST_DIR}/test_enqueue_groups.c LABELS perf)
