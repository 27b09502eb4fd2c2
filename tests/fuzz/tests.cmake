# SPDX-License-Identifier: Apache-2.0
# One libFuzzer target per tests/fuzz/fuzz_*.c, linking lvcore, with its seed
# corpus in tests/fuzz/corpus/<target>/. With LV_FUZZ (clang) each becomes a
# fuzzer in <build>/fuzz/ (scripts/fuzz runs them); with LV_TESTS each also
# gets a replay driver that runs the corpus through the entry point as a test,
# so scripts/test replays every seed under ASan.
file(GLOB LV_FUZZ_SOURCES CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/fuzz_*.c)
if(LV_FUZZ)
  add_custom_target(lv_fuzzers)
endif()
foreach(src ${LV_FUZZ_SOURCES})
  get_filename_component(target ${src} NAME_WE)
  if(LV_FUZZ)
    add_executable(${target} ${src})
    target_link_libraries(${target} PRIVATE lvcore)
    target_link_options(${target} PRIVATE -fsanitize=fuzzer)
    set_target_properties(${target} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)
    add_dependencies(lv_fuzzers ${target})
  endif()
  if(LV_TESTS)
    add_executable(${target}_replay ${src} ${CMAKE_CURRENT_LIST_DIR}/replay.c)
    target_link_libraries(${target}_replay PRIVATE lvcore)
    add_test(NAME ${target}_corpus
             COMMAND ${target}_replay ${CMAKE_CURRENT_LIST_DIR}/corpus/${target})
    set_tests_properties(${target}_corpus PROPERTIES ENVIRONMENT "${LV_TEST_ENV}"
                         LABELS "unit;fuzz")
  endif()
endforeach()
