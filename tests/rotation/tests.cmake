# SPDX-License-Identifier: Apache-2.0
lv_add_pytest(rotation ${CMAKE_CURRENT_LIST_DIR}/test_rotation.py LABELS rotation TIMEOUT 900)
set_property(TEST rotation APPEND PROPERTY ENVIRONMENT
             "LV_RECEIVER=$<TARGET_FILE:attesto-local-vault-receiver>")
