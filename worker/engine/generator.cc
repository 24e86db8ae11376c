#include "worker/engine/generator.h"

#include <unistd.h>

#include <random>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/engine/model_config.h"
#include "worker/engine/safetensors.h"
#include <torch/torch.h>

namespace roundhouse::engine {
namespace {

using ojson = nlohmann::ordered_json;

constexpr char kTransformersVersion[] = "4.57.1";

struct VisionShape {
  int depth, hidden, intermediate, heads, patch, num_pos, out_hidden;
  std::vector<int> deepstack;
};

struct Resolved {
  ModelFamily family;
  int layers, hidden, inter, heads, kv_heads, head_dim, vocab;
  int embed_dim;  // colqwen3 only
  VisionShape vision;
  c10::ScalarType dtype;
  std::string dtype_name;
  bool tie;
  // Token ids of the generated tokenizer.
  int endoftext = 256, im_start = 257, im_end = 258;
  int vision_start = -1, vision_end = -1, image_pad = -1, video_pad = -1;
  int tokenizer_size = kGeneratedTokenizerSize;
};

bool IsVL(ModelFamily f) {
  return f == ModelFamily::kQwen3VL || f == ModelFamily::kColQwen3;
}

// The GPT-2 byte-to-unicode table: printable bytes map to themselves, the
// rest to code points 256 + n, so every byte has a visible symbol.
std::vector<int> ByteToUnicode() {
  std::vector<int> out(256, -1);
  for (int b = 0; b < 256; ++b) {
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) ||
        (b >= 0xAE && b <= 0xFF)) {
      out[b] = b;
    }
  }
  int n = 0;
  for (int b = 0; b < 256; ++b) {
    if (out[b] < 0) out[b] = 256 + n++;
  }
  return out;
}

std::string Utf8(int cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xC0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  } else {
    s += static_cast<char>(0xE0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3F));
    s += static_cast<char>(0x80 | (cp & 0x3F));
  }
  return s;
}

std::vector<std::pair<int, std::string>> SpecialTokens(const Resolved& r) {
  std::vector<std::pair<int, std::string>> t = {
      {r.endoftext, "<|endoftext|>"},
      {r.im_start, "<|im_start|>"},
      {r.im_end, "<|im_end|>"}};
  if (IsVL(r.family)) {
    t.emplace_back(r.vision_start, "<|vision_start|>");
    t.emplace_back(r.vision_end, "<|vision_end|>");
    t.emplace_back(r.image_pad, "<|image_pad|>");
    t.emplace_back(r.video_pad, "<|video_pad|>");
  }
  return t;
}

ojson TokenizerJson(const Resolved& r) {
  ojson added = ojson::array();
  for (const auto& [id, content] : SpecialTokens(r)) {
    added.push_back({{"id", id},
                     {"content", content},
                     {"single_word", false},
                     {"lstrip", false},
                     {"rstrip", false},
                     {"normalized", false},
                     {"special", true}});
  }
  ojson vocab = ojson::object();
  std::vector<int> b2u = ByteToUnicode();
  for (int b = 0; b < 256; ++b) vocab[Utf8(b2u[b])] = b;
  const ojson byte_level = {{"type", "ByteLevel"},
                            {"add_prefix_space", false},
                            {"trim_offsets", false},
                            {"use_regex", false}};
  // The Qwen2/Qwen3 pre-tokenizer split, so the generated tokenizer takes
  // the same code path as the real 151k-token one.
  const char* kSplit =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
      "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
  ojson j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = added;
  j["normalizer"] = {{"type", "NFC"}};
  j["pre_tokenizer"] = {
      {"type", "Sequence"},
      {"pretokenizers",
       ojson::array({{{"type", "Split"},
                      {"pattern", {{"Regex", kSplit}}},
                      {"behavior", "Isolated"},
                      {"invert", false}},
                     byte_level})}};
  j["post_processor"] = byte_level;
  j["decoder"] = byte_level;
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", ""},
                {"end_of_word_suffix", ""},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"ignore_merges", false},
                {"vocab", vocab},
                {"merges", ojson::array()}};
  return j;
}

ojson TokenizerConfigJson(const Resolved& r) {
  ojson decoder = ojson::object();
  for (const auto& [id, content] : SpecialTokens(r)) {
    decoder[std::to_string(id)] = {{"content", content},
                                   {"lstrip", false},
                                   {"normalized", false},
                                   {"rstrip", false},
                                   {"single_word", false},
                                   {"special", true}};
  }
  ojson j;
  j["add_bos_token"] = false;
  j["add_prefix_space"] = false;
  j["added_tokens_decoder"] = decoder;
  j["bos_token"] = nullptr;
  j["clean_up_tokenization_spaces"] = false;
  j["eos_token"] = r.family == ModelFamily::kLlama ? "<|endoftext|>"
                                                   : "<|im_end|>";
  j["errors"] = "replace";
  j["model_max_length"] = 4096;
  j["pad_token"] = "<|endoftext|>";
  j["split_special_tokens"] = false;
  j["tokenizer_class"] = r.family == ModelFamily::kLlama
                             ? "PreTrainedTokenizerFast"
                             : "Qwen2Tokenizer";
  if (r.family == ModelFamily::kColQwen3) {
    j["padding_side"] = "left";
    j["processor_class"] = "ColQwen3Processor";
  }
  return j;
}

// mrope_section [24,20,20] belongs to head_dim 128 (64 frequencies); smaller
// heads get the same proportions, rounded down.
std::vector<int> ScaledMropeSection(int head_dim) {
  const int half = head_dim / 2;
  std::vector<int> s = {24 * half / 64, 20 * half / 64, 20 * half / 64};
  return s;
}

ojson TextConfigJson(const Resolved& r, bool rope_parameters) {
  ojson t;
  t["attention_bias"] = false;
  t["attention_dropout"] = 0.0;
  t["bos_token_id"] = r.endoftext;
  t["eos_token_id"] = r.im_end;
  t["head_dim"] = r.head_dim;
  t["hidden_act"] = "silu";
  t["hidden_size"] = r.hidden;
  t["initializer_range"] = 0.02;
  t["intermediate_size"] = r.inter;
  t["max_position_embeddings"] = 262144;
  t["model_type"] = "qwen3_vl_text";
  t["num_attention_heads"] = r.heads;
  t["num_hidden_layers"] = r.layers;
  t["num_key_value_heads"] = r.kv_heads;
  t["rms_norm_eps"] = 1e-6;
  ojson rope = {{"mrope_interleaved", true},
                {"mrope_section", ScaledMropeSection(r.head_dim)},
                {"rope_type", "default"}};
  if (rope_parameters) {
    rope["rope_theta"] = 5000000.0;
    t["rope_parameters"] = rope;
  } else {
    t["rope_scaling"] = rope;
    t["rope_theta"] = 5000000.0;
  }
  t["tie_word_embeddings"] = r.tie;
  t["use_cache"] = true;
  t["vocab_size"] = r.vocab;
  return t;
}

ojson VisionConfigJson(const Resolved& r) {
  const VisionShape& v = r.vision;
  return {{"deepstack_visual_indexes", v.deepstack},
          {"depth", v.depth},
          {"hidden_act", "gelu_pytorch_tanh"},
          {"hidden_size", v.hidden},
          {"in_channels", 3},
          {"initializer_range", 0.02},
          {"intermediate_size", v.intermediate},
          {"model_type", "qwen3_vl"},
          {"num_heads", v.heads},
          {"num_position_embeddings", v.num_pos},
          {"out_hidden_size", v.out_hidden},
          {"patch_size", v.patch},
          {"spatial_merge_size", 2},
          {"temporal_patch_size", 2}};
}

ojson ConfigJson(const Resolved& r) {
  ojson j;
  switch (r.family) {
    case ModelFamily::kLlama:
    case ModelFamily::kQwen2:
    case ModelFamily::kQwen3: {
      const bool llama = r.family == ModelFamily::kLlama;
      const bool qwen2 = r.family == ModelFamily::kQwen2;
      j["architectures"] = {llama   ? "LlamaForCausalLM"
                            : qwen2 ? "Qwen2ForCausalLM"
                                    : "Qwen3ForCausalLM"};
      if (!qwen2) j["attention_bias"] = false;
      j["attention_dropout"] = 0.0;
      j["bos_token_id"] = r.endoftext;
      j["eos_token_id"] = llama ? r.endoftext : r.im_end;
      j["head_dim"] = r.head_dim;
      j["hidden_act"] = "silu";
      j["hidden_size"] = r.hidden;
      j["initializer_range"] = 0.02;
      j["intermediate_size"] = r.inter;
      j["max_position_embeddings"] = llama ? 2048 : 32768;
      if (!llama) j["max_window_layers"] = r.layers;
      if (llama) j["mlp_bias"] = false;
      j["model_type"] = llama ? "llama" : qwen2 ? "qwen2" : "qwen3";
      j["num_attention_heads"] = r.heads;
      j["num_hidden_layers"] = r.layers;
      j["num_key_value_heads"] = r.kv_heads;
      if (llama) j["pretraining_tp"] = 1;
      j["rms_norm_eps"] = llama ? 1e-5 : 1e-6;
      j["rope_scaling"] = nullptr;
      j["rope_theta"] = llama ? 10000.0 : 1000000.0;
      if (!llama) {
        j["sliding_window"] = nullptr;
        j["use_sliding_window"] = false;
      }
      j["tie_word_embeddings"] = r.tie;
      j["torch_dtype"] = r.dtype_name;
      j["transformers_version"] = kTransformersVersion;
      j["use_cache"] = true;
      j["vocab_size"] = r.vocab;
      return j;
    }
    case ModelFamily::kQwen3VL: {
      // transformers 5.x spelling: rope_parameters, "dtype".
      j["architectures"] = {"Qwen3VLForConditionalGeneration"};
      j["dtype"] = r.dtype_name;
      j["image_token_id"] = r.image_pad;
      j["model_type"] = "qwen3_vl";
      j["text_config"] = TextConfigJson(r, /*rope_parameters=*/true);
      j["text_config"]["dtype"] = r.dtype_name;
      j["tie_word_embeddings"] = r.tie;
      j["transformers_version"] = "5.0.0";
      j["video_token_id"] = r.video_pad;
      j["vision_config"] = VisionConfigJson(r);
      j["vision_end_token_id"] = r.vision_end;
      j["vision_start_token_id"] = r.vision_start;
      return j;
    }
    case ModelFamily::kColQwen3: {
      // transformers 4.57 spelling: rope_scaling + rope_theta, flat config.
      j["architectures"] = {"ColQwen3"};
      j["auto_map"] = {
          {"AutoConfig", "configuration_colqwen3.ColQwen3Config"},
          {"AutoModel", "modeling_colqwen3.ColQwen3"},
          {"AutoProcessor", "processing_colqwen3.ColQwen3Processor"}};
      j["dtype"] = r.dtype_name;
      j["embed_dim"] = r.embed_dim;
      j["image_token_id"] = r.image_pad;
      j["initializer_range"] = 0.02;
      j["model_type"] = "colqwen3";
      j["padding_side"] = "left";
      j["text_config"] = TextConfigJson(r, /*rope_parameters=*/false);
      j["tie_word_embeddings"] = r.tie;
      j["transformers_version"] = kTransformersVersion;
      j["video_token_id"] = r.video_pad;
      j["vision_config"] = VisionConfigJson(r);
      j["vision_end_token_id"] = r.vision_end;
      j["vision_start_token_id"] = r.vision_start;
      return j;
    }
  }
  return j;
}

constexpr char kPlaceholderNote[] =
    "# GENERATED PLACEHOLDER written by roundhouse's checkpoint generator for\n"
    "# load-path tests. It is NOT the TomoroAI remote code: it only mirrors\n"
    "# the class names and module tree so that tooling finds what it expects.\n";

std::string ConfigurationPy() {
  return absl::StrCat(kPlaceholderNote, R"PY(
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLConfig


class ColQwen3Config(Qwen3VLConfig):
    model_type = "colqwen3"

    def __init__(self, embed_dim=320, padding_side="left",
                 initializer_range=0.02, **kwargs):
        if embed_dim <= 0:
            raise ValueError("embed_dim must be > 0")
        self.embed_dim = embed_dim
        self.padding_side = padding_side
        self.initializer_range = initializer_range
        super().__init__(**kwargs)


__all__ = ["ColQwen3Config"]
)PY");
}

std::string ModelingPy() {
  return absl::StrCat(kPlaceholderNote, R"PY(
import torch
from torch import nn
from transformers import AutoModelForImageTextToText, PreTrainedModel

from .configuration_colqwen3 import ColQwen3Config


class ColQwen3(PreTrainedModel):
    config_class = ColQwen3Config

    def __init__(self, config):
        super().__init__(config)
        self.vlm = AutoModelForImageTextToText.from_config(config)
        self.embedding_proj_layer = nn.Linear(
            config.text_config.hidden_size, config.embed_dim)

    def forward(self, input_ids=None, attention_mask=None, **kwargs):
        out = self.vlm.model(input_ids=input_ids,
                             attention_mask=attention_mask, **kwargs)
        h = out[0].to(self.embedding_proj_layer.weight.dtype)
        e = self.embedding_proj_layer(h)
        eps = torch.finfo(e.dtype).eps
        e = e / e.norm(dim=-1, keepdim=True).clamp_min(eps)
        if attention_mask is not None:
            e = e * attention_mask.unsqueeze(-1)
        return e


__all__ = ["ColQwen3"]
)PY");
}

std::string ProcessingPy() {
  return absl::StrCat(kPlaceholderNote, R"PY(
from transformers.processing_utils import ProcessorMixin


class ColQwen3Processor(ProcessorMixin):
    attributes = ["image_processor", "tokenizer"]
    image_processor_class = "AutoImageProcessor"
    tokenizer_class = "AutoTokenizer"
    query_augmentation_token = "<|endoftext|>"

    def process_queries(self, texts, suffix=None):
        suffix = suffix if suffix is not None else (
            self.query_augmentation_token * 10)
        prompts = [t.strip() + suffix for t in texts]
        return self.tokenizer(prompts, padding="longest",
                              return_tensors="pt")


__all__ = ["ColQwen3Processor"]
)PY");
}

ojson PreprocessorConfigJson(const Resolved& r) {
  const int p = r.vision.patch;
  return {{"do_convert_rgb", true},
          {"do_normalize", true},
          {"do_rescale", true},
          {"do_resize", true},
          {"image_mean", {0.5, 0.5, 0.5}},
          {"image_processor_type", "Qwen2VLImageProcessorFast"},
          {"image_std", {0.5, 0.5, 0.5}},
          {"merge_size", 2},
          {"patch_size", p},
          {"processor_class", "ColQwen3Processor"},
          {"resample", 3},
          {"rescale_factor", 1.0 / 255.0},
          {"size",
           {{"longest_edge", 1280 * (p * 2) * (p * 2)},
            {"shortest_edge", 256 * (p * 2) * (p * 2) / 4}}},
          {"temporal_patch_size", 2}};
}

// 64-bit FNV-1a; stable across platforms and runs.
uint64_t Fnv1a(const std::string& s, uint64_t seed) {
  uint64_t h = 1469598103934665603ull ^ (seed * 0x9E3779B97F4A7C15ull);
  for (unsigned char c : s) {
    h ^= c;
    h *= 1099511628211ull;
  }
  return h;
}

enum class Init { kNormal, kOnes, kZeros, kBias };

// Generates and hands one tensor at a time to the writer, so memory holds
// at most one tensor plus the writer's current shard.
class WeightEmitter {
 public:
  WeightEmitter(SafetensorsWriter* writer, const Resolved& r, uint64_t seed)
      : writer_(writer), r_(r), seed_(seed) {}

  absl::Status Emit(const std::string& name, std::vector<int64_t> shape,
                    Init init) {
    torch::Tensor t;
    try {
      // Each tensor's values depend only on (seed, name): changing the
      // number of layers leaves the others' bytes unchanged.
      auto gen = at::make_generator<at::CPUGeneratorImpl>(Fnv1a(name, seed_));
      switch (init) {
        case Init::kNormal:
          t = at::normal(0.0, 0.02, shape, gen);
          break;
        case Init::kBias:
          t = at::normal(0.0, 0.01, shape, gen);
          break;
        case Init::kOnes:
          t = torch::ones(shape);
          break;
        case Init::kZeros:
          t = torch::zeros(shape);
          break;
      }
      t = t.to(r_.dtype);
    } catch (const c10::Error& e) {
      return absl::InternalError(absl::StrCat("generating ", name, ": ",
                                              e.what_without_backtrace()));
    }
    return writer_->Add(name, t);
  }

 private:
  SafetensorsWriter* writer_;
  const Resolved& r_;
  uint64_t seed_;
};

absl::Status EmitLanguageModel(WeightEmitter& e, const Resolved& r,
                               const std::string& prefix) {
  const int64_t H = r.hidden, I = r.inter, D = r.head_dim;
  const int64_t QO = int64_t{r.heads} * D, KV = int64_t{r.kv_heads} * D;
  const bool qk_norm = r.family != ModelFamily::kLlama &&
                       r.family != ModelFamily::kQwen2;
  const bool qkv_bias = r.family == ModelFamily::kQwen2;
  RETURN_IF_ERROR(
      e.Emit(absl::StrCat(prefix, "embed_tokens.weight"), {r.vocab, H},
             Init::kNormal));
  for (int i = 0; i < r.layers; ++i) {
    const std::string b = absl::StrCat(prefix, "layers.", i, ".");
    auto n = [&](const char* s) { return absl::StrCat(b, s); };
    RETURN_IF_ERROR(e.Emit(n("input_layernorm.weight"), {H}, Init::kOnes));
    RETURN_IF_ERROR(e.Emit(n("self_attn.q_proj.weight"), {QO, H}, Init::kNormal));
    if (qkv_bias) {
      RETURN_IF_ERROR(e.Emit(n("self_attn.q_proj.bias"), {QO}, Init::kBias));
    }
    RETURN_IF_ERROR(e.Emit(n("self_attn.k_proj.weight"), {KV, H}, Init::kNormal));
    if (qkv_bias) {
      RETURN_IF_ERROR(e.Emit(n("self_attn.k_proj.bias"), {KV}, Init::kBias));
    }
    RETURN_IF_ERROR(e.Emit(n("self_attn.v_proj.weight"), {KV, H}, Init::kNormal));
    if (qkv_bias) {
      RETURN_IF_ERROR(e.Emit(n("self_attn.v_proj.bias"), {KV}, Init::kBias));
    }
    RETURN_IF_ERROR(e.Emit(n("self_attn.o_proj.weight"), {H, QO}, Init::kNormal));
    if (qk_norm) {
      RETURN_IF_ERROR(e.Emit(n("self_attn.q_norm.weight"), {D}, Init::kOnes));
      RETURN_IF_ERROR(e.Emit(n("self_attn.k_norm.weight"), {D}, Init::kOnes));
    }
    RETURN_IF_ERROR(
        e.Emit(n("post_attention_layernorm.weight"), {H}, Init::kOnes));
    RETURN_IF_ERROR(e.Emit(n("mlp.gate_proj.weight"), {I, H}, Init::kNormal));
    RETURN_IF_ERROR(e.Emit(n("mlp.up_proj.weight"), {I, H}, Init::kNormal));
    RETURN_IF_ERROR(e.Emit(n("mlp.down_proj.weight"), {H, I}, Init::kNormal));
  }
  return e.Emit(absl::StrCat(prefix, "norm.weight"), {H}, Init::kOnes);
}

absl::Status EmitLinear(WeightEmitter& e, const std::string& name,
                        int64_t out, int64_t in) {
  RETURN_IF_ERROR(e.Emit(name + ".weight", {out, in}, Init::kNormal));
  return e.Emit(name + ".bias", {out}, Init::kBias);
}

absl::Status EmitLayerNorm(WeightEmitter& e, const std::string& name,
                           int64_t dim) {
  RETURN_IF_ERROR(e.Emit(name + ".weight", {dim}, Init::kOnes));
  return e.Emit(name + ".bias", {dim}, Init::kZeros);
}

absl::Status EmitVision(WeightEmitter& e, const Resolved& r,
                        const std::string& p) {
  const VisionShape& v = r.vision;
  const int64_t Hv = v.hidden, M = int64_t{v.hidden} * 4;
  RETURN_IF_ERROR(e.Emit(p + "patch_embed.proj.weight",
                         {Hv, 3, 2, v.patch, v.patch}, Init::kNormal));
  RETURN_IF_ERROR(e.Emit(p + "patch_embed.proj.bias", {Hv}, Init::kBias));
  RETURN_IF_ERROR(e.Emit(p + "pos_embed.weight", {v.num_pos, Hv}, Init::kNormal));
  for (int j = 0; j < v.depth; ++j) {
    const std::string b = absl::StrCat(p, "blocks.", j, ".");
    RETURN_IF_ERROR(EmitLayerNorm(e, b + "norm1", Hv));
    RETURN_IF_ERROR(EmitLayerNorm(e, b + "norm2", Hv));
    RETURN_IF_ERROR(EmitLinear(e, b + "attn.qkv", 3 * Hv, Hv));
    RETURN_IF_ERROR(EmitLinear(e, b + "attn.proj", Hv, Hv));
    RETURN_IF_ERROR(EmitLinear(e, b + "mlp.linear_fc1", v.intermediate, Hv));
    RETURN_IF_ERROR(EmitLinear(e, b + "mlp.linear_fc2", Hv, v.intermediate));
  }
  RETURN_IF_ERROR(EmitLayerNorm(e, p + "merger.norm", Hv));
  RETURN_IF_ERROR(EmitLinear(e, p + "merger.linear_fc1", M, M));
  RETURN_IF_ERROR(EmitLinear(e, p + "merger.linear_fc2", v.out_hidden, M));
  for (size_t k = 0; k < v.deepstack.size(); ++k) {
    const std::string b = absl::StrCat(p, "deepstack_merger_list.", k, ".");
    RETURN_IF_ERROR(EmitLayerNorm(e, b + "norm", M));
    RETURN_IF_ERROR(EmitLinear(e, b + "linear_fc1", M, M));
    RETURN_IF_ERROR(EmitLinear(e, b + "linear_fc2", v.out_hidden, M));
  }
  return absl::OkStatus();
}

absl::StatusOr<Resolved> Resolve(const GeneratorOptions& o) {
  Resolved r;
  ASSIGN_OR_RETURN(r.family, ParseModelFamily(o.family));
  if (o.preset == "tiny") {
    r.layers = 2;
    r.hidden = 64;
    r.inter = 128;
    r.heads = 4;
    r.kv_heads = 2;
    r.head_dim = 16;
    r.vocab = 320;
    r.embed_dim = 16;
    r.vision = {2, 32, 64, 2, 16, 16, 0, {0, 1}};
  } else if (o.preset == "colqwen3-4b") {
    r.layers = 36;
    r.hidden = 2560;
    r.inter = 9728;
    r.heads = 32;
    r.kv_heads = 8;
    r.head_dim = 128;
    r.vocab = 151936;
    r.embed_dim = 320;
    r.vision = {24, 1024, 4096, 16, 16, 2304, 0, {5, 11, 17}};
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "generator: preset \"", o.preset,
        "\" is unknown (expected \"tiny\" or \"colqwen3-4b\")"));
  }
  struct Override {
    const char* field;
    int value;
    int* target;
  };
  for (const Override& ov :
       {Override{"num_layers", o.num_layers, &r.layers},
        Override{"hidden_size", o.hidden_size, &r.hidden},
        Override{"intermediate_size", o.intermediate_size, &r.inter},
        Override{"num_heads", o.num_heads, &r.heads},
        Override{"num_kv_heads", o.num_kv_heads, &r.kv_heads},
        Override{"head_dim", o.head_dim, &r.head_dim},
        Override{"vocab_size", o.vocab_size, &r.vocab}}) {
    if (ov.value == -1) continue;
    if (ov.value <= 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "generator: ", ov.field, " must be positive or -1, got ",
          ov.value));
    }
    *ov.target = ov.value;
  }
  if (r.heads % r.kv_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "generator: num_kv_heads (", r.kv_heads,
        ") must divide num_heads (", r.heads, ")"));
  }
  if (r.head_dim % 2 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("generator: head_dim must be even, got ", r.head_dim));
  }
  r.vision.out_hidden = r.hidden;
  if (IsVL(r.family)) {
    r.vision_start = 259;
    r.vision_end = 260;
    r.image_pad = 261;
    r.video_pad = 262;
    r.tokenizer_size = kGeneratedTokenizerSize + 4;
  }
  if (r.vocab < r.tokenizer_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        "generator: vocab_size ", r.vocab, " is smaller than the generated ",
        "tokenizer (", r.tokenizer_size, " tokens)"));
  }
  if (o.dtype == "float32") {
    r.dtype = torch::kFloat32;
  } else if (o.dtype == "bfloat16") {
    r.dtype = torch::kBFloat16;
  } else if (o.dtype == "float16") {
    r.dtype = torch::kFloat16;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "generator: dtype \"", o.dtype,
        "\" is unsupported (float32, bfloat16 or float16)"));
  }
  r.dtype_name = o.dtype;
  if (o.calib_samples < 0 || o.calib_seqlen < 0 ||
      (o.calib_samples > 0) != (o.calib_seqlen > 0)) {
    return absl::InvalidArgumentError(
        "generator: calib_samples and calib_seqlen must both be positive "
        "(or both 0)");
  }
  // Llama keeps a separate lm_head (exercises that path); the Qwen families
  // tie like their small released models; ColQwen3 stores no lm_head.
  r.tie = r.family != ModelFamily::kLlama;
  return r;
}

// Random lower-case words; the generated tokenizer maps byte b to id b, so
// input_ids are the text's bytes.
std::string CalibJsonl(const GeneratorOptions& o) {
  std::mt19937_64 rng(o.seed ^ 0xCA11B5EEDull);
  std::string out;
  for (int s = 0; s < o.calib_samples; ++s) {
    std::string text;
    while (static_cast<int>(text.size()) < o.calib_seqlen) {
      if (!text.empty()) text += ' ';
      int len = 1 + static_cast<int>(rng() % 8);
      for (int k = 0; k < len; ++k) {
        text += static_cast<char>('a' + rng() % 26);
      }
    }
    text.resize(o.calib_seqlen);
    std::vector<int> ids(text.begin(), text.end());
    ojson line = {{"input_ids", ids},
                  {"text", text},
                  {"source", "roundhouse-generator"}};
    out += line.dump();
    out += '\n';
  }
  return out;
}

absl::Status WriteJson(const std::string& dir, const std::string& name,
                       const ojson& j) {
  return WriteFileAtomically(JoinPath(dir, name), j.dump(2) + "\n");
}

absl::Status GenerateInto(const GeneratorOptions& o, const Resolved& r,
                          const std::string& dir) {
  RETURN_IF_ERROR(WriteJson(dir, "config.json", ConfigJson(r)));
  ojson gen = {{"bos_token_id", r.endoftext},
               {"eos_token_id", r.family == ModelFamily::kLlama
                                    ? r.endoftext
                                    : r.im_end},
               {"pad_token_id", r.endoftext},
               {"transformers_version", kTransformersVersion}};
  RETURN_IF_ERROR(WriteJson(dir, "generation_config.json", gen));
  RETURN_IF_ERROR(WriteJson(dir, "tokenizer.json", TokenizerJson(r)));
  RETURN_IF_ERROR(
      WriteJson(dir, "tokenizer_config.json", TokenizerConfigJson(r)));
  if (r.family == ModelFamily::kColQwen3) {
    RETURN_IF_ERROR(WriteFileAtomically(
        JoinPath(dir, "configuration_colqwen3.py"), ConfigurationPy()));
    RETURN_IF_ERROR(WriteFileAtomically(JoinPath(dir, "modeling_colqwen3.py"),
                                        ModelingPy()));
    RETURN_IF_ERROR(WriteFileAtomically(
        JoinPath(dir, "processing_colqwen3.py"), ProcessingPy()));
  }
  if (IsVL(r.family)) {
    RETURN_IF_ERROR(WriteJson(dir, "preprocessor_config.json",
                              PreprocessorConfigJson(r)));
  }
  if (o.calib_samples > 0) {
    RETURN_IF_ERROR(
        WriteFileAtomically(JoinPath(dir, "calib.jsonl"), CalibJsonl(o)));
  }

  SafetensorsWriter writer(dir, o.max_shard_bytes);
  WeightEmitter e(&writer, r, o.seed);
  switch (r.family) {
    case ModelFamily::kLlama:
    case ModelFamily::kQwen2:
    case ModelFamily::kQwen3:
      RETURN_IF_ERROR(EmitLanguageModel(e, r, "model."));
      if (!r.tie) {
        RETURN_IF_ERROR(e.Emit("lm_head.weight", {r.vocab, r.hidden},
                               Init::kNormal));
      }
      break;
    case ModelFamily::kQwen3VL:
      RETURN_IF_ERROR(EmitLanguageModel(e, r, "model.language_model."));
      RETURN_IF_ERROR(EmitVision(e, r, "model.visual."));
      break;
    case ModelFamily::kColQwen3:
      RETURN_IF_ERROR(EmitLanguageModel(e, r, "vlm.model.language_model."));
      RETURN_IF_ERROR(EmitVision(e, r, "vlm.model.visual."));
      RETURN_IF_ERROR(
          EmitLinear(e, "embedding_proj_layer", r.embed_dim, r.hidden));
      break;
  }
  return writer.Finish();
}

}  // namespace

absl::Status GenerateCheckpoint(const GeneratorOptions& options,
                                const std::string& out_dir) {
  ASSIGN_OR_RETURN(Resolved r, Resolve(options));
  if (out_dir.empty()) {
    return absl::InvalidArgumentError("generator: output directory is empty");
  }
  if (PathExists(out_dir)) {
    auto listing = ListFilesRecursive(out_dir);
    if (!IsDirectory(out_dir) || !listing.ok() || !listing->empty()) {
      return absl::AlreadyExistsError(absl::StrCat(
          "generator: ", out_dir, " exists and is not an empty directory"));
    }
  }
  std::string dir = out_dir;
  while (dir.size() > 1 && dir.back() == '/') dir.pop_back();
  const std::string tmp = absl::StrCat(dir, ".tmp-", ::getpid());
  RETURN_IF_ERROR(RemoveTree(tmp));
  RETURN_IF_ERROR(MakeDirs(tmp));
  absl::Status st = GenerateInto(options, r, tmp);
  if (st.ok()) {
    if (PathExists(dir)) RETURN_IF_ERROR(RemoveTree(dir));  // empty dir
    st = RenameDurably(tmp, dir);
  }
  if (!st.ok()) {
    RemoveTree(tmp).IgnoreError();
    return st;
  }
  return absl::OkStatus();
}

}  // namespace roundhouse::engine
