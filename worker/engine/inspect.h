#ifndef ROUNDHOUSE_WORKER_ENGINE_INSPECT_H_
#define ROUNDHOUSE_WORKER_ENGINE_INSPECT_H_

// The "model analysis" step: what a checkpoint consists of, which Linear
// layers of the decoder blocks AutoRound would quantize, and what the
// result would weigh. Reads only headers and config (no tensor data).
// Thread-compatible.

#include <string>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"

namespace roundhouse::engine {

// Returns
// {
//   "model_dir", "family", "model_type",
//   "config": {hidden_size, intermediate_size, num_layers, num_heads,
//              num_kv_heads, head_dim, vocab_size, tie_word_embeddings,
//              torch_dtype, qk_norm, attention_bias, embed_dim},
//   "prefixes": {lm, blocks, vision, embed_tokens, final_norm, lm_head,
//                projection_weight},
//   "components": [{"name": "language_model_blocks"|"embeddings"|
//                   "final_norm"|"vision_tower"|"projection"|"lm_head"|
//                   "other", "params": N, "bytes": B, "share": f}],
//   "total_params": N, "total_bytes": B,
//   "linears": [{"name": "<block>.self_attn.q_proj", "block": i,
//                "shape": [out, in], "quantizable": bool,
//                "reason": "" | why it stays 16-bit}],
//   "quantizable_linears": n, "kept_linears": m,
//   "layer_config": [{"name": "<regex>", "bits": 16}],  // kept layers
//   "estimate": {"bits", "group_size", "bytes_before", "bytes_after",
//                "ratio"}
// }
// Rule (reference AutoRound): a Linear with out % 32 != 0 or in % 32 != 0
// stays 16-bit; group_size must be -1 (per channel) or divide `in`, else the
// Linear stays 16-bit too. bytes_after counts packed weights
// (out*in*bits/8), one fp16 scale per group and packed zero points
// (asymmetric layout, bits per group) for quantized Linears, and 2 bytes per
// element (16-bit) for everything else. Also: bits must be in [2, 8] and
// group_size -1 or > 0 (InvalidArgument otherwise).
absl::StatusOr<nlohmann::json> InspectModel(const std::string& model_dir,
                                            int bits = 4,
                                            int group_size = 128);

// A readable multi-line table of the InspectModel result.
std::string FormatInspectReport(const nlohmann::json& report);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_INSPECT_H_
