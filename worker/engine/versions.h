#ifndef ROUNDHOUSE_WORKER_ENGINE_VERSIONS_H_
#define ROUNDHOUSE_WORKER_ENGINE_VERSIONS_H_

#include <string>

#include "nlohmann/json.hpp"

namespace roundhouse::engine {

// Versions that determine the engine's output bytes; recorded in every job
// manifest and checkpoint fingerprint. Thread-safe.
nlohmann::json EngineVersions();

// "cuda" when built with CUDA and a device is visible, else "cpu".
std::string DefaultDevice();

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_VERSIONS_H_
