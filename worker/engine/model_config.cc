#include "worker/engine/model_config.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/files.h"
#include "common/status_macros.h"

namespace roundhouse::engine {
namespace {

using nlohmann::json;

// Reads typed fields of one JSON object and words errors as
// "<file>: <path><key> is missing".
class Fields {
 public:
  Fields(const json& obj, std::string file, std::string path)
      : obj_(obj), file_(std::move(file)), path_(std::move(path)) {}

  bool Has(const std::string& key) const {
    return obj_.is_object() && obj_.contains(key) && !obj_.at(key).is_null();
  }
  const json* Get(const std::string& key) const {
    return Has(key) ? &obj_.at(key) : nullptr;
  }
  absl::Status Error(const std::string& key, absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(file_, ": ", path_, key, " ", what));
  }

  absl::StatusOr<int> Int(const std::string& key) const {
    const json* v = Get(key);
    if (v == nullptr) return Error(key, "is missing");
    if (!v->is_number_integer()) return Error(key, "is not an integer");
    int64_t x = v->get<int64_t>();
    if (x <= 0 || x > (int64_t{1} << 30)) {
      return Error(key, absl::StrCat("must be a positive integer, got ", x));
    }
    return static_cast<int>(x);
  }
  absl::StatusOr<int> IntOr(const std::string& key, int def) const {
    if (!Has(key)) return def;
    return Int(key);
  }
  absl::StatusOr<double> DoubleOr(const std::string& key, double def) const {
    const json* v = Get(key);
    if (v == nullptr) return def;
    if (!v->is_number()) return Error(key, "is not a number");
    return v->get<double>();
  }
  absl::StatusOr<bool> BoolOr(const std::string& key, bool def) const {
    const json* v = Get(key);
    if (v == nullptr) return def;
    if (!v->is_boolean()) return Error(key, "is not a boolean");
    return v->get<bool>();
  }
  absl::StatusOr<std::string> StringOr(const std::string& key,
                                       std::string def) const {
    const json* v = Get(key);
    if (v == nullptr) return def;
    if (!v->is_string()) return Error(key, "is not a string");
    return v->get<std::string>();
  }
  const std::string& file() const { return file_; }
  const std::string& path() const { return path_; }

 private:
  const json& obj_;
  std::string file_;
  std::string path_;
};

bool IsMultimodal(ModelFamily f) {
  return f == ModelFamily::kQwen3VL || f == ModelFamily::kColQwen3;
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ","), "]");
}

absl::StatusOr<TextConfig> ParseTextConfigImpl(const json& config,
                                               ModelFamily family,
                                               const std::string& file) {
  if (!config.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": top level is not a JSON object"));
  }
  const bool mm = IsMultimodal(family);
  const json* text_obj = &config;
  if (mm) {
    auto it = config.find("text_config");
    if (it == config.end() || !it->is_object()) {
      return absl::InvalidArgumentError(
          absl::StrCat(file, ": text_config is missing"));
    }
    text_obj = &*it;
  }
  Fields top(config, file, "");
  Fields t(*text_obj, file, mm ? "text_config." : "");

  TextConfig c;
  ASSIGN_OR_RETURN(c.hidden_size, t.Int("hidden_size"));
  ASSIGN_OR_RETURN(c.intermediate_size, t.Int("intermediate_size"));
  ASSIGN_OR_RETURN(c.num_layers, t.Int("num_hidden_layers"));
  ASSIGN_OR_RETURN(c.num_heads, t.Int("num_attention_heads"));
  ASSIGN_OR_RETURN(c.num_kv_heads, t.IntOr("num_key_value_heads", c.num_heads));
  if (c.num_heads % c.num_kv_heads != 0) {
    return t.Error("num_key_value_heads",
                   absl::StrCat("(", c.num_kv_heads,
                                ") must divide num_attention_heads (",
                                c.num_heads, ")"));
  }
  if (t.Has("head_dim")) {
    ASSIGN_OR_RETURN(c.head_dim, t.Int("head_dim"));
  } else {
    if (c.hidden_size % c.num_heads != 0) {
      return t.Error("head_dim",
                     absl::StrCat("is missing and hidden_size (",
                                  c.hidden_size,
                                  ") is not a multiple of num_attention_heads (",
                                  c.num_heads, ")"));
    }
    c.head_dim = c.hidden_size / c.num_heads;
  }
  ASSIGN_OR_RETURN(c.vocab_size, t.IntOr("vocab_size", 0));
  ASSIGN_OR_RETURN(c.rms_norm_eps, t.DoubleOr("rms_norm_eps", 1e-6));
  ASSIGN_OR_RETURN(c.hidden_act, t.StringOr("hidden_act", "silu"));
  ASSIGN_OR_RETURN(c.max_position_embeddings,
                   t.IntOr("max_position_embeddings", 0));

  // RoPE: transformers < 5 writes rope_theta next to an optional
  // rope_scaling object; transformers 5 folds both into rope_parameters.
  const double default_theta = mm ? 5'000'000.0 : 10'000.0;
  const json* rope = t.Get("rope_parameters");
  std::string rope_key = "rope_parameters";
  if (rope == nullptr) {
    rope = t.Get("rope_scaling");
    rope_key = "rope_scaling";
  }
  if (rope != nullptr && !rope->is_object()) {
    return t.Error(rope_key, "is not an object");
  }
  ASSIGN_OR_RETURN(c.rope_theta, t.DoubleOr("rope_theta", default_theta));
  if (rope != nullptr) {
    c.rope_scaling = *rope;
    Fields r(*rope, file, absl::StrCat(t.path(), rope_key, "."));
    if (!t.Has("rope_theta")) {
      ASSIGN_OR_RETURN(c.rope_theta, r.DoubleOr("rope_theta", default_theta));
    }
    ASSIGN_OR_RETURN(std::string type, r.StringOr("type", "default"));
    ASSIGN_OR_RETURN(c.rope_type, r.StringOr("rope_type", type));
    ASSIGN_OR_RETURN(c.mrope_interleaved, r.BoolOr("mrope_interleaved", false));
    if (const json* sec = r.Get("mrope_section")) {
      if (!sec->is_array()) return r.Error("mrope_section", "is not an array");
      int sum = 0;
      for (const json& s : *sec) {
        if (!s.is_number_integer() || s.get<int>() < 0) {
          return r.Error("mrope_section",
                         "must hold non-negative integers");
        }
        c.mrope_section.push_back(s.get<int>());
        sum += s.get<int>();
      }
      if (sum * 2 > c.head_dim) {
        return r.Error("mrope_section",
                       absl::StrCat("sums to ", sum,
                                    ", more than head_dim/2 = ",
                                    c.head_dim / 2));
      }
    }
  }
  if (c.rope_theta <= 0) return t.Error("rope_theta", "must be positive");

  switch (family) {
    case ModelFamily::kLlama: {
      ASSIGN_OR_RETURN(c.attention_bias, t.BoolOr("attention_bias", false));
      c.o_proj_bias = c.attention_bias;
      ASSIGN_OR_RETURN(c.mlp_bias, t.BoolOr("mlp_bias", false));
      break;
    }
    case ModelFamily::kQwen2:
      // Qwen2 hard-codes bias=True for q/k/v and False for o_proj.
      c.attention_bias = true;
      break;
    case ModelFamily::kQwen3:
    case ModelFamily::kQwen3VL:
    case ModelFamily::kColQwen3: {
      c.qk_norm = true;
      ASSIGN_OR_RETURN(c.attention_bias, t.BoolOr("attention_bias", false));
      c.o_proj_bias = c.attention_bias;
      break;
    }
  }

  // The tie flag may sit at the top level and/or in text_config; ColQwen3
  // ties when either says so (it passes text_config's flag to the backbone,
  // Qwen3-VL reads the top-level one).
  ASSIGN_OR_RETURN(bool tie_top, top.BoolOr("tie_word_embeddings", false));
  bool tie_text = false;
  if (mm) {
    ASSIGN_OR_RETURN(tie_text, t.BoolOr("tie_word_embeddings", false));
  }
  c.tie_word_embeddings = tie_top || tie_text;

  for (const Fields* f : {&top, &t}) {
    for (const char* key : {"torch_dtype", "dtype"}) {
      if (c.torch_dtype.empty() && f->Has(key)) {
        ASSIGN_OR_RETURN(c.torch_dtype, f->StringOr(key, ""));
      }
    }
  }
  return c;
}

struct ShapeCheck {
  const Checkpoint& ckpt;

  absl::Status Expect(const std::string& name,
                      const std::vector<int64_t>& shape) const {
    auto info = ckpt.Info(name);
    if (!info.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint ", ckpt.dir(), ": tensor \"", name,
          "\" is missing (expected shape ", ShapeString(shape), ")"));
    }
    if ((*info)->shape != shape) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint ", ckpt.dir(), ": tensor \"", name, "\" has shape ",
          ShapeString((*info)->shape), ", expected ", ShapeString(shape)));
    }
    return absl::OkStatus();
  }
};

std::optional<std::string> FirstPresent(
    const Checkpoint& ckpt, std::initializer_list<const char*> names) {
  for (const char* n : names) {
    if (ckpt.Has(n)) return std::string(n);
  }
  return std::nullopt;
}

bool AnyWithPrefix(const std::vector<std::string>& sorted_names,
                   const std::string& prefix) {
  auto it = std::lower_bound(sorted_names.begin(), sorted_names.end(),
                             prefix);
  return it != sorted_names.end() && it->compare(0, prefix.size(), prefix) == 0;
}

}  // namespace

std::string_view ModelFamilyName(ModelFamily family) {
  switch (family) {
    case ModelFamily::kLlama:
      return "llama";
    case ModelFamily::kQwen2:
      return "qwen2";
    case ModelFamily::kQwen3:
      return "qwen3";
    case ModelFamily::kQwen3VL:
      return "qwen3_vl";
    case ModelFamily::kColQwen3:
      return "colqwen3";
  }
  return "unknown";
}

absl::StatusOr<ModelFamily> ParseModelFamily(std::string_view name) {
  for (ModelFamily f : {ModelFamily::kLlama, ModelFamily::kQwen2,
                        ModelFamily::kQwen3, ModelFamily::kQwen3VL,
                        ModelFamily::kColQwen3}) {
    if (name == ModelFamilyName(f)) return f;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "unknown model family \"", std::string(name),
      "\" (expected llama, qwen2, qwen3, qwen3_vl or colqwen3)"));
}

std::string ModelLayout::BlockName(int i) const {
  return absl::StrCat(block_prefix, ".", i);
}

std::vector<std::string> ModelLayout::BlockLinearNames(int block) const {
  std::vector<std::string> out;
  const std::string b = BlockName(block);
  for (const std::string& s : BlockLinearSuffixes()) {
    out.push_back(absl::StrCat(b, ".", s));
  }
  return out;
}

absl::StatusOr<nlohmann::json> ReadConfigJson(const std::string& model_dir) {
  const std::string path = JoinPath(model_dir, "config.json");
  auto text = ReadFile(path);
  if (!text.ok()) {
    if (absl::IsNotFound(text.status())) {
      return absl::NotFoundError(absl::StrCat(path, " does not exist"));
    }
    return text.status();
  }
  json j = json::parse(*text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not valid JSON"));
  }
  if (!j.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": top level is not a JSON object"));
  }
  return j;
}

absl::StatusOr<ModelFamily> DetectFamily(const nlohmann::json& config) {
  if (config.is_object() && config.contains("model_type") &&
      config["model_type"].is_string()) {
    const std::string mt = config["model_type"].get<std::string>();
    if (mt == "llama") return ModelFamily::kLlama;
    if (mt == "qwen2") return ModelFamily::kQwen2;
    if (mt == "qwen3") return ModelFamily::kQwen3;
    if (mt == "qwen3_vl") return ModelFamily::kQwen3VL;
    if (mt == "colqwen3") return ModelFamily::kColQwen3;
    return absl::InvalidArgumentError(absl::StrCat(
        "config.json: model_type \"", mt,
        "\" is not supported (llama, qwen2, qwen3, qwen3_vl, colqwen3)"));
  }
  if (config.is_object() && config.contains("architectures") &&
      config["architectures"].is_array()) {
    for (const json& a : config["architectures"]) {
      if (!a.is_string()) continue;
      const std::string s = a.get<std::string>();
      if (s == "LlamaForCausalLM") return ModelFamily::kLlama;
      if (s == "Qwen2ForCausalLM") return ModelFamily::kQwen2;
      if (s == "Qwen3ForCausalLM") return ModelFamily::kQwen3;
      if (s == "Qwen3VLForConditionalGeneration") return ModelFamily::kQwen3VL;
      if (s == "ColQwen3") return ModelFamily::kColQwen3;
    }
  }
  return absl::InvalidArgumentError(
      "config.json: model_type is missing (and architectures names no "
      "supported model)");
}

absl::StatusOr<TextConfig> ParseTextConfig(const nlohmann::json& config,
                                           ModelFamily family) {
  return ParseTextConfigImpl(config, family, "config.json");
}

absl::StatusOr<ModelLayout> DiscoverLayout(const std::string& model_dir,
                                           const Checkpoint& ckpt) {
  ASSIGN_OR_RETURN(json config, ReadConfigJson(model_dir));
  auto layout = DiscoverLayoutFromConfig(config, ckpt);
  if (!layout.ok() && absl::IsInvalidArgument(layout.status()) &&
      layout.status().message().rfind("config.json", 0) == 0) {
    // Name the actual file rather than the bare "config.json".
    return absl::InvalidArgumentError(
        absl::StrCat(model_dir, "/", layout.status().message()));
  }
  return layout;
}

absl::StatusOr<ModelLayout> DiscoverLayoutFromConfig(
    const nlohmann::json& config, const Checkpoint& ckpt) {
  ModelLayout l;
  ASSIGN_OR_RETURN(l.family, DetectFamily(config));
  l.model_type =
      config.value("model_type", std::string(ModelFamilyName(l.family)));
  ASSIGN_OR_RETURN(l.text, ParseTextConfig(config, l.family));
  const std::vector<std::string> names = ckpt.TensorNames();

  // Prefixes are decided by the tensors actually present: the same model is
  // saved under different prefixes by different libraries (models.md §4c).
  std::vector<std::string> lm_candidates;
  std::vector<std::string> vision_candidates;
  switch (l.family) {
    case ModelFamily::kLlama:
    case ModelFamily::kQwen2:
    case ModelFamily::kQwen3:
      lm_candidates = {"model.", ""};
      break;
    case ModelFamily::kQwen3VL:
      lm_candidates = {"model.language_model.", "language_model.model.",
                       "language_model.", "vlm.model.language_model."};
      vision_candidates = {"model.visual.", "visual.", "vlm.model.visual."};
      break;
    case ModelFamily::kColQwen3:
      lm_candidates = {"vlm.model.language_model.", "model.language_model.",
                       "language_model."};
      vision_candidates = {"vlm.model.visual.", "model.visual.", "visual."};
      break;
  }
  bool found = false;
  for (const std::string& p : lm_candidates) {
    if (ckpt.Has(absl::StrCat(p, "embed_tokens.weight"))) {
      l.lm_prefix = p;
      found = true;
      break;
    }
  }
  if (!found) {
    std::vector<std::string> tried;
    for (const auto& p : lm_candidates) {
      tried.push_back(absl::StrCat(p, "embed_tokens.weight"));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", ckpt.dir(), ": no embedding tensor found for a ",
        std::string(ModelFamilyName(l.family)), " model (tried ",
        absl::StrJoin(tried, ", "), ")"));
  }
  for (const std::string& p : vision_candidates) {
    if (AnyWithPrefix(names, p)) {
      l.vision_prefix = p;
      break;
    }
  }
  l.block_prefix = absl::StrCat(l.lm_prefix, "layers");
  l.embed_tokens = absl::StrCat(l.lm_prefix, "embed_tokens.weight");
  l.final_norm = absl::StrCat(l.lm_prefix, "norm.weight");

  TextConfig& t = l.text;
  const int64_t H = t.hidden_size;
  {
    // The vocabulary size is whatever the embedding holds (a merged model
    // may disagree with its config).
    ASSIGN_OR_RETURN(const TensorInfo* emb, ckpt.Info(l.embed_tokens));
    if (emb->shape.size() != 2 || emb->shape[1] != H) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint ", ckpt.dir(), ": tensor \"", l.embed_tokens,
          "\" has shape ", ShapeString(emb->shape), ", expected [vocab,", H,
          "]"));
    }
    t.vocab_size = static_cast<int>(emb->shape[0]);
  }
  const int64_t V = t.vocab_size;
  const int64_t I = t.intermediate_size;
  const int64_t D = t.head_dim;
  const int64_t QO = int64_t{t.num_heads} * D;
  const int64_t KV = int64_t{t.num_kv_heads} * D;
  ShapeCheck check{ckpt};
  RETURN_IF_ERROR(check.Expect(l.final_norm, {H}));

  for (int i = 0; i < t.num_layers; ++i) {
    const std::string b = absl::StrCat(l.BlockName(i), ".");
    auto w = [&](const char* s) { return absl::StrCat(b, s, ".weight"); };
    auto bias = [&](const char* s) { return absl::StrCat(b, s, ".bias"); };
    RETURN_IF_ERROR(check.Expect(w("input_layernorm"), {H}));
    RETURN_IF_ERROR(check.Expect(w("post_attention_layernorm"), {H}));
    RETURN_IF_ERROR(check.Expect(w("self_attn.q_proj"), {QO, H}));
    RETURN_IF_ERROR(check.Expect(w("self_attn.k_proj"), {KV, H}));
    RETURN_IF_ERROR(check.Expect(w("self_attn.v_proj"), {KV, H}));
    RETURN_IF_ERROR(check.Expect(w("self_attn.o_proj"), {H, QO}));
    RETURN_IF_ERROR(check.Expect(w("mlp.gate_proj"), {I, H}));
    RETURN_IF_ERROR(check.Expect(w("mlp.up_proj"), {I, H}));
    RETURN_IF_ERROR(check.Expect(w("mlp.down_proj"), {H, I}));
    if (t.qk_norm) {
      RETURN_IF_ERROR(check.Expect(w("self_attn.q_norm"), {D}));
      RETURN_IF_ERROR(check.Expect(w("self_attn.k_norm"), {D}));
    }
    if (t.attention_bias) {
      RETURN_IF_ERROR(check.Expect(bias("self_attn.q_proj"), {QO}));
      RETURN_IF_ERROR(check.Expect(bias("self_attn.k_proj"), {KV}));
      RETURN_IF_ERROR(check.Expect(bias("self_attn.v_proj"), {KV}));
    }
    if (t.o_proj_bias) {
      RETURN_IF_ERROR(check.Expect(bias("self_attn.o_proj"), {H}));
    }
    if (t.mlp_bias) {
      RETURN_IF_ERROR(check.Expect(bias("mlp.gate_proj"), {I}));
      RETURN_IF_ERROR(check.Expect(bias("mlp.up_proj"), {I}));
      RETURN_IF_ERROR(check.Expect(bias("mlp.down_proj"), {H}));
    }
  }
  {
    // A checkpoint with more blocks than the config promises would be
    // silently truncated.
    const std::string extra = absl::StrCat(l.BlockName(t.num_layers), ".");
    if (AnyWithPrefix(names, extra)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint ", ckpt.dir(), " holds tensors under ", extra,
          " but config.json says num_hidden_layers = ", t.num_layers));
    }
  }

  l.lm_head = l.family == ModelFamily::kColQwen3 ||
                      l.family == ModelFamily::kQwen3VL
                  ? FirstPresent(ckpt, {"vlm.lm_head.weight", "lm_head.weight",
                                        "model.lm_head.weight"})
                  : FirstPresent(ckpt, {"lm_head.weight"});
  if (l.lm_head) RETURN_IF_ERROR(check.Expect(*l.lm_head, {V, H}));
  if (!l.lm_head && !t.tie_word_embeddings &&
      l.family != ModelFamily::kColQwen3) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checkpoint ", ckpt.dir(),
        ": lm_head.weight is missing and config.json does not set "
        "tie_word_embeddings"));
  }

  if (l.family == ModelFamily::kColQwen3) {
    if (auto w = FirstPresent(ckpt, {"embedding_proj_layer.weight",
                                     "custom_text_proj.weight"})) {
      l.projection_weight = *w;
      const std::string b =
          w->substr(0, w->size() - std::string("weight").size()) + "bias";
      if (ckpt.Has(b)) l.projection_bias = b;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint ", ckpt.dir(),
          ": no projection head (embedding_proj_layer.weight or "
          "custom_text_proj.weight)"));
    }
    ASSIGN_OR_RETURN(const TensorInfo* pw, ckpt.Info(*l.projection_weight));
    if (pw->shape.size() != 2 || pw->shape[1] != H) {
      return absl::InvalidArgumentError(absl::StrCat(
          "checkpoint ", ckpt.dir(), ": tensor \"", *l.projection_weight,
          "\" has shape ", ShapeString(pw->shape), ", expected [embed_dim,",
          H, "]"));
    }
    Fields top(config, "config.json", "");
    int from_config = 0;
    std::string key;
    for (const char* k : {"embed_dim", "dims", "dim", "projection_dim",
                          "colbert_dim"}) {
      if (top.Has(k)) {
        ASSIGN_OR_RETURN(from_config, top.Int(k));
        key = k;
        break;
      }
    }
    l.embed_dim = static_cast<int>(pw->shape[0]);
    if (from_config != 0 && from_config != l.embed_dim) {
      return top.Error(key, absl::StrCat("(", from_config,
                                         ") disagrees with tensor \"",
                                         *l.projection_weight, "\" of shape ",
                                         ShapeString(pw->shape)));
    }
    if (l.projection_bias) {
      RETURN_IF_ERROR(check.Expect(*l.projection_bias, {l.embed_dim}));
    }
  }
  return l;
}

}  // namespace roundhouse::engine
