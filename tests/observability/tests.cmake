# SPDX-License-Identifier: Apache-2.0
lv_add_pytest(observability ${CMAKE_CURRENT_LIST_DIR} LABELS observability TIMEOUT 900)
set_property(TEST observability APPEND PROPERTY ENVIRONMENT
             "LV_RECEIVER=$<TARGET_FILE:attesto-local-vault-receiver>")
lv_add_cmocka(metrics_unit ${CMAKE_CURRENT_LIST_DIR}/test_metrics_unit.c LABELS observability)
