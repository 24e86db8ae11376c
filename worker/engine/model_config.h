#ifndef ROUNDHOUSE_WORKER_ENGINE_MODEL_CONFIG_H_
#define ROUNDHOUSE_WORKER_ENGINE_MODEL_CONFIG_H_

// Parsing a Hugging Face `config.json` and discovering where the decoder
// lives in a checkpoint (tensor-name prefixes), for the families roundhouse
// quantizes: Llama, Qwen2, Qwen3, Qwen3-VL (text tower) and ColQwen3 (text
// tower of the Qwen3-VL backbone plus a projection head).
//
// All functions are thread-compatible (no shared state). Errors are
// absl::InvalidArgumentError naming `config.json` and the key, or the
// tensor, e.g. "config.json: text_config.hidden_size is missing".

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "worker/engine/decoder_block.h"  // BlockLinearSuffixes()
#include "worker/engine/safetensors.h"

namespace roundhouse::engine {

enum class ModelFamily { kLlama, kQwen2, kQwen3, kQwen3VL, kColQwen3 };

// "llama", "qwen2", "qwen3", "qwen3_vl", "colqwen3".
std::string_view ModelFamilyName(ModelFamily family);
// Accepts the names above (the error names the string).
absl::StatusOr<ModelFamily> ParseModelFamily(std::string_view name);

// The language model's hyper-parameters (for VL/Col models: text_config).
struct TextConfig {
  int hidden_size = 0;
  int intermediate_size = 0;
  int num_layers = 0;
  int num_heads = 0;
  int num_kv_heads = 0;
  int head_dim = 0;    // hidden_size / num_heads when absent
  int vocab_size = 0;  // taken from the embed_tokens shape
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool qk_norm = false;         // qwen3, qwen3_vl, colqwen3
  bool attention_bias = false;  // q/k/v bias (qwen2: true)
  bool o_proj_bias = false;     // llama attention_bias=true: o_proj too
  bool mlp_bias = false;
  bool tie_word_embeddings = false;
  std::string hidden_act = "silu";
  std::string torch_dtype;  // "float32", "bfloat16", ... ("" when absent)
  // Multimodal RoPE (qwen3_vl / colqwen3); empty for 1-D RoPE.
  std::vector<int> mrope_section;
  bool mrope_interleaved = false;
  // "default", "llama3", ... ("default" when absent).
  std::string rope_type = "default";
  // The raw rope scaling object (rope_scaling / rope_parameters) or null.
  nlohmann::json rope_scaling;
  int max_position_embeddings = 0;
};

struct ModelLayout {
  ModelFamily family = ModelFamily::kLlama;
  std::string model_type;  // config.json "model_type"
  TextConfig text;
  std::string lm_prefix;     // e.g. "model." or "vlm.model.language_model."
  std::string block_prefix;  // e.g. "model.layers"
  std::string embed_tokens;  // full tensor name
  std::string final_norm;    // full tensor name
  std::optional<std::string> lm_head;  // set when stored in the checkpoint
  // ColQwen3 projection head (embedding_proj_layer / custom_text_proj).
  std::optional<std::string> projection_weight, projection_bias;
  int embed_dim = 0;          // ColQwen3 projection dim, 0 otherwise
  std::string vision_prefix;  // e.g. "vlm.model.visual." ("" when none)

  // The 7 Linear weights of block `block` in the order of
  // BlockLinearSuffixes() (decoder_block.h): self_attn.q_proj,
  // k_proj, v_proj, o_proj, mlp.gate_proj, up_proj, down_proj, as module
  // names without ".weight", e.g. "model.layers.3.self_attn.q_proj".
  std::vector<std::string> BlockLinearNames(int block) const;
  // "<block_prefix>.<i>".
  std::string BlockName(int i) const;
};

// Reads and parses <model_dir>/config.json; the error names the file.
absl::StatusOr<nlohmann::json> ReadConfigJson(const std::string& model_dir);

// Parses the text hyper-parameters of `config` for `family` (no tensor
// checks; vocab_size comes from the config). Exposed for tests.
absl::StatusOr<TextConfig> ParseTextConfig(const nlohmann::json& config,
                                           ModelFamily family);

// Family from config.json's model_type / architectures.
absl::StatusOr<ModelFamily> DetectFamily(const nlohmann::json& config);

// Parses config.json and locates every language-model tensor in the
// checkpoint, deciding prefixes from the tensor names actually present.
// Checks that every block tensor exists with the expected shape (the error
// names the tensor, expected and actual shapes).
absl::StatusOr<ModelLayout> DiscoverLayout(const std::string& model_dir,
                                           const Checkpoint& ckpt);
// Same, from an already parsed config.json object.
absl::StatusOr<ModelLayout> DiscoverLayoutFromConfig(
    const nlohmann::json& config, const Checkpoint& ckpt);

}  // namespace roundhouse::engine

#endif  // ROUNDHOUSE_WORKER_ENGINE_MODEL_CONFIG_H_
