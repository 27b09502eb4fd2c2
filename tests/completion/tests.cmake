# SPDX-License-Identifier: Apache-2.0
lv_add_pytest(completion ${CMAKE_CURRENT_LIST_DIR}/test_completion.py LABELS completion TIMEOUT 120)
