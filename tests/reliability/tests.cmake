# SPDX-License-Identifier: Apache-2.0
# Reliability: disk faults on small tmpfs file systems, token faults through
# the PKCS#11 shim (tests/shim), crash soaks. See docs/reliability.md.
lv_add_pytest(reliability_disk ${CMAKE_CURRENT_LIST_DIR}/test_disk_faults.py LABELS reliability
              TIMEOUT 300)
set_property(TEST reliability_disk APPEND PROPERTY ENVIRONMENT "${LV_SHIM_ENV}")
lv_add_pytest(reliability_token ${CMAKE_CURRENT_LIST_DIR}/test_token_faults.py LABELS reliability
              TIMEOUT 600)
set_property(TEST reliability_token APPEND PROPERTY ENVIRONMENT "${LV_SHIM_ENV}"
             "LV_RECEIVER=$<TARGET_FILE:attesto-local-vault-receiver>")
lv_add_cmocka(reliability_regressions ${CMAKE_CURRENT_LIST_DIR}/test_regressions.c LABELS reliability)
# Crash soaks, short form (tests/reliability/soak.py --long for the long one).
lv_add_pytest(reliability_soak ${CMAKE_CURRENT_LIST_DIR}/test_soak.py LABELS reliability
              TIMEOUT 900)
set_property(TEST reliability_soak APPEND PROPERTY ENVIRONMENT "${LV_SHIM_ENV}"
             "LV_RECEIVER=$<TARGET_FILE:attesto-local-vault-receiver>")
lv_add_pytest(reliability_lease ${CMAKE_CURRENT_LIST_DIR}/test_lease_lost.py LABELS reliability
              TIMEOUT 300)
set_property(TEST reliability_lease APPEND PROPERTY ENVIRONMENT
             "LV_RECEIVER=$<TARGET_FILE:attesto-local-vault-receiver>")
