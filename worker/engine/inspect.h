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
// Rule (reference AutoRound, autoround-spec §3.4): a Linear with
// out % 32 != 0 or in % 32 != 0 stays 16-bit. roundhouse also keeps a
// Linear whose `in` is larger than group_size but not a multiple of it
// (group_size -1, or >= in, means one group per output row). The
// layer_config suggestion has one rule per Linear kind ("mlp\\.gate_proj$")
// when every block keeps it, else one anchored rule per layer.
// bytes_after counts, for quantized Linears, the GPTQ-style packed weights
// (out*in*bits/8), one fp16 scale and one packed zero point per group and
// output channel and an fp16 bias; every other tensor as stored.
// Errors: bits outside [2, 8], group_size not -1 or positive
// (InvalidArgument); checkpoint/config errors as in DiscoverLayout.
absl::StatusOr<nlohmann::json> InspectModel(const std::string& model_dir,
                                            int bits = 4,
                                            int group_size = 128);

// A readable multi-line table of the InspectModel result.
std::string FormatInspectReport(const nlohmann::json& report);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_INSPECT_H_
