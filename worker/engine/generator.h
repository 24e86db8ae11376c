#ifndef ROUNDHOUSE_WORKER_ENGINE_GENERATOR_H_
#define ROUNDHOUSE_WORKER_ENGINE_GENERATOR_H_

// Random-initialised Hugging Face checkpoints of every supported family, so
// that no test needs a download. The weights carry no knowledge: they
// exercise config parsing, tensor names and shapes, loading, numerics and
// export, never model quality.
//
// Thread-compatible. Deterministic: the same options produce the same bytes
// (torch's CPU generator seeded with `seed`).

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace roundhouse::engine {

struct GeneratorOptions {
  // "llama", "qwen2", "qwen3", "qwen3_vl" or "colqwen3".
  std::string family = "llama";
  // "tiny": 2 blocks, hidden 64, intermediate 128, heads 4/2, head_dim 16,
  //   vocab 320 (tiny vision tower for qwen3_vl / colqwen3: depth 2,
  //   hidden 32, 16-dim projection head for colqwen3).
  // "colqwen3-4b": the full ColQwen3 / Qwen3-VL-4B shape (36 blocks, hidden
  //   2560, heads 32/8, head_dim 128, intermediate 9728, vocab 151936,
  //   24-block vision tower 1024 wide, 320-dim projection with bias).
  std::string preset = "tiny";
  // -1 = the preset's value.
  int num_layers = -1;
  int hidden_size = -1;
  int intermediate_size = -1;
  int num_heads = -1;
  int num_kv_heads = -1;
  int head_dim = -1;
  // Must cover the generated tokenizer: 259 tokens (256 byte symbols + 3
  // special tokens), 263 for qwen3_vl / colqwen3 (+ <|vision_start|>,
  // <|vision_end|>, <|image_pad|>, <|video_pad|> as ids 259..262).
  int vocab_size = -1;
  // "float32", "bfloat16" or "float16".
  std::string dtype = "float32";
  uint64_t seed = 0;
  // 0 = one model.safetensors; otherwise shards of at most this many bytes.
  uint64_t max_shard_bytes = 0;
  // > 0: also write calib.jsonl with calib_samples lines of calib_seqlen
  // random token ids: {"input_ids":[...],"text":"...","source":"..."}.
  int calib_samples = 0;
  int calib_seqlen = 0;
};

// Writes a complete model directory to `out_dir` (which must not exist, or
// be an empty directory): config.json, generation_config.json,
// tokenizer.json (byte-level BPE: the 256 GPT-2 byte symbols as ids
// 0..255, no merges, then <|endoftext|>, <|im_start|>, <|im_end|>),
// tokenizer_config.json, weights (and calib.jsonl when asked), for
// qwen3_vl / colqwen3 preprocessor_config.json, and for colqwen3 the remote-code
// placeholders (configuration_/modeling_/processing_colqwen3.py).
// Family conventions: llama stores lm_head (untied), qwen2/qwen3/qwen3_vl
// tie and store none, colqwen3 stores none; qwen3_vl writes the
// transformers-5 spelling (rope_parameters, "dtype"), colqwen3 the 4.57
// one (rope_scaling + rope_theta, "dtype"), text models "torch_dtype".
// Everything is written into `<out_dir>.tmp-<pid>`
// and renamed into place, so `out_dir` appears complete or not at all.
// Weights are generated and written tensor by tensor (the writer holds at
// most one shard), so the full-size preset does not need all of its bytes
// in memory when max_shard_bytes is set.
absl::Status GenerateCheckpoint(const GeneratorOptions& options,
                                const std::string& out_dir);

// Number of tokens of the generated text tokenizer (256 + 3); the VL
// families add 4 vision tokens.
inline constexpr int kGeneratedTokenizerSize = 259;

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_GENERATOR_H_
