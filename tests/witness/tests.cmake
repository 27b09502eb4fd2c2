# SPDX-License-Identifier: Apache-2.0
# The witness: decision table through the CLI and the endpoint, bad input,
# race, crash and socket activation (system tests); storage and statements
# (cmocka).
lv_add_pytest(witness_table ${CMAKE_CURRENT_LIST_DIR}/test_witness_table.py LABELS witness)
