// calibration_dump: runs BuildCalibrationSet and writes the resolved set as
// JSON, for inspecting a calibration spec without a model or GPU, and for
// the end-to-end check against the JavaScript reference
// (tests/tokenizer/check_calibration.js).
//
//   calibration_dump --path P [--tokenizer-dir D] [--preset colpali]
//       [--format F] [--field F] [--selection S] [--stratify-column C]
//       [--template T] [--nsamples N] [--seqlen N] [--seed N]
//       [--eval-samples N] [--allow-fewer] [--drop-short] [--out FILE]
//
// Output: {"content_sha256", "pad_token_id", "records_read",
// "records_usable", "per_stratum", "samples": [{"input_ids",
// "attention_mask", "stratum"}], "eval_samples": [...]}. Exit 2 with the
// error message on stderr when the set cannot be built.
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iostream>
#include <string>

#include "nlohmann/json.hpp"
#include "worker/engine/tokenizer/calibration.h"

namespace {

using roundhouse::calibration::CalibrationOptions;

nlohmann::json SamplesJson(
    const std::vector<roundhouse::calibration::Sample>& samples) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& s : samples) {
    std::vector<int> mask(s.attention_mask.begin(), s.attention_mask.end());
    out.push_back({{"input_ids", s.input_ids},
                   {"attention_mask", mask},
                   {"stratum", s.stratum}});
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string path, tokenizer_dir, preset, out_path;
  CalibrationOptions o;
  bool have_path = false;
  std::vector<std::pair<std::string, std::string>> overrides;
  for (int i = 1; i < argc; ++i) {
    const std::string flag = argv[i];
    if (flag == "--allow-fewer" || flag == "--drop-short") {
      overrides.emplace_back(flag, "");
      continue;
    }
    if (i + 1 >= argc) {
      std::cerr << "calibration_dump: " << flag << " needs a value\n";
      return 2;
    }
    const std::string value = argv[++i];
    if (flag == "--path") {
      path = value;
      have_path = true;
    } else if (flag == "--tokenizer-dir") {
      tokenizer_dir = value;
    } else if (flag == "--preset") {
      preset = value;
    } else if (flag == "--out") {
      out_path = value;
    } else {
      overrides.emplace_back(flag, value);
    }
  }
  if (!have_path) {
    std::cerr << "calibration_dump: --path is required\n";
    return 2;
  }
  if (preset == "colpali") {
    o = roundhouse::calibration::ColpaliTrainSetPreset(path, tokenizer_dir);
  } else if (!preset.empty()) {
    std::cerr << "calibration_dump: unknown --preset " << preset
              << " (known: colpali)\n";
    return 2;
  } else {
    o.path = path;
    o.tokenizer_dir = tokenizer_dir;
  }
  for (const auto& [flag, value] : overrides) {
    char* end = nullptr;
    const long long n = std::strtoll(value.c_str(), &end, 10);
    const bool numeric = !value.empty() && end != nullptr && *end == '\0';
    if (flag == "--format") {
      o.format = value;
    } else if (flag == "--field") {
      o.field = value;
    } else if (flag == "--selection") {
      o.selection = value;
    } else if (flag == "--stratify-column") {
      o.stratify_column = value;
    } else if (flag == "--template") {
      o.templ = value;
    } else if (flag == "--allow-fewer") {
      o.allow_fewer = true;
    } else if (flag == "--drop-short") {
      o.drop_short = true;
    } else if (numeric && flag == "--nsamples") {
      o.nsamples = static_cast<int>(n);
    } else if (numeric && flag == "--seqlen") {
      o.seqlen = static_cast<int>(n);
    } else if (numeric && flag == "--seed") {
      o.seed = static_cast<uint64_t>(n);
    } else if (numeric && flag == "--eval-samples") {
      o.eval_samples = static_cast<int>(n);
    } else {
      std::cerr << "calibration_dump: bad flag or value: " << flag << " "
                << value << "\n";
      return 2;
    }
  }
  auto set = roundhouse::calibration::BuildCalibrationSet(o);
  if (!set.ok()) {
    std::cerr << set.status().message() << "\n";
    return 2;
  }
  nlohmann::json j = {{"content_sha256", set->content_sha256},
                      {"pad_token_id", set->pad_token_id},
                      {"records_read", set->records_read},
                      {"records_usable", set->records_usable},
                      {"per_stratum", set->per_stratum},
                      {"samples", SamplesJson(set->samples)},
                      {"eval_samples", SamplesJson(set->eval_samples)}};
  if (out_path.empty()) {
    std::cout << j.dump() << "\n";
    return 0;
  }
  std::ofstream out(out_path, std::ios::trunc);
  out << j.dump() << "\n";
  out.close();
  if (!out) {
    std::cerr << "calibration_dump: cannot write " << out_path << "\n";
    return 1;
  }
  return 0;
}
