# SPDX-License-Identifier: Apache-2.0
# The fault-injecting PKCS#11 shim (libp11shim.so, a real module that wraps
# SoftHSM) and its own tests. Other areas' tests find it through $LV_SHIM.
find_package(Threads REQUIRED)
add_library(p11shim MODULE ${CMAKE_CURRENT_LIST_DIR}/p11shim.c)
target_link_libraries(p11shim PRIVATE PkgConfig::P11KIT Threads::Threads ${CMAKE_DL_LIBS})
set(LV_SHIM_ENV "LV_SHIM=$<TARGET_FILE:p11shim>")

lv_add_cmocka(shim ${CMAKE_CURRENT_LIST_DIR}/test_shim.c LABELS reliability)
target_link_libraries(shim PRIVATE ${CMAKE_DL_LIBS} Threads::Threads)
add_dependencies(shim p11shim)
set_property(TEST shim APPEND PROPERTY ENVIRONMENT "${LV_SHIM_ENV}")
