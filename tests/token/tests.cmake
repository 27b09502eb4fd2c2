# SPDX-License-Identifier: Apache-2.0
# Token layer tests: cmocka on fresh SoftHSM tokens, pytest for the verbs.
lv_add_cmocka(token_core ${CMAKE_CURRENT_LIST_DIR}/test_token_core.c LABELS token)
