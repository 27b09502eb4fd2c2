# SPDX-License-Identifier: Apache-2.0
# Install rules for the systemd units, the sysusers.d and tmpfiles.d files and the environment file.
# Unit directory: relative paths are under the prefix. Debian 12 packages use
# /lib/systemd/system (what dh_installsystemd and systemd.pc expect there).
set(LV_SYSTEMD_UNIT_DIR "lib/systemd/system" CACHE STRING
    "Where systemd units are installed (relative: under CMAKE_INSTALL_PREFIX)")
# Not CMAKE_INSTALL_LIBDIR: systemd reads these from <prefix>/lib on every
# architecture, never from a multiarch directory.
set(LV_SYSUSERS_DIR "lib/sysusers.d" CACHE STRING "Where the sysusers.d file is installed")
set(LV_TMPFILES_DIR "lib/tmpfiles.d" CACHE STRING "Where the tmpfiles.d file is installed")

# The units name /usr/bin and /etc/attesto; a build for another prefix gets
# copies with its own paths, so an installed unit always starts the
# installed binary.
set(LV_UNITS attesto-local-vault.service attesto-local-vault-witness.service
             attesto-local-vault-witness.socket)
foreach(unit ${LV_UNITS})
  file(READ ${CMAKE_CURRENT_LIST_DIR}/${unit} _lv_unit)
  string(REPLACE "/usr/bin/attesto-local-vault" "${CMAKE_INSTALL_FULL_BINDIR}/attesto-local-vault"
                 _lv_unit "${_lv_unit}")
  string(REPLACE "/etc/attesto/" "${CMAKE_INSTALL_FULL_SYSCONFDIR}/attesto/" _lv_unit "${_lv_unit}")
  file(CONFIGURE OUTPUT ${CMAKE_BINARY_DIR}/systemd/${unit} CONTENT "${_lv_unit}" @ONLY)
  install(FILES ${CMAKE_BINARY_DIR}/systemd/${unit} DESTINATION ${LV_SYSTEMD_UNIT_DIR})
endforeach()
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
             ${CMAKE_CURRENT_LIST_DIR}/attesto-local-vault.service
             ${CMAKE_CURRENT_LIST_DIR}/attesto-local-vault-witness.service
             ${CMAKE_CURRENT_LIST_DIR}/attesto-local-vault-witness.socket)

install(FILES ${CMAKE_CURRENT_LIST_DIR}/attesto-local-vault.sysusers
        DESTINATION ${LV_SYSUSERS_DIR} RENAME attesto-local-vault.conf)
install(FILES ${CMAKE_CURRENT_LIST_DIR}/attesto-local-vault.tmpfiles
        DESTINATION ${LV_TMPFILES_DIR} RENAME attesto-local-vault.conf)
# A conffile: every line commented out, so that an upgrade never overrides
# what the operator set (dpkg and rpm keep the operator's edits).
install(FILES ${CMAKE_CURRENT_LIST_DIR}/local-vault.env
        DESTINATION ${CMAKE_INSTALL_FULL_SYSCONFDIR}/attesto)
install(DIRECTORY ${CMAKE_CURRENT_LIST_DIR}/examples/
        DESTINATION ${CMAKE_INSTALL_DOCDIR}/examples FILES_MATCHING PATTERN "*.conf")
