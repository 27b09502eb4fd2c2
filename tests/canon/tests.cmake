# SPDX-License-Identifier: Apache-2.0
lv_add_cmocka(canon_unit ${CMAKE_CURRENT_LIST_DIR}/test_canon.c LABELS canon)
