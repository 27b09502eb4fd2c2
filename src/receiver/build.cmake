# SPDX-License-Identifier: Apache-2.0
# The reference receiver: its own main and files, linking the core library
# for envelope verification, hashing and public keys.
find_package(Threads REQUIRED)
add_executable(attesto-local-vault-receiver
               ${CMAKE_CURRENT_LIST_DIR}/receiver_main.c
               ${CMAKE_CURRENT_LIST_DIR}/ledger.c
               ${CMAKE_CURRENT_LIST_DIR}/faults.c)
target_include_directories(attesto-local-vault-receiver PRIVATE ${CMAKE_CURRENT_LIST_DIR})
target_link_libraries(attesto-local-vault-receiver PRIVATE lvcore Threads::Threads)
install(TARGETS attesto-local-vault-receiver RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
