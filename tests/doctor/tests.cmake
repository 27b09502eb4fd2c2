# SPDX-License-Identifier: Apache-2.0
lv_add_pytest(doctor ${CMAKE_CURRENT_LIST_DIR}/test_doctor.py LABELS doctor TIMEOUT 900)
set_property(TEST doctor APPEND PROPERTY ENVIRONMENT
             "LV_RECEIVER=$<TARGET_FILE:attesto-local-vault-receiver>")
