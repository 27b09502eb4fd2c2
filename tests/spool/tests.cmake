# SPDX-License-Identifier: Apache-2.0
# Spool and envelope tests: cmocka on fresh SoftHSM tokens and real SQLite
# files, pytest for the verbs (with spool-tool driving leases).
lv_add_cmocka(envelope_ack ${CMAKE_CURRENT_LIST_DIR}/test_envelope_ack.c LABELS spool)
lv_add_cmocka(spool_core ${CMAKE_CURRENT_LIST_DIR}/test_spool_core.c LABELS spool)
add_executable(spool-tool ${CMAKE_CURRENT_LIST_DIR}/spool_tool.c)
target_link_libraries(spool-tool PRIVATE lvcore)
lv_add_pytest(spool_cli ${CMAKE_CURRENT_LIST_DIR}/test_spool_cli.py LABELS spool TIMEOUT 900)
set_property(TEST spool_cli APPEND PROPERTY ENVIRONMENT "LV_SPOOL_TOOL=$<TARGET_FILE:spool-tool>")
lv_add_pytest(spool_quota ${CMAKE_CURRENT_LIST_DIR}/test_spool_quota.py LABELS spool)
set_property(TEST spool_quota APPEND PROPERTY ENVIRONMENT "LV_SPOOL_TOOL=$<TARGET_FILE:spool-tool>")
