# SPDX-License-Identifier: Apache-2.0
# bash completion, where bash-completion looks for it on demand.
install(FILES ${CMAKE_CURRENT_LIST_DIR}/attesto-local-vault.bash
        DESTINATION ${CMAKE_INSTALL_DATADIR}/bash-completion/completions
        RENAME attesto-local-vault)
