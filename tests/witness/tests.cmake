# SPDX-License-Identifier: Apache-2.0
# The witness: decision table through the CLI and the endpoint, bad input,
# race, crash and socket activation (system tests); storage and statements
# (cmocka).
lv_add_pytest(witness_table ${CMAKE_CURRENT_LIST_DIR}/test_witness_table.py LABELS witness)
lv_add_pytest(witness_input ${CMAKE_CURRENT_LIST_DIR}/test_witness_input.py LABELS witness)
lv_add_pytest(witness_endpoint ${CMAKE_CURRENT_LIST_DIR}/test_witness_endpoint.py LABELS witness)
lv_add_pytest(witness_race ${CMAKE_CURRENT_LIST_DIR}/test_witness_race.py LABELS witness)
lv_add_pytest(witness_crash ${CMAKE_CURRENT_LIST_DIR}/test_witness_crash.py LABELS witness)
lv_add_pytest(witness_socket ${CMAKE_CURRENT_LIST_DIR}/test_witness_socket.py LABELS witness)
lv_add_cmocka(witness_store ${CMAKE_CURRENT_LIST_DIR}/test_witness_store.c LABELS witness)
lv_add_pytest(witness_docs ${CMAKE_CURRENT_LIST_DIR}/test_witness_docs.py LABELS witness)
lv_add_pytest(witness_verify ${CMAKE_CURRENT_LIST_DIR}/test_witness_verify.py LABELS witness)
lv_add_pytest(witness_hostile ${CMAKE_CURRENT_LIST_DIR}/test_witness_hostile.py LABELS witness)
lv_add_pytest(witness_tenants ${CMAKE_CURRENT_LIST_DIR}/test_witness_tenants.py LABELS witness)
lv_add_cmocka(witness_tenants_parser ${CMAKE_CURRENT_LIST_DIR}/test_witness_tenants.c LABELS witness)
lv_add_pytest(witness_anchor ${CMAKE_CURRENT_LIST_DIR}/test_witness_anchor.py LABELS witness)
