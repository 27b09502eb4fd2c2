# SPDX-License-Identifier: Apache-2.0
# Install rules for the man page and the documentation.
# The receiver's page goes with the receiver (the -tools package).
install(FILES ${CMAKE_CURRENT_LIST_DIR}/attesto-local-vault.1
              ${CMAKE_CURRENT_LIST_DIR}/attesto-local-vault-receiver.1
        DESTINATION ${CMAKE_INSTALL_MANDIR}/man1)
# Every document in docs/ (each area adds its own), and the README.
file(GLOB LV_DOCS CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/*.md)
# The receiver's guide belongs with the receiver (-tools), not the service.
list(FILTER LV_DOCS EXCLUDE REGEX "/receiver\\.md$")
install(FILES ${LV_DOCS} ${CMAKE_SOURCE_DIR}/README.md DESTINATION ${CMAKE_INSTALL_DOCDIR})
install(FILES ${CMAKE_CURRENT_LIST_DIR}/receiver.md
        DESTINATION ${CMAKE_INSTALL_DATAROOTDIR}/doc/attesto-local-vault-tools)
