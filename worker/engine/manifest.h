#ifndef ROUNDHOUSE_WORKER_ENGINE_MANIFEST_H_
#define ROUNDHOUSE_WORKER_ENGINE_MANIFEST_H_

// manifest.json of an artifact directory: what is in it (every file with
// size and sha256) and how it was made (spec, versions, seed, input hashes,
// per-block losses, layer decisions, evaluation). The manifest is the last
// file written into the staging directory; an artifact without a valid
// manifest is incomplete.
//
// Format (keys in this order of importance; the "files" entries match what
// the agent's BuildArtifactManifest reads):
//   {"manifest_version": 1,
//    "files": [{"path": "config.json", "size_bytes": N, "sha256": "..."}],
//    ...caller-supplied keys ("spec", "versions", "seed", "inputs",
//    "blocks", "layers", "formats", "evaluation")}
//
// Thread-compatible.

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace roundhouse::engine {

inline constexpr char kManifestFile[] = "manifest.json";

// Hashes every regular file below `dir` (except manifest.json), adds
// "manifest_version" and "files" to `body` and writes <dir>/manifest.json
// atomically. Returns the manifest written.
absl::StatusOr<nlohmann::json> WriteManifest(const std::string& dir,
                                             nlohmann::json body);

// Reads <dir>/manifest.json and checks that every listed file exists with
// the listed size (and, with verify_hashes, the listed sha256) and that no
// file is missing from the list. NotFound when there is no manifest;
// DataLoss naming the file on any mismatch.
absl::StatusOr<nlohmann::json> ReadValidManifest(const std::string& dir,
                                                 bool verify_hashes);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_MANIFEST_H_
