# SPDX-License-Identifier: Apache-2.0
# Token layer tests: cmocka on fresh SoftHSM tokens, pytest for the verbs.
lv_add_cmocka(token_core ${CMAKE_CURRENT_LIST_DIR}/test_token_core.c LABELS token)
lv_add_cmocka(token_vectors ${CMAKE_CURRENT_LIST_DIR}/test_token_vectors.c LABELS token)

# Helpers for the system tests: a signer that goes through token_sign, and a
# PKCS#11 shim that adds PIN flags SoftHSM never reports.
add_executable(lv-test-sign ${CMAKE_CURRENT_LIST_DIR}/lv_test_sign.c)
target_link_libraries(lv-test-sign PRIVATE lvcore)
add_library(lv-pin-shim MODULE ${CMAKE_CURRENT_LIST_DIR}/pin_shim.c)
target_link_libraries(lv-pin-shim PRIVATE PkgConfig::P11KIT ${CMAKE_DL_LIBS})
set_target_properties(lv-pin-shim PROPERTIES PREFIX "")

lv_add_pytest(token_cli ${CMAKE_CURRENT_LIST_DIR}/test_token_cli.py LABELS token)
set_property(TEST token_cli APPEND PROPERTY ENVIRONMENT
             "LV_TEST_SIGN=$<TARGET_FILE:lv-test-sign>" "LV_PIN_SHIM=$<TARGET_FILE:lv-pin-shim>")

# Faults through the reliability shim (tests/shim), which must be built first.
lv_add_cmocka(token_faults ${CMAKE_CURRENT_LIST_DIR}/test_token_faults.c LABELS token)
add_dependencies(token_faults p11shim)
set_property(TEST token_faults APPEND PROPERTY ENVIRONMENT "LV_SHIM=$<TARGET_FILE:p11shim>")

# The capability probe, alone and behind the shim dressed as other tokens.
lv_add_cmocka(token_probe ${CMAKE_CURRENT_LIST_DIR}/test_token_probe.c LABELS token)
add_dependencies(token_probe p11shim)
set_property(TEST token_probe APPEND PROPERTY ENVIRONMENT "LV_SHIM=$<TARGET_FILE:p11shim>")

lv_add_pytest(token_profile ${CMAKE_CURRENT_LIST_DIR}/test_token_profile.py LABELS token)
set_property(TEST token_profile APPEND PROPERTY ENVIRONMENT "LV_SHIM=$<TARGET_FILE:p11shim>")
