#include "worker/engine/versions.h"

#include <torch/torch.h>

#include "common/version.h"

namespace roundhouse::engine {

nlohmann::json EngineVersions() {
  nlohmann::json v;
  v["roundhouse"] = ROUNDHOUSE_VERSION;
  v["revision"] = ROUNDHOUSE_GIT_REVISION;
  v["libtorch"] = TORCH_VERSION;
  v["autoround_reference"] = "0.15.0";
  v["cuda"] = torch::cuda::is_available();
  return v;
}

std::string DefaultDevice() {
  return torch::cuda::is_available() ? "cuda" : "cpu";
}

}  // namespace roundhouse::engine
