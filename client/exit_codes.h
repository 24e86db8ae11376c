#ifndef ROUNDHOUSE_CLIENT_EXIT_CODES_H_
#define ROUNDHOUSE_CLIENT_EXIT_CODES_H_

// Exit codes of the `roundhouse` CLI. CI gates on them: `roundhouse submit
// --wait` and `roundhouse watch` exit with the job's terminal state.
//
//   0   success (submit/get/list/cancel/inspect done; for --wait and watch:
//       the job SUCCEEDED)
//   1   local error that is neither usage nor RPC (e.g. cannot write stdout)
//   2   usage error (unknown flag, bad value, unreadable or invalid SPEC.json)
//   3   cannot reach the coordinator, or an RPC failed (the message shows
//       the gRPC status and, for INVALID_ARGUMENT, the server's message
//       naming the offending field)
//   10  the job FAILED
//   11  the job was CANCELLED
//   12  the job's deadline passed (DEADLINE_EXCEEDED)
//   13  the artifact failed the quality gate (FAILED_QUALITY)
//
// `roundhouse upload` (client/upload.h) uses the same table: 2 for bad
// flags (--repo, --endpoint), 3 when the coordinator or, with --execute,
// the hub endpoint cannot be reached, 1 when the folder is not a complete
// deliverable, is not on this machine, or huggingface-cli is not on PATH,
// 13 for a FAILED_QUALITY job; with --execute it then exits with the
// uploader's own exit code.

#include "roundhouse/v1/roundhouse.pb.h"

namespace roundhouse::client {

inline constexpr int kExitOk = 0;
inline constexpr int kExitLocalError = 1;
inline constexpr int kExitUsage = 2;
inline constexpr int kExitRpc = 3;
inline constexpr int kExitFailed = 10;
inline constexpr int kExitCancelled = 11;
inline constexpr int kExitDeadline = 12;
inline constexpr int kExitFailedQuality = 13;

// The exit code for a job that reached `state`. Non-terminal states
// (QUEUED, RUNNING, UNSPECIFIED) map to kExitRpc: a watch that ends before a
// terminal state is a broken stream, not a verdict.
int ExitCodeForState(roundhouse::v1::JobState state);

// True for SUCCEEDED, FAILED, CANCELLED, DEADLINE_EXCEEDED, FAILED_QUALITY.
bool IsTerminal(roundhouse::v1::JobState state);

}  // namespace roundhouse::client

#endif  // ROUNDHOUSE_CLIENT_EXIT_CODES_H_
