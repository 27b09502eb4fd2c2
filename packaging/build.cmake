# SPDX-License-Identifier: Apache-2.0
# Install rules for the copyright file that both packages and a plain install carry.
install(FILES ${CMAKE_CURRENT_LIST_DIR}/copyright DESTINATION ${CMAKE_INSTALL_DOCDIR})
