#ifndef ROUNDHOUSE_CLIENT_SPEC_MERGE_H_
#define ROUNDHOUSE_CLIENT_SPEC_MERGE_H_

// Builds the job spec JSON of `roundhouse submit`: the SPEC.json file's
// object with command-line overrides merged in. The result is sent as
// `SubmitJobRequest.spec_json`, so the coordinator validates every key (and
// rejects unknown ones naming the key); nothing here duplicates that.

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace roundhouse::client {

// Overrides from flags; unset members leave the file's value alone.
struct SpecOverrides {
  std::optional<std::string> model;        // --model     -> model
  std::optional<int> bits;                 // --bits      -> scheme.bits
  std::optional<int> group_size;           // --group-size
  std::optional<bool> sym;                 // --sym / --asym
  std::optional<int> iters;                // --iters
  std::optional<int> nsamples;             // --nsamples
  std::optional<int> seqlen;               // --seqlen
  std::optional<int> batch_size;           // --batch-size
  std::optional<int> seed;                 // --seed
  std::optional<int> priority;             // --priority  -> priority
  std::optional<double> deadline_seconds;  // --deadline-seconds
  // --label k=v (repeatable): merged into `labels`, flags win per key.
  std::vector<std::pair<std::string, std::string>> labels;
  // --format F (repeatable): replaces `export_formats` when non-empty.
  std::vector<std::string> formats;
  // --calibration PATH -> calibration.path (other calibration keys kept).
  std::optional<std::string> calibration_path;
};

// `base` must be a JSON object (or null = {}); errors say which key of the
// file has the wrong type to merge into (e.g. "scheme" is not an object).
absl::StatusOr<nlohmann::json> MergeSpec(const nlohmann::json& base,
                                         const SpecOverrides& overrides);

}  // namespace roundhouse::client

#endif  // ROUNDHOUSE_CLIENT_SPEC_MERGE_H_
