#include "common/env_switch.h"

#include <stdlib.h>

#include "gtest/gtest.h"

namespace roundhouse {
namespace {

TEST(EnvSwitchTest, OnlyExactlyOneTurnsTheSwitchOn) {
  const char* kName = "RH_TEST_ENV_SWITCH";
  unsetenv(kName);
  EXPECT_FALSE(EnvSwitchOn(kName));
  for (const char* off : {"", "0", "true", "11", " 1"}) {
    setenv(kName, off, 1);
    EXPECT_FALSE(EnvSwitchOn(kName)) << "'" << off << "'";
  }
  setenv(kName, "1", 1);
  EXPECT_TRUE(EnvSwitchOn(kName));
  unsetenv(kName);
}

}  // namespace
}  // namespace roundhouse
