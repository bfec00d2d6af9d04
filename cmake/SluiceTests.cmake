# sluice_unit_test(<target> SOURCES <files...> LIBS <libs...>) adds a gtest executable to the
# `unit` tier: ctest label "unit", and a dependency of the `unit_tests` target, which is what the
# ASan+UBSan build compiles (scripts/test.sh) instead of the whole tree.
function(sluice_unit_test target)
    cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
    add_executable(${target} ${ARG_SOURCES})
    target_link_libraries(${target} PRIVATE ${ARG_LIBS} GTest::gtest_main)
    gtest_discover_tests(${target} PROPERTIES LABELS unit DISCOVERY_TIMEOUT 60)
    set_property(GLOBAL APPEND PROPERTY SLUICE_UNIT_TEST_TARGETS ${target})
endfunction()
