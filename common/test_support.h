#ifndef ROUNDHOUSE_COMMON_TEST_SUPPORT_H_
#define ROUNDHOUSE_COMMON_TEST_SUPPORT_H_

// Helpers for tests that use the shared reference material (../shared).
// Header-only so that ROUNDHOUSE_SHARED_DIR, defined by CMake for test
// targets only, is read in the test's own translation unit.

#include <cstdlib>
#include <string>

namespace roundhouse::testing_support {

// The shared folder: env RH_SHARED_DIR, else the CMake definition, else "".
inline std::string SharedDir() {
  if (const char* env = std::getenv("RH_SHARED_DIR"); env && *env) return env;
#ifdef ROUNDHOUSE_SHARED_DIR
  return ROUNDHOUSE_SHARED_DIR;
#else
  return "";
#endif
}

// Under CI=true a missing shared folder is a failure, not a skip.
inline bool InCi() {
  const char* ci = std::getenv("CI");
  return ci != nullptr && std::string(ci) == "true";
}

}  // namespace roundhouse::testing_support

#endif  // ROUNDHOUSE_COMMON_TEST_SUPPORT_H_
