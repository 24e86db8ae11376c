#ifndef ROUNDHOUSE_WORKER_ENGINE_PACKING_H_
#define ROUNDHOUSE_WORKER_ENGINE_PACKING_H_

// Byte-level packing of quantized Linears for export (autoround-spec
// §4.2-4.7). The integer codes are taken from QdqResult::codes (the codes
// of the final QDQ, §4.7) rather than recomputed from a rounded weight.
//
// GPTQ style (kAutoRoundGptq, kAutoRoundPlain, kAutoGptq):
//   qweight int32 [in*b/32, out]   codes packed along the input dim
//   qzeros  int32 [ng, out*b/32]   zero points packed along the output dim
//                                  (stored minus 1 for kAutoRoundGptq and
//                                  kAutoGptq)
//   scales  fp16  [ng, out]
//   g_idx   int32 [in] = i / G     kAutoGptq only
//   bias    fp16  [out]            when a bias is given
// Values are packed as a little-endian bit stream: value j of a run of 32
// occupies bits [b*j, b*j+b) of the b words (for b = 2/4/8 the first value
// is in the least significant bits of word 0; 3-bit uses the 32-values-in-
// 3-words layout). Requires in % 32 == 0 and out % 32 == 0 for 3-bit, and
// in*b % 32 == 0, out*b % 32 == 0 otherwise.
//
// AWQ style (kAutoRoundAwq, kAutoAwq): 4-bit only, in % G == 0, out % 8 ==
// 0: qweight int32 [in, out/8], qzeros int32 [in/G, out/8] (as-is), scales
// fp16 [in/G, out], bias fp16; 8 consecutive output channels per word,
// channel j in nibble order[j], order = [0,4,1,5,2,6,3,7].
//
// Stateless; all outputs are CPU tensors.

#include <torch/torch.h>

#include <cstdint>
#include <map>
#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "worker/engine/quantizer.h"

namespace roundhouse::engine {

enum class Packing {
  kAutoRoundGptq,   // "auto_round:auto_gptq", zeros stored minus 1
  kAutoRoundPlain,  // "auto_round", zeros as-is
  kAutoRoundAwq,    // "auto_round:auto_awq"
  kAutoGptq,        // standalone auto_gptq format, + g_idx
  kAutoAwq,         // standalone auto_awq format
};

// The packing_format string written to quantization_config
// ("auto_round:auto_gptq", "auto_round", "auto_round:auto_awq") or, for the
// standalone formats, "auto_gptq" / "auto_awq".
std::string_view PackingName(Packing packing);

// The packing the reference's default format="auto_round" picks (§4.1):
// sym -> kAutoRoundGptq; asym and every quantized layer 4-bit ->
// kAutoRoundAwq; other asym -> kAutoRoundPlain.
Packing DefaultAutoRoundPacking(bool sym, bool all_quantized_layers_4bit);

struct PackedLinear {
  // "qweight", "qzeros", "scales", optionally "g_idx" and "bias" (the
  // caller prefixes "<layer>.").
  std::map<std::string, torch::Tensor> tensors;
};

// InvalidArgument (naming the field / shape) when the result does not fit
// the packing (bits, divisibility, shapes of scale/zero/codes). Reads
// qdq.codes (any integer dtype), scale and zero; never weight_qdq.
absl::StatusOr<PackedLinear> PackLinear(
    Packing packing, const QdqResult& qdq, const QuantParams& params,
    const std::optional<torch::Tensor>& bias);

// The exact inverse: W [out, in] float32 = (u - zero) * scale. For a QDQ
// computed from an fp32 weight, DequantizePacked(PackLinear(r)) equals
// r.weight_qdq bit for bit. InvalidArgument naming the tensor when one is
// missing or has the wrong dtype/shape. Runs on the device of the packed
// tensors (all on one device) and returns the weight there; 3-bit layouts
// unpack through the host.
absl::StatusOr<torch::Tensor> DequantizePacked(
    Packing packing, const std::map<std::string, torch::Tensor>& tensors,
    const QuantParams& params, int64_t out_features, int64_t in_features);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_PACKING_H_
