# SPDX-License-Identifier: Apache-2.0
lv_add_cmocka(relay_unit ${CMAKE_CURRENT_LIST_DIR}/test_relay_unit.c LABELS relay)
