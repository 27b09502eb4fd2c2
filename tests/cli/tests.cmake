# SPDX-License-Identifier: Apache-2.0
lv_add_pytest(cli_global_options ${CMAKE_CURRENT_LIST_DIR}/test_cli.py LABELS cli)
