#include "worker/agent/agent_flags.h"

#include <unistd.h>

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"

namespace roundhouse::agent {
namespace {

absl::Status Bad(absl::string_view flag, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("--", flag, ": ", why));
}

}  // namespace

std::string AgentUsage() {
  return R"(usage: roundhouse-worker agent --work-dir DIR --artifact-root DIR [flags]

Registers with a roundhouse coordinator, leases jobs and runs each one in a
child `<engine-binary> quantize` process. SIGTERM/SIGINT drains: the running
job stops at a block boundary after its checkpoint and is handed back.

  --coordinator HOST:PORT   coordinator address [127.0.0.1:7600]
  --worker-id ID            stable worker name [<hostname>-<pid>]
  --work-dir DIR            required; jobs/<job_id>/spec.json, checkpoint/
  --artifact-root DIR       required; artifacts land in DIR/<job_id>
  --device cpu|cuda         [cpu]
  --memory-bytes N          memory offered (per GPU on cuda); 0 = physical RAM
                            (cpu) or the first GPU's memory from nvidia-smi
                            (cuda) [0]
  --gpus LIST               cuda: GPU indices jobs may use, e.g. 0,1,3
                            [all GPUs nvidia-smi lists]
  --max-concurrent-jobs N   jobs run at once; 0 = one per GPU (cuda), 1 (cpu)
                            [0]; a cuda job also needs its gpu_count free GPUs
  --metrics-listen H:P      Prometheus /metrics endpoint, "" = off [""]
  --engine-binary PATH      [/proc/self/exe]
  --cancel-grace-seconds S  SIGTERM -> SIGKILL grace on cancel [10]
  --once                    exit after one job
  --threads N               engine --threads; 0 = engine default [0]
  --lease-wait-seconds S    how long one LeaseJob call blocks [5]
  --help                    this text

Exit status: 0 drained or --once done, 2 usage error, 1 other error.
)";
}

absl::StatusOr<AgentFlags> ParseAgentFlags(int argc, char** argv) {
  AgentFlags flags;
  AgentOptions& o = flags.options;
  o.worker_id.clear();
  using Setter = std::function<absl::Status(const std::string&)>;
  auto string_flag = [](std::string* out) -> Setter {
    return [out](const std::string& v) {
      *out = v;
      return absl::OkStatus();
    };
  };
  std::map<std::string, Setter> valued = {
      {"coordinator", string_flag(&flags.coordinator)},
      {"worker-id", string_flag(&o.worker_id)},
      {"work-dir", string_flag(&o.work_dir)},
      {"artifact-root", string_flag(&o.artifact_root)},
      {"device", string_flag(&o.device)},
      {"metrics-listen", string_flag(&flags.metrics_listen)},
      {"engine-binary", string_flag(&o.engine_binary)},
      {"memory-bytes",
       [&o](const std::string& v) {
         if (!absl::SimpleAtoi(v, &o.memory_bytes) || o.memory_bytes < 0) {
           return Bad("memory-bytes", "expected a non-negative integer");
         }
         return absl::OkStatus();
       }},
      {"max-concurrent-jobs",
       [&o](const std::string& v) {
         if (!absl::SimpleAtoi(v, &o.max_concurrent_jobs) ||
             o.max_concurrent_jobs < 0) {
           return Bad("max-concurrent-jobs", "expected a non-negative integer");
         }
         return absl::OkStatus();
       }},
      {"gpus",
       [&o](const std::string& v) {
         o.gpu_ids.clear();
         for (absl::string_view part : absl::StrSplit(v, ',')) {
           int id = -1;
           if (!absl::SimpleAtoi(part, &id) || id < 0) {
             return Bad("gpus", absl::StrCat("expected GPU indices like 0,1 "
                                             "(got '", v, "')"));
           }
           for (int seen : o.gpu_ids) {
             if (seen == id) {
               return Bad("gpus", absl::StrCat("GPU ", id, " listed twice"));
             }
           }
           o.gpu_ids.push_back(id);
         }
         return absl::OkStatus();
       }},
      {"threads",
       [&o](const std::string& v) {
         if (!absl::SimpleAtoi(v, &o.threads) || o.threads < 0) {
           return Bad("threads", "expected a non-negative integer");
         }
         return absl::OkStatus();
       }},
      {"cancel-grace-seconds",
       [&o](const std::string& v) {
         double s;
         if (!absl::SimpleAtod(v, &s) || !(s >= 0)) {
           return Bad("cancel-grace-seconds", "expected seconds >= 0");
         }
         o.cancel_grace = absl::Seconds(s);
         return absl::OkStatus();
       }},
      {"lease-wait-seconds",
       [&o](const std::string& v) {
         double s;
         if (!absl::SimpleAtod(v, &s) || !(s >= 0)) {
           return Bad("lease-wait-seconds", "expected seconds >= 0");
         }
         o.lease_wait = absl::Seconds(s);
         return absl::OkStatus();
       }},
  };
  std::map<std::string, bool*> booleans = {{"once", &o.once},
                                           {"help", &flags.help}};
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (arg.substr(0, 2) != "--" || arg.size() == 2) {
      return absl::InvalidArgumentError(absl::StrCat(
          "unexpected argument '", arg, "' (flags start with --)"));
    }
    arg.remove_prefix(2);
    std::string name(arg), value;
    bool has_value = false;
    if (size_t eq = arg.find('='); eq != absl::string_view::npos) {
      name = std::string(arg.substr(0, eq));
      value = std::string(arg.substr(eq + 1));
      has_value = true;
    }
    if (auto b = booleans.find(name); b != booleans.end()) {
      if (!has_value || value == "true" || value == "1") {
        *b->second = true;
      } else if (value == "false" || value == "0") {
        *b->second = false;
      } else {
        return Bad(name, "expected true or false");
      }
      continue;
    }
    auto v = valued.find(name);
    if (v == valued.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, " (see --help)"));
    }
    if (!has_value) {
      if (i + 1 >= argc) return Bad(name, "missing value");
      value = argv[++i];
    }
    absl::Status s = v->second(value);
    if (!s.ok()) return s;
  }
  if (flags.help) return flags;
  if (o.work_dir.empty()) return Bad("work-dir", "is required");
  if (o.artifact_root.empty()) return Bad("artifact-root", "is required");
  if (o.device != "cpu" && o.device != "cuda") {
    return Bad("device",
               absl::StrCat("must be cpu or cuda, got '", o.device, "'"));
  }
  if (flags.coordinator.empty()) return Bad("coordinator", "must not be empty");
  if (!o.gpu_ids.empty() && o.device != "cuda") {
    return Bad("gpus", "needs --device cuda");
  }
  o.coordinator = flags.coordinator;
  return flags;
}

absl::Status ResolveAgentDefaults(AgentFlags* flags) {
  AgentOptions& o = flags->options;
  if (o.worker_id.empty()) {
    char host[256] = {0};
    if (gethostname(host, sizeof(host) - 1) != 0 || host[0] == '\0') {
      return Bad("worker-id", "cannot read the host name; set it explicitly");
    }
    o.worker_id = absl::StrCat(host, "-", getpid());
  }
  if (o.device == "cpu") {
    o.gpu_count = 0;
    if (o.memory_bytes == 0) o.memory_bytes = PhysicalMemoryBytes();
    if (o.memory_bytes <= 0) {
      return Bad("memory-bytes", "cannot read the physical memory size");
    }
    return absl::OkStatus();
  }
  std::vector<GpuMemory> gpus = QueryGpuMemory();
  if (!o.gpu_ids.empty()) {
    o.gpu_count = static_cast<int32_t>(o.gpu_ids.size());
    for (int id : o.gpu_ids) {
      if (!gpus.empty() && id >= static_cast<int>(gpus.size())) {
        return Bad("gpus", absl::StrCat("GPU ", id, " does not exist (",
                                        gpus.size(), " listed by nvidia-smi)"));
      }
    }
  } else {
    o.gpu_count = gpus.empty() ? 1 : static_cast<int32_t>(gpus.size());
  }
  if (o.memory_bytes == 0) {
    if (gpus.empty()) {
      return Bad("memory-bytes",
                 "nvidia-smi is unavailable; give the GPU memory in bytes");
    }
    o.memory_bytes = gpus[o.gpu_ids.empty() ? 0 : o.gpu_ids[0]].total_bytes;
  }
  return absl::OkStatus();
}

}  // namespace roundhouse::agent
