#ifndef ROUNDHOUSE_COMMON_ENV_SWITCH_H_
#define ROUNDHOUSE_COMMON_ENV_SWITCH_H_

// Process-wide on/off switches read from the environment (benchmarks turn
// fast paths off with them, e.g. RH_DISABLE_FUSED_QDQ=1).

#include <cstdlib>
#include <cstring>

namespace roundhouse {

// True iff the variable `name` is set to exactly "1". Thread-safe as long as
// nobody modifies the environment concurrently (getenv).
inline bool EnvSwitchOn(const char* name) {
  const char* v = std::getenv(name);
  return v != nullptr && std::strcmp(v, "1") == 0;
}

}  // namespace roundhouse

#endif  // ROUNDHOUSE_COMMON_ENV_SWITCH_H_
