#ifndef ROUNDHOUSE_SERVER_GRPC_STATUS_H_
#define ROUNDHOUSE_SERVER_GRPC_STATUS_H_

// The one conversion from absl::Status to grpc::Status, at the service
// boundary. Messages are capped at kMaxGrpcStatusMessageBytes (longer ones
// end in "...").

#include <cstddef>

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace roundhouse::server {

inline constexpr size_t kMaxGrpcStatusMessageBytes = 1024;

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace roundhouse::server

#endif  // ROUNDHOUSE_SERVER_GRPC_STATUS_H_
