#ifndef ROUNDHOUSE_COMMON_STATUS_MACROS_H_
#define ROUNDHOUSE_COMMON_STATUS_MACROS_H_

// RETURN_IF_ERROR / ASSIGN_OR_RETURN in the absl style used across
// roundhouse. Errors travel as absl::Status inside every layer and are
// converted to gRPC status exactly once, at the service boundary.

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define RH_CONCAT_INNER_(a, b) a##b
#define RH_CONCAT_(a, b) RH_CONCAT_INNER_(a, b)

#define RETURN_IF_ERROR(expr)                        \
  do {                                               \
    ::absl::Status rh_status_ = (expr);              \
    if (!rh_status_.ok()) return rh_status_;         \
  } while (0)

#define ASSIGN_OR_RETURN(lhs, rexpr) \
  RH_ASSIGN_OR_RETURN_IMPL_(RH_CONCAT_(rh_statusor_, __LINE__), lhs, rexpr)

#define RH_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, rexpr) \
  auto statusor = (rexpr);                              \
  if (!statusor.ok()) return statusor.status();         \
  lhs = std::move(statusor).value()

#endif  // ROUNDHOUSE_COMMON_STATUS_MACROS_H_
