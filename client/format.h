#ifndef ROUNDHOUSE_CLIENT_FORMAT_H_
#define ROUNDHOUSE_CLIENT_FORMAT_H_

// Text rendering of jobs for the `roundhouse` CLI. Pure functions (no I/O),
// so every format is unit tested. Thread-compatible.

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "google/protobuf/message.h"
#include "roundhouse/v1/roundhouse.pb.h"

namespace roundhouse::client {

// "RUNNING" for JOB_STATE_RUNNING (the enum name without its prefix).
std::string StateName(roundhouse::v1::JobState state);
// "OUT_OF_MEMORY" for FAILURE_CLASS_OUT_OF_MEMORY.
std::string FailureClassName(roundhouse::v1::FailureClass failure_class);

// Parses a state as the user types it: "running", "RUNNING" or
// "JOB_STATE_RUNNING". INVALID_ARGUMENT names the value and the choices.
absl::StatusOr<roundhouse::v1::JobState> ParseState(const std::string& text);

// Remaining time, rounded up to whole seconds: "?" when unknown (< 0),
// "45s", "3m05s", "2h07m".
std::string FormatEta(double seconds);

// Sizes with binary prefixes: "512 B", "1.5 KiB", "3.2 GiB".
std::string FormatBytes(int64_t bytes);

// "2026-11-28 20:25:04" (UTC), "-" for 0.
std::string FormatTimestamp(double unix_seconds);

// One plain progress line, as printed by `watch` when stdout is not a
// terminal, e.g.
//   job j-1 state=RUNNING stage=tuning block 3/5 loss 0.0123->0.0081 eta 12s
// Parts without data are left out (no block counts before the plan, no
// loss before the first block, no eta unless RUNNING with eta_seconds > 0).
std::string FormatProgressLine(const roundhouse::v1::Job& job);

// The single-line terminal progress bar redrawn with '\r', e.g.
//   j-1 [#########...........]  45% tuning 3/5 loss 0.0123->0.0081 ETA 12s
// `bar_width` is the number of cells between the brackets.
std::string FormatProgressBar(const roundhouse::v1::Job& job, int bar_width);

// What `watch` prints when the job is terminal: the artifact directory on
// success, else the state with the classified error, e.g.
//   "job j-1 SUCCEEDED: artifact /srv/artifacts/j-1"
//   "job j-1 FAILED: OUT_OF_MEMORY: CUDA out of memory (peak 3.0 GiB)"
std::string FormatOutcome(const roundhouse::v1::Job& job);

// The `list` table: ID, STATE, PRI, ATTEMPT, STAGE, CREATED, MODEL, with
// columns padded to the widest cell.
std::string FormatJobTable(const std::vector<roundhouse::v1::Job>& jobs);

// The artifact's files for `get` and the end of `watch`: the directory, one
// line per file (path, size; the deliverable files first: README.md,
// test_results.json, quantization_config.json, .gitattributes, then the
// rest in the manifest's order), the total, and the upload command. Empty
// when the job has no artifact.
//   artifact:  /srv/artifacts/j-1 (9 files, 1.2 MiB)
//     README.md                                 4.1 KiB
//     ...
//   upload:    roundhouse upload --job j-1 --repo ORG/NAME
std::string FormatArtifactFiles(const roundhouse::v1::Job& job);

// The human `get` summary (a few lines, then FormatArtifactFiles) and the
// full `inspect` report: spec JSON, attempts, progress, per-block losses,
// artifact files with sizes and sha256, error.
std::string FormatJobSummary(const roundhouse::v1::Job& job);
std::string FormatInspect(const roundhouse::v1::Job& job);

// Protobuf JSON with the proto field names; `pretty` adds newlines and
// indentation. Never fails for our messages; an error message otherwise.
std::string ToJson(const google::protobuf::Message& message, bool pretty);

}  // namespace roundhouse::client

#endif  // ROUNDHOUSE_CLIENT_FORMAT_H_
