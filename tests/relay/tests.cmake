# SPDX-License-Identifier: Apache-2.0
lv_add_cmocka(relay_unit ${CMAKE_CURRENT_LIST_DIR}/test_relay_unit.c LABELS relay)
lv_add_pytest(relay_receiver ${CMAKE_CURRENT_LIST_DIR}/test_receiver.py LABELS relay TIMEOUT 900)
lv_add_pytest(relay_faults ${CMAKE_CURRENT_LIST_DIR}/test_faults.py LABELS relay TIMEOUT 900)
lv_add_pytest(relay_drain ${CMAKE_CURRENT_LIST_DIR}/test_drain.py LABELS relay TIMEOUT 900)
lv_add_pytest(relay_loop ${CMAKE_CURRENT_LIST_DIR}/test_drain_loop.py LABELS relay TIMEOUT 900)
lv_add_pytest(relay_receipts ${CMAKE_CURRENT_LIST_DIR}/test_receipts.py LABELS relay TIMEOUT 600)
lv_add_pytest(relay_bundle ${CMAKE_CURRENT_LIST_DIR}/test_bundle.py LABELS relay TIMEOUT 600)
lv_add_pytest(relay_protocol_example ${CMAKE_CURRENT_LIST_DIR}/test_protocol_example.py LABELS relay TIMEOUT 300)
lv_add_pytest(relay_retry_now ${CMAKE_CURRENT_LIST_DIR}/test_retry_now.py LABELS relay TIMEOUT 300)
set_property(TEST relay_receiver relay_faults relay_drain relay_loop relay_receipts relay_bundle relay_protocol_example
             relay_retry_now APPEND PROPERTY ENVIRONMENT
             "LV_RECEIVER=$<TARGET_FILE:attesto-local-vault-receiver>")
lv_add_pytest(relay_token ${CMAKE_CURRENT_LIST_DIR}/test_relay_token.py LABELS relay TIMEOUT 600)
set_property(TEST relay_token APPEND PROPERTY ENVIRONMENT
             "LV_RECEIVER=$<TARGET_FILE:attesto-local-vault-receiver>")
