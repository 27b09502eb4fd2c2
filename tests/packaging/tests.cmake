# SPDX-License-Identifier: Apache-2.0
# The .deb and .rpm built by scripts/package from a fresh clone, and the man
# page. These test packaging, not memory safety: they run in the plain build
# only (not in the ASan+UBSan build, which would build the same packages a
# second time).
if(NOT LV_SANITIZE)
  # Builds dist/ once into the build directory; the tests below read it.
  lv_add_pytest(packaging_build ${CMAKE_CURRENT_LIST_DIR}/test_build.py LABELS packaging TIMEOUT 900)
  set_tests_properties(packaging_build PROPERTIES FIXTURES_SETUP lv_packages)
  foreach(t deb rpm)
    lv_add_pytest(packaging_${t} ${CMAKE_CURRENT_LIST_DIR}/test_${t}.py LABELS packaging TIMEOUT 300)
    set_tests_properties(packaging_${t} PROPERTIES FIXTURES_REQUIRED lv_packages)
  endforeach()
  # Installs and purges the .deb on this machine, and leaves it as it found
  # it: root only (exit 77, reported as skipped, otherwise), never in
  # parallel with another test.
  lv_add_pytest(packaging_deb_install ${CMAKE_CURRENT_LIST_DIR}/test_deb_install.py
                LABELS packaging TIMEOUT 300)
  set_tests_properties(packaging_deb_install PROPERTIES FIXTURES_REQUIRED lv_packages
                       RUN_SERIAL TRUE SKIP_RETURN_CODE 77)
  lv_add_pytest(packaging_manpage ${CMAKE_CURRENT_LIST_DIR}/test_manpage.py LABELS packaging docs)
endif()
