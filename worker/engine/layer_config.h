#ifndef ROUNDHOUSE_WORKER_ENGINE_LAYER_CONFIG_H_
#define ROUNDHOUSE_WORKER_ENGINE_LAYER_CONFIG_H_

// Per-layer quantization settings (autoround-spec §3.3, §3.4): a global
// scheme, user rules (exact layer names or regular expressions) and an
// ignore list are resolved into one decision per Linear.
//
// Thread-compatible, no state.

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "worker/engine/quantizer.h"

namespace roundhouse::engine {

// One user rule. Unset fields inherit the global scheme. bits = 16 means
// "do not quantize".
struct LayerRule {
  std::string pattern;
  std::optional<int> bits;
  std::optional<int> group_size;
  std::optional<bool> sym;
};

struct ResolvedLayer {
  std::string name;
  QuantParams params;  // the effective settings (bits 16 when skipped)
  bool quantize = false;
  // Why the layer is not quantized ("" when it is): "bits=16",
  // "shape not divisible by 32", "ignored", "group size does not divide in".
  std::string reason;
};

// Resolution, per layer in input order:
// 1. ignore_layers: an entry equal to the layer name or, failing any exact
//    match anywhere, a regex search hit -> not quantized ("ignored").
// 2. rules: a rule whose pattern equals the layer name wins; otherwise the
//    FIRST rule (in the given order) whose pattern (std::regex ECMAScript,
//    searched anywhere in the name like Python re.search) matches supplies
//    the overrides. A pattern equal to some layer's name is an exact rule
//    and applies to that layer only.
// 3. bits 16 -> not quantized ("bits=16").
// 4. out % 32 != 0 or in % 32 != 0 -> kept 16-bit ("shape not divisible by
//    32"), the reference's rule for int weight-only schemes.
// 5. group_size > 0 with in > group_size and in % group_size != 0: when
//    the group size came from a rule that matched this layer ->
//    InvalidArgument naming the layer; when it is the global one the layer
//    is kept 16-bit ("group size does not divide in").
// Errors (InvalidArgument): a pattern that is not a valid regex or that
// matches no layer (names the pattern); global or rule bits not in
// {2,3,4,8,16} or group_size not in {32,64,128,-1} (names the field and
// the rule pattern); a layer shape that is not 2-D positive (names it).
absl::StatusOr<std::vector<ResolvedLayer>> ResolveLayerConfig(
    const std::vector<std::pair<std::string, std::vector<int64_t>>>&
        linear_shapes,  // name -> [out, in]
    const QuantParams& global, const std::vector<LayerRule>& rules,
    const std::vector<std::string>& ignore_layers);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_LAYER_CONFIG_H_
