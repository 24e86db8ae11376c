#ifndef ROUNDHOUSE_COMMON_CLOCK_H_
#define ROUNDHOUSE_COMMON_CLOCK_H_

// An injectable clock, so lease, deadline, aging and retry logic can be unit
// tested in milliseconds with a FakeClock.

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace roundhouse {

// Thread-safe. Implementations must be monotone enough for lease accounting:
// Now() never goes backwards within one process.
class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() const = 0;
  // The process-wide real clock; never null, never deleted.
  static Clock* Real();
};

// A clock that only moves when told to. Thread-safe.
class FakeClock : public Clock {
 public:
  explicit FakeClock(absl::Time start = absl::FromUnixSeconds(1700000000))
      : now_(start) {}
  absl::Time Now() const override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
  }
  void Set(absl::Time t) {
    absl::MutexLock lock(&mu_);
    now_ = t;
  }

 private:
  mutable absl::Mutex mu_;
  absl::Time now_;
};

}  // namespace roundhouse

#endif  // ROUNDHOUSE_COMMON_CLOCK_H_
