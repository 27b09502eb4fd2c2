# SPDX-License-Identifier: Apache-2.0
# The systemd units: systemd-analyze verify and security on the real unit
# files, the sysusers.d and tmpfiles.d files, and the witness service
# activated through its own socket unit's settings.
lv_add_pytest(systemd_units ${CMAKE_CURRENT_LIST_DIR}/test_units.py LABELS systemd TIMEOUT 300)
lv_add_pytest(systemd_witness_socket ${CMAKE_CURRENT_LIST_DIR}/test_witness_socket.py
              LABELS systemd witness TIMEOUT 300)
# strace of the services' real work against their units' SystemCallFilter=.
# The plain build only: the sanitizer runtime makes calls of its own that the
# shipped binary never makes.
if(NOT LV_SANITIZE)
  lv_add_pytest(systemd_syscall_filter ${CMAKE_CURRENT_LIST_DIR}/test_syscall_filter.py
                LABELS systemd TIMEOUT 300)
endif()
