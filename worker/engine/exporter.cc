#include "worker/engine/exporter.h"

#include <regex>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/status_macros.h"

namespace roundhouse::engine {
namespace {

using nlohmann::json;
using nlohmann::ordered_json;

bool RewritesDtypeToFp16(Packing p) {
  return p == Packing::kAutoRoundAwq || p == Packing::kAutoGptq ||
         p == Packing::kAutoAwq;
}

// Files of a Hugging Face folder that belong with the weights: tokenizer,
// processor and generation settings, and remote code (§4.10).
bool IsCompanionFile(const std::string& name) {
  static const char* const kPrefixes[] = {
      "tokenizer", "special_tokens_map", "added_tokens", "vocab.",
      "merges.txt", "chat_template", "preprocessor_config",
      "video_preprocessor_config", "processor_config",
      "generation_config.json"};
  for (const char* p : kPrefixes) {
    if (absl::StartsWith(name, p)) return true;
  }
  return absl::EndsWith(name, ".py");
}

std::string EscapeRegex(const std::string& s) {
  static const std::string kSpecial = R"(\^$.|?*+()[]{})";
  std::string out;
  for (char c : s) {
    if (kSpecial.find(c) != std::string::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

// The layer's keys that differ from the global scheme (§4.9).
ordered_json LayerDelta(const ResolvedLayer& l, const QuantParams& g) {
  ordered_json d = ordered_json::object();
  if (!l.quantize) {
    d["bits"] = 16;
    d["data_type"] = l.reason == "ignored" ? "float" : "fp";
    return d;
  }
  if (l.params.bits != g.bits) d["bits"] = l.params.bits;
  if (l.params.group_size != g.group_size) {
    d["group_size"] = l.params.group_size;
  }
  if (l.params.sym != g.sym) d["sym"] = l.params.sym;
  return d;
}

}  // namespace

absl::StatusOr<Packing> PackingForFormat(
    const std::string& format, const QuantParams& global,
    const std::vector<ResolvedLayer>& layers) {
  if (format == "auto_gptq") return Packing::kAutoGptq;
  if (format == "auto_awq") return Packing::kAutoAwq;
  if (format != "auto_round") {
    return absl::InvalidArgumentError(
        absl::StrCat("export_formats: unknown format \"", format, "\""));
  }
  bool all4 = true;
  for (const ResolvedLayer& l : layers) {
    if (l.quantize && l.params.bits != 4) all4 = false;
  }
  return DefaultAutoRoundPacking(global.sym, all4);
}

ordered_json BuildQuantizationConfig(const ExportInput& in,
                                     const std::string& format,
                                     Packing packing) {
  const JobConfig& c = *in.config;
  const QuantParams& g = c.global;
  ordered_json q;
  if (format == "auto_gptq") {
    q["bits"] = g.bits;
    q["group_size"] = g.group_size;
    q["sym"] = g.sym;
    q["desc_act"] = false;
    q["true_sequential"] = false;
    q["damp_percent"] = 0.01;
    q["quant_method"] = "gptq";
    q["provider"] = "auto-round";
    q["lm_head"] = false;
    std::set<std::string> quantized_suffixes;
    bool any_skipped = false;
    ordered_json dynamic = ordered_json::object();
    const std::string block_prefix = in.layout->block_prefix + ".";
    for (const ResolvedLayer& l : *in.layers) {
      const std::string key = "^" + EscapeRegex(l.name) + "$";
      if (!l.quantize) {
        any_skipped = true;
        dynamic["-:" + key] = ordered_json::object();
        continue;
      }
      // "<block_prefix>.<i>.<suffix>" -> suffix.
      std::string rest = l.name.substr(block_prefix.size());
      quantized_suffixes.insert(rest.substr(rest.find('.') + 1));
      ordered_json d = LayerDelta(l, g);
      if (!d.empty()) {
        dynamic["+:" + key] = {{"bits", l.params.bits},
                               {"group_size", l.params.group_size},
                               {"sym", l.params.sym}};
      }
    }
    if (any_skipped) {
      q["modules_in_block_to_quantize"] = ordered_json::array(
          {ordered_json(std::vector<std::string>(quantized_suffixes.begin(),
                                                 quantized_suffixes.end()))});
    }
    if (!dynamic.empty()) q["dynamic"] = dynamic;
    return q;
  }
  if (format == "auto_awq") {
    q["quant_method"] = "awq";
    q["provider"] = "auto-round";
    q["bits"] = g.bits;
    q["group_size"] = g.group_size;
    q["zero_point"] = !g.sym;
    q["version"] = "gemm";
    std::vector<std::string> keep;
    for (const ResolvedLayer& l : *in.layers) {
      if (!l.quantize) keep.push_back(l.name);
    }
    q["modules_to_not_convert"] =
        keep.empty() ? ordered_json(nullptr) : ordered_json(keep);
    return q;
  }
  // auto_round (§4.8): defaults are dropped, as the reference's filter does.
  const TuningConfig& t = c.tune;
  q["quant_method"] = "auto-round";
  q["packing_format"] = std::string(PackingName(packing));
  q["bits"] = g.bits;
  q["group_size"] = g.group_size;
  q["sym"] = g.sym;
  q["data_type"] = "int";
  if (t.iters != 200) q["iters"] = t.iters;
  const double default_lr = t.iters > 0 ? 1.0 / t.iters : 5e-3;
  if (t.lr != default_lr) q["lr"] = t.lr;
  if (t.minmax_lr != default_lr) q["minmax_lr"] = t.minmax_lr;
  if (c.nsamples != 128) q["nsamples"] = c.nsamples;
  if (c.seqlen != 2048) q["seqlen"] = c.seqlen;
  if (t.batch_size != 8) q["batch_size"] = t.batch_size;
  if (t.gradient_accumulate_steps != 1) {
    q["gradient_accumulate_steps"] = t.gradient_accumulate_steps;
  }
  if (!t.enable_minmax_tuning) q["enable_minmax_tuning"] = false;
  if (!t.enable_quanted_input) q["enable_quanted_input"] = false;
  q["block_name_to_quantize"] = in.layout->block_prefix;
  q["autoround_version"] = "0.15.0";
  q["static_attention_granularity"] = "tensor";
  q["static_kv_granularity"] = "tensor";
  ordered_json extra = ordered_json::object();
  for (const ResolvedLayer& l : *in.layers) {
    ordered_json d = LayerDelta(l, g);
    if (!d.empty()) extra[l.name] = d;
  }
  if (!extra.empty()) q["extra_config"] = extra;
  return q;
}

absl::StatusOr<std::vector<std::string>> ExportFormat(
    const ExportInput& in, const std::string& format,
    const std::string& out_dir) {
  ASSIGN_OR_RETURN(Packing packing,
                   PackingForFormat(format, in.config->global, *in.layers));
  RETURN_IF_ERROR(MakeDirs(out_dir));
  std::map<std::string, const ResolvedLayer*> quantized;
  for (const ResolvedLayer& l : *in.layers) {
    if (l.quantize) quantized[l.name] = &l;
  }
  const Checkpoint& ckpt = *in.checkpoint;
  SafetensorsWriter writer(out_dir, in.max_shard_bytes);
  for (const std::string& name : ckpt.TensorNames()) {
    const size_t dot = name.rfind('.');
    const std::string module =
        dot == std::string::npos ? "" : name.substr(0, dot);
    const std::string leaf =
        dot == std::string::npos ? name : name.substr(dot + 1);
    auto q = quantized.find(module);
    if (q != quantized.end() && (leaf == "weight" || leaf == "bias")) {
      if (leaf == "bias") continue;  // written with the packed weight
      auto r = in.results->find(module);
      if (r == in.results->end()) {
        return absl::InternalError(
            absl::StrCat("export: no tuning result for ", module));
      }
      std::optional<torch::Tensor> bias;
      if (ckpt.Has(module + ".bias")) {
        ASSIGN_OR_RETURN(torch::Tensor b, ckpt.Load(module + ".bias"));
        bias = b;
      }
      auto packed = PackLinear(packing, r->second, q->second->params, bias);
      if (!packed.ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("export ", format, ": ", module, ": ",
                         packed.status().message()));
      }
      for (const auto& [key, tensor] : packed->tensors) {
        RETURN_IF_ERROR(writer.Add(module + "." + key, tensor));
      }
      continue;
    }
    ASSIGN_OR_RETURN(const TensorInfo* info, ckpt.Info(name));
    ASSIGN_OR_RETURN(absl::string_view bytes, ckpt.RawBytes(name));
    RETURN_IF_ERROR(
        writer.AddRaw(name, info->dtype, info->shape, std::string(bytes)));
  }
  RETURN_IF_ERROR(writer.Finish());
  std::vector<std::string> files = writer.files();

  // config.json keeps the source's key order (ordered_json).
  ASSIGN_OR_RETURN(std::string config_text,
                   ReadFile(JoinPath(in.model_dir, "config.json")));
  ordered_json config =
      ordered_json::parse(config_text, nullptr, /*allow_exceptions=*/false);
  if (config.is_discarded() || !config.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(in.model_dir, "/config.json: not a JSON object"));
  }
  ordered_json qc = BuildQuantizationConfig(in, format, packing);
  config["quantization_config"] = qc;
  if (RewritesDtypeToFp16(packing)) {
    if (config.contains("dtype")) config["dtype"] = "float16";
    if (config.contains("torch_dtype") || !config.contains("dtype")) {
      config["torch_dtype"] = "float16";
    }
  }
  RETURN_IF_ERROR(WriteFileAtomically(JoinPath(out_dir, "config.json"),
                                      config.dump(2) + "\n"));
  files.push_back("config.json");
  RETURN_IF_ERROR(WriteFileAtomically(
      JoinPath(out_dir, "quantization_config.json"), qc.dump(2) + "\n"));
  files.push_back("quantization_config.json");

  std::vector<std::string> companions;
  ASSIGN_OR_RETURN(std::vector<std::string> entries,
                   ListDirectory(in.model_dir));
  for (const std::string& fname : entries) {
    if (IsCompanionFile(fname)) companions.push_back(fname);
  }
  for (const std::string& fname : companions) {
    ASSIGN_OR_RETURN(std::string data,
                     ReadFile(JoinPath(in.model_dir, fname)));
    RETURN_IF_ERROR(WriteFileAtomically(JoinPath(out_dir, fname), data));
    files.push_back(fname);
  }
  std::sort(files.begin(), files.end());
  return files;
}

absl::StatusOr<WeightLookup> MakeDequantizingLookup(
    const Checkpoint& exported, const json& config_json,
    std::vector<std::string>* names) {
  if (!config_json.contains("quantization_config") ||
      !config_json["quantization_config"].is_object()) {
    return absl::InvalidArgumentError(
        "config.json: quantization_config is missing");
  }
  const json qc = config_json["quantization_config"];
  const std::string method = qc.value("quant_method", "");
  Packing packing;
  if (method == "gptq") {
    packing = Packing::kAutoGptq;
  } else if (method == "awq") {
    packing = Packing::kAutoAwq;
  } else if (method == "auto-round") {
    const std::string pf = qc.value("packing_format", "auto_round:auto_gptq");
    if (pf == "auto_round:auto_gptq") {
      packing = Packing::kAutoRoundGptq;
    } else if (pf == "auto_round") {
      packing = Packing::kAutoRoundPlain;
    } else if (pf == "auto_round:auto_awq") {
      packing = Packing::kAutoRoundAwq;
    } else {
      return absl::InvalidArgumentError(absl::StrCat(
          "quantization_config.packing_format: unsupported \"", pf, "\""));
    }
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "quantization_config.quant_method: unsupported \"", method, "\""));
  }
  QuantParams global;
  global.bits = qc.value("bits", 4);
  global.group_size = qc.value("group_size", 128);
  global.sym = qc.value("sym", true);
  const bool awq = packing == Packing::kAutoRoundAwq ||
                   packing == Packing::kAutoAwq;

  std::set<std::string> packed_modules;
  names->clear();
  for (const std::string& n : exported.TensorNames()) {
    if (absl::EndsWith(n, ".qweight")) {
      const std::string m = n.substr(0, n.size() - 8);
      packed_modules.insert(m);
      names->push_back(m + ".weight");
    } else if (absl::EndsWith(n, ".qzeros") || absl::EndsWith(n, ".scales") ||
               absl::EndsWith(n, ".g_idx")) {
      continue;
    } else {
      names->push_back(n);
    }
  }
  std::sort(names->begin(), names->end());

  auto params_of = [qc, global](const std::string& module) {
    QuantParams p = global;
    if (qc.contains("extra_config") && qc["extra_config"].contains(module)) {
      const json& d = qc["extra_config"][module];
      p.bits = d.value("bits", p.bits);
      p.group_size = d.value("group_size", p.group_size);
      p.sym = d.value("sym", p.sym);
    }
    if (qc.contains("dynamic")) {
      for (auto it = qc["dynamic"].begin(); it != qc["dynamic"].end(); ++it) {
        if (!absl::StartsWith(it.key(), "+:")) continue;
        if (std::regex_search(module, std::regex(it.key().substr(2)))) {
          p.bits = it.value().value("bits", p.bits);
          p.group_size = it.value().value("group_size", p.group_size);
          p.sym = it.value().value("sym", p.sym);
        }
      }
    }
    return p;
  };

  const Checkpoint* ckpt = &exported;
  return WeightLookup(
      [ckpt, packed_modules, packing, awq,
       params_of](const std::string& name) -> absl::StatusOr<torch::Tensor> {
        if (absl::EndsWith(name, ".weight")) {
          const std::string m = name.substr(0, name.size() - 7);
          if (packed_modules.count(m)) {
            std::map<std::string, torch::Tensor> t;
            for (const char* k : {"qweight", "qzeros", "scales", "g_idx"}) {
              const std::string full = m + "." + k;
              if (!ckpt->Has(full)) continue;
              ASSIGN_OR_RETURN(t[k], ckpt->Load(full));
            }
            if (!t.count("qweight") || !t.count("scales")) {
              return absl::InvalidArgumentError(
                  absl::StrCat(m, ": packed tensors incomplete"));
            }
            const QuantParams p = params_of(m);
            const int64_t out = t["scales"].size(1);
            const int64_t in_features =
                awq ? t["qweight"].size(0)
                    : t["qweight"].size(0) * 32 / p.bits;
            return DequantizePacked(packing, t, p, out, in_features);
          }
        }
        return ckpt->Load(name);
      });
}

}  // namespace roundhouse::engine
