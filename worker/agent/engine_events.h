#ifndef ROUNDHOUSE_WORKER_AGENT_ENGINE_EVENTS_H_
#define ROUNDHOUSE_WORKER_AGENT_ENGINE_EVENTS_H_

// Parsing of the engine's stdout protocol (one JSON object per line, see
// docs/architecture.md "Engine command line") and the job progress derived
// from it, in the shape the coordinator wants (roundhouse.v1.Progress).

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"
#include "roundhouse/v1/roundhouse.pb.h"

namespace roundhouse::agent {

// One decoded engine event. Only the fields of `kind` are meaningful.
struct EngineEvent {
  enum class Kind { kStage, kPlan, kBlock, kDone, kError, kOther };
  Kind kind = Kind::kOther;
  std::string stage;              // kStage
  int32_t blocks_total = 0;       // kPlan, kBlock
  int32_t resumed_blocks = 0;     // kPlan
  int32_t block_index = -1;       // kBlock
  double loss_before = 0;         // kBlock
  double loss_after = 0;          // kBlock
  double seconds = 0;             // kBlock: tuning time of the block
  std::string artifact_dir;       // kDone
  nlohmann::json manifest;        // kDone: the manifest object
  std::string error_class;        // kError: "invalid_spec", ...
  std::string error_message;      // kError
  int64_t peak_memory_bytes = 0;  // kError
};

// Decodes one stdout line. Unknown `event` values give Kind::kOther (newer
// engines may add events); a line that is not a JSON object with a string
// `event`, or a known event with a field of the wrong type, is
// INVALID_ARGUMENT naming the field.
absl::StatusOr<EngineEvent> ParseEngineEvent(absl::string_view line);

// Accumulates events of one engine run into a Progress and remembers the
// terminal `done` / `error` events. Thread-safe: the reader thread applies
// events while the heartbeat thread takes snapshots.
class ProgressTracker {
 public:
  ProgressTracker();

  void Apply(const EngineEvent& event);

  // stage, blocks_done (resumed + tuned, from block indices), blocks_total,
  // one BlockProgress per block tuned in this run, fraction =
  // blocks_done / blocks_total (1 once "done"), eta_seconds = mean tuning
  // time of this run's blocks x blocks remaining (-1 before the first block
  // and after tuning, 0 when done).
  roundhouse::v1::Progress Snapshot() const;

  bool has_done() const;
  EngineEvent done_event() const;  // valid when has_done()
  bool has_error() const;
  EngineEvent error_event() const;  // the last error event, when has_error()

 private:
  mutable absl::Mutex mu_;
  roundhouse::v1::Progress progress_ ABSL_GUARDED_BY(mu_);
  double tuned_seconds_ ABSL_GUARDED_BY(mu_) = 0;
  int tuned_blocks_ ABSL_GUARDED_BY(mu_) = 0;
  bool has_done_ ABSL_GUARDED_BY(mu_) = false;
  EngineEvent done_ ABSL_GUARDED_BY(mu_);
  bool has_error_ ABSL_GUARDED_BY(mu_) = false;
  EngineEvent error_ ABSL_GUARDED_BY(mu_);
};

// Builds the coordinator's ArtifactManifest for an artifact directory.
// `manifest_json` is the artifact's manifest.json as written (read from
// `<artifact_dir>/manifest.json`; when unreadable, `event_manifest` dumped).
// Files come from the manifest's "files" (an array of {path, size_bytes or
// size, sha256}, or an object path -> {size_bytes or size, sha256}); when the
// manifest lists none, every regular file of the directory is hashed.
// Errors name the directory or the malformed manifest field.
absl::StatusOr<roundhouse::v1::ArtifactManifest> BuildArtifactManifest(
    const std::string& artifact_dir, const nlohmann::json& event_manifest);

}  // namespace roundhouse::agent

#endif  // ROUNDHOUSE_WORKER_AGENT_ENGINE_EVENTS_H_
