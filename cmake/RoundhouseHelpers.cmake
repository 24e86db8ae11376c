# roundhouse_unit_tests(NAME <target> SOURCES <files...> LIBS <libs...> [LABELS <labels...>])
# One GoogleTest executable per layer; each TEST is registered with CTest.
include(GoogleTest)
function(roundhouse_unit_tests)
  cmake_parse_arguments(ARG "" "NAME" "SOURCES;LIBS;LABELS" ${ARGN})
  if(NOT ROUNDHOUSE_BUILD_TESTS OR NOT ARG_SOURCES)
    return()
  endif()
  add_executable(${ARG_NAME} ${ARG_SOURCES})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_LIBS} GTest::gmock GTest::gtest GTest::gtest_main)
  target_compile_definitions(${ARG_NAME} PRIVATE
    ROUNDHOUSE_SHARED_DIR="${ROUNDHOUSE_SHARED_DIR}"
    ROUNDHOUSE_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
  # gtest_discover_tests forwards PROPERTIES as key/value pairs, so a label
  # list must keep its separators escaped.
  set(labels unit ${ARG_LABELS})
  string(REPLACE ";" "\\;" labels "${labels}")
  gtest_discover_tests(${ARG_NAME}
    PROPERTIES LABELS "${labels}"
    DISCOVERY_TIMEOUT 60)
endfunction()

# Glob the library sources of a folder: every .cc except *_test.cc and *_main.cc.
function(roundhouse_glob_sources out_var dir)
  file(GLOB srcs CONFIGURE_DEPENDS "${dir}/*.cc")
  list(FILTER srcs EXCLUDE REGEX "_test\\.cc$")
  list(FILTER srcs EXCLUDE REGEX "_main\\.cc$")
  set(${out_var} ${srcs} PARENT_SCOPE)
endfunction()

function(roundhouse_glob_tests out_var dir)
  file(GLOB srcs CONFIGURE_DEPENDS "${dir}/*_test.cc")
  set(${out_var} ${srcs} PARENT_SCOPE)
endfunction()
