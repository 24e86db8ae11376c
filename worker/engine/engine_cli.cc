#include "worker/engine/engine_cli.h"

#include <signal.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/memory_estimate.h"
#include "nlohmann/json.hpp"
#include "worker/engine/generator.h"
#include "worker/engine/inspect.h"
#include "worker/engine/job_config.h"
#include "worker/engine/pipeline.h"
#include <torch/torch.h>

namespace roundhouse::engine {
namespace {

using nlohmann::json;

constexpr char kUsage[] =
    "usage: roundhouse-worker <command> [flags]\n"
    "\n"
    "commands:\n"
    "  quantize --model DIR --spec FILE --out DIR [--checkpoint-dir DIR]\n"
    "           [--device cpu|cuda] [--gpus N] [--low-memory] [--threads N]\n"
    "      quantize a checkpoint; JSON events on stdout; exit 0 ok,\n"
    "      2 invalid spec/model/data, 3 out of memory, 4 interrupted,\n"
    "      5 quality gate failed (artifact kept), 1 other error\n"
    "  inspect --model DIR [--json] [--bits B] [--group-size G]\n"
    "      describe a checkpoint and what quantization would do to it\n"
    "  generate --family llama|qwen2|qwen3|qwen3_vl|colqwen3 --out DIR\n"
    "           [--preset tiny|colqwen3-4b] [--layers N] [--hidden H]\n"
    "           [--intermediate I] [--heads A] [--kv-heads K]\n"
    "           [--head-dim D] [--vocab V] [--dtype float32|bfloat16]\n"
    "           [--seed S] [--calib-samples N --calib-seqlen L]\n"
    "           [--max-shard-bytes B]\n"
    "      write a random-initialised checkpoint (tests, demos)\n"
    "  estimate --model DIR --spec FILE [--device cuda|cpu] [--gpus N]\n"
    "           [--low-memory]\n"
    "      print the admission estimate of peak device memory (JSON)\n"
    "  agent ...\n"
    "      serve a coordinator (roundhouse-worker agent --help)\n";

std::atomic<bool> g_stop{false};

extern "C" void OnStopSignal(int) { g_stop.store(true); }

// Parsed `--name value` / `--name=value` flags; booleans are bare.
class Flags {
 public:
  // `booleans`: flags that take no value. Errors name the flag.
  static absl::StatusOr<Flags> Parse(int argc, char** argv, int first,
                                     const std::set<std::string>& known,
                                     const std::set<std::string>& booleans) {
    Flags f;
    for (int i = first; i < argc; ++i) {
      std::string arg = argv[i];
      if (arg.rfind("--", 0) != 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("unexpected argument \"", arg, "\""));
      }
      std::string name = arg.substr(2), value;
      bool has_value = false;
      auto eq = name.find('=');
      if (eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_value = true;
      }
      if (!known.count(name)) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", name, ": unknown flag"));
      }
      if (booleans.count(name)) {
        if (has_value && value != "true" && value != "false") {
          return absl::InvalidArgumentError(
              absl::StrCat("--", name, ": must be true or false"));
        }
        f.values_[name] = has_value ? value : "true";
        continue;
      }
      if (!has_value) {
        if (i + 1 >= argc) {
          return absl::InvalidArgumentError(
              absl::StrCat("--", name, ": needs a value"));
        }
        value = argv[++i];
      }
      f.values_[name] = value;
    }
    return f;
  }

  bool Has(const std::string& n) const { return values_.count(n) > 0; }
  std::string Get(const std::string& n, const std::string& d = "") const {
    auto it = values_.find(n);
    return it == values_.end() ? d : it->second;
  }
  bool Bool(const std::string& n) const { return Get(n, "false") == "true"; }
  absl::StatusOr<std::string> Required(const std::string& n) const {
    if (!Has(n) || Get(n).empty()) {
      return absl::InvalidArgumentError(absl::StrCat("--", n, ": required"));
    }
    return Get(n);
  }
  absl::StatusOr<int64_t> Int(const std::string& n, int64_t d) const {
    if (!Has(n)) return d;
    const std::string s = Get(n);
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || *end != '\0' || errno != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", n, ": must be an integer (got \"", s, "\")"));
    }
    return static_cast<int64_t>(v);
  }

 private:
  std::map<std::string, std::string> values_;
};

void PrintEvent(const json& e) {
  // One line per event, flushed: the agent reads them as they come.
  std::cout << e.dump() << "\n" << std::flush;
}

int ErrorExit(const std::string& cls, const std::string& message, int code,
              int64_t peak = 0) {
  std::cerr << "roundhouse-worker: " << message << "\n";
  json e = {{"event", "error"}, {"class", cls}, {"message", message}};
  if (cls == "out_of_memory") e["peak_memory_bytes"] = peak;
  PrintEvent(e);
  return code;
}

int RunQuantize(int argc, char** argv) {
  auto flags = Flags::Parse(
      argc, argv, 2,
      {"model", "spec", "out", "checkpoint-dir", "device", "low-memory",
       "threads", "gpus"},
      {"low-memory"});
  if (!flags.ok()) {
    return ErrorExit("invalid_spec", std::string(flags.status().message()),
                     2);
  }
  QuantizeRequest req;
  for (const char* f : {"model", "spec", "out"}) {
    auto v = flags->Required(f);
    if (!v.ok()) {
      return ErrorExit("invalid_spec", std::string(v.status().message()), 2);
    }
  }
  req.model_dir = flags->Get("model");
  req.out_dir = flags->Get("out");
  req.checkpoint_dir = flags->Get("checkpoint-dir");
  req.device = flags->Get("device", "cpu");
  req.low_memory = flags->Bool("low-memory");
  if (req.device != "cpu" && req.device != "cuda") {
    return ErrorExit("invalid_spec",
                     "--device: must be \"cpu\" or \"cuda\" (got \"" +
                         req.device + "\")",
                     2);
  }
  auto gpus = flags->Int("gpus", 1);
  if (!gpus.ok() || *gpus < 1 || (*gpus > 1 && req.device != "cuda")) {
    return ErrorExit("invalid_spec",
                     "--gpus: must be an integer >= 1 (> 1 only with "
                     "--device cuda)",
                     2);
  }
  req.gpus = static_cast<int>(*gpus);
  auto threads = flags->Int("threads", 0);
  if (!threads.ok() || *threads < 0) {
    return ErrorExit("invalid_spec", "--threads: must be an integer >= 0", 2);
  }
  if (*threads > 0) torch::set_num_threads(static_cast<int>(*threads));

  const std::string spec_path = flags->Get("spec");
  auto text = ReadFile(spec_path);
  if (!text.ok()) {
    return ErrorExit("invalid_spec",
                     absl::StrCat("--spec: ", text.status().message()), 2);
  }
  auto config = ParseJobConfigText(*text);
  if (!config.ok()) {
    return ErrorExit("invalid_spec",
                     absl::StrCat(spec_path, ": ", config.status().message()),
                     2);
  }
  req.config = std::move(config).value();

  struct sigaction sa = {};
  sa.sa_handler = OnStopSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  req.should_stop = [] { return g_stop.load(); };
  req.on_event = [](const json& e) {
    PrintEvent(e);
    if (e.value("event", "") == "block") {
      std::cerr << "block " << e["block_index"] << "/" << e["blocks_total"]
                << " loss " << e["loss_before"] << " -> " << e["loss_after"]
                << " (" << e["seconds"] << " s)\n";
    }
  };

  auto result = Quantize(req);
  if (!result.ok()) {
    const absl::Status& s = result.status();
    const std::string msg(s.message());
    switch (s.code()) {
      case absl::StatusCode::kInvalidArgument:
      case absl::StatusCode::kNotFound:
        return ErrorExit("invalid_spec", msg, 2);
      case absl::StatusCode::kResourceExhausted: {
        int64_t peak = 0;
        if (auto p = s.GetPayload(kPeakMemoryPayload)) {
          peak = std::strtoll(std::string(*p).c_str(), nullptr, 10);
        }
        return ErrorExit("out_of_memory", msg, 3, peak);
      }
      case absl::StatusCode::kAborted:
        return ErrorExit("interrupted", msg, 4);
      default:
        return ErrorExit("internal", msg, 1);
    }
  }
  PrintEvent({{"event", "done"},
              {"artifact_dir", result->artifact_dir},
              {"manifest", result->manifest}});
  if (!result->quality_passed) {
    return ErrorExit("quality_gate", result->quality_message, 5);
  }
  return 0;
}

int RunInspect(int argc, char** argv) {
  auto flags = Flags::Parse(argc, argv, 2,
                            {"model", "json", "bits", "group-size"}, {"json"});
  if (!flags.ok()) {
    std::cerr << "inspect: " << flags.status().message() << "\n";
    return 2;
  }
  auto model = flags->Required("model");
  auto bits = flags->Int("bits", 4);
  auto group = flags->Int("group-size", 128);
  for (const absl::Status& s : {model.status(), bits.status(),
                                group.status()}) {
    if (!s.ok()) {
      std::cerr << "inspect: " << s.message() << "\n";
      return 2;
    }
  }
  auto report = InspectModel(*model, static_cast<int>(*bits),
                             static_cast<int>(*group));
  if (!report.ok()) {
    std::cerr << "inspect: " << report.status().message() << "\n";
    return 2;
  }
  if (flags->Bool("json")) {
    std::cout << report->dump(2) << "\n";
  } else {
    std::cout << FormatInspectReport(*report);
  }
  return 0;
}

int RunGenerate(int argc, char** argv) {
  auto flags = Flags::Parse(
      argc, argv, 2,
      {"family", "out", "preset", "layers", "hidden", "intermediate", "heads",
       "kv-heads", "head-dim", "vocab", "dtype", "seed", "calib-samples",
       "calib-seqlen", "max-shard-bytes"},
      {});
  if (!flags.ok()) {
    std::cerr << "generate: " << flags.status().message() << "\n";
    return 2;
  }
  GeneratorOptions o;
  auto family = flags->Required("family");
  auto out = flags->Required("out");
  if (!family.ok() || !out.ok()) {
    std::cerr << "generate: "
              << (!family.ok() ? family.status() : out.status()).message()
              << "\n";
    return 2;
  }
  o.family = *family;
  o.preset = flags->Get("preset", o.preset);
  o.dtype = flags->Get("dtype", o.dtype);
  struct IntFlag {
    const char* name;
    int* target;
  };
  IntFlag ints[] = {{"layers", &o.num_layers},
                    {"hidden", &o.hidden_size},
                    {"intermediate", &o.intermediate_size},
                    {"heads", &o.num_heads},
                    {"kv-heads", &o.num_kv_heads},
                    {"head-dim", &o.head_dim},
                    {"vocab", &o.vocab_size},
                    {"calib-samples", &o.calib_samples},
                    {"calib-seqlen", &o.calib_seqlen}};
  for (const IntFlag& f : ints) {
    auto v = flags->Int(f.name, *f.target);
    if (!v.ok()) {
      std::cerr << "generate: " << v.status().message() << "\n";
      return 2;
    }
    *f.target = static_cast<int>(*v);
  }
  auto seed = flags->Int("seed", 0);
  auto shard = flags->Int("max-shard-bytes", 0);
  if (!seed.ok() || !shard.ok() || *seed < 0 || *shard < 0) {
    std::cerr << "generate: --seed and --max-shard-bytes must be integers "
                 ">= 0\n";
    return 2;
  }
  o.seed = static_cast<uint64_t>(*seed);
  o.max_shard_bytes = static_cast<uint64_t>(*shard);
  absl::Status s = GenerateCheckpoint(o, *out);
  if (!s.ok()) {
    std::cerr << "generate: " << s.message() << "\n";
    return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  std::cerr << "generated " << o.family << " checkpoint in " << *out << "\n";
  return 0;
}

// `estimate`: common/memory_estimate.h on the model's config.json and the
// spec as the engine resolves it (defaults, preset).
int RunEstimate(int argc, char** argv) {
  auto flags = Flags::Parse(argc, argv, 2,
                            {"model", "spec", "device", "gpus", "low-memory"},
                            {"low-memory"});
  auto fail = [](absl::string_view message) {
    std::cerr << "estimate: " << message << "\n";
    return 2;
  };
  if (!flags.ok()) return fail(flags.status().message());
  auto model = flags->Required("model");
  auto spec_path = flags->Required("spec");
  auto gpus = flags->Int("gpus", 1);
  for (const absl::Status& s :
       {model.status(), spec_path.status(), gpus.status()}) {
    if (!s.ok()) return fail(s.message());
  }
  auto text = ReadFile(*spec_path);
  if (!text.ok()) return fail(absl::StrCat("--spec: ", text.status().message()));
  auto config = ParseJobConfigText(*text);
  if (!config.ok()) {
    return fail(absl::StrCat(*spec_path, ": ", config.status().message()));
  }
  auto shape = ReadModelShape(*model);
  if (!shape.ok()) return fail(shape.status().message());
  EstimateInputs in;
  in.nsamples = config->nsamples;
  in.seqlen = config->seqlen;
  in.batch_size = config->tune.batch_size;
  in.gradient_accumulate_steps = config->tune.gradient_accumulate_steps;
  in.iters = config->tune.iters;
  in.bits = config->global.bits;
  in.group_size = config->global.group_size;
  in.enable_minmax_tuning = config->tune.enable_minmax_tuning;
  in.enable_quanted_input = config->tune.enable_quanted_input;
  in.compute_dtype = config->compute_dtype;
  in.evaluation_enabled = config->evaluation.enabled;
  in.eval_samples = config->evaluation.eval_samples;
  EstimateOptions options;
  options.device = flags->Get("device", "cuda");
  options.low_memory = flags->Bool("low-memory");
  options.gpus = static_cast<int>(*gpus);
  auto estimate = EstimatePeakMemory(*shape, in, options);
  if (!estimate.ok()) return fail(estimate.status().message());
  std::cout << estimate->ToJson().dump(2) << "\n";
  return 0;
}

}  // namespace

int RunEngineCommand(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << kUsage;
    return 2;
  }
  const std::string cmd = argv[1];
  try {
    if (cmd == "--help" || cmd == "-h" || cmd == "help") {
      std::cout << kUsage;
      return 0;
    }
    for (int i = 2; i < argc; ++i) {
      if (std::string(argv[i]) == "--help") {
        std::cout << kUsage;
        return 0;
      }
    }
    if (cmd == "quantize") return RunQuantize(argc, argv);
    if (cmd == "inspect") return RunInspect(argc, argv);
    if (cmd == "generate") return RunGenerate(argc, argv);
    if (cmd == "estimate") return RunEstimate(argc, argv);
  } catch (const std::exception& e) {
    // Quantize converts libtorch errors itself; this catches the rest
    // (e.g. from generate / inspect) so no exception escapes main.
    std::cerr << "roundhouse-worker: unexpected exception: " << e.what()
              << "\n";
    return 1;
  }
  std::cerr << "roundhouse-worker: unknown command \"" << cmd << "\"\n"
            << kUsage;
  return 2;
}

}  // namespace roundhouse::engine
