// roundhouse-coordinator: the job queue and lease service.
//
//   roundhouse-coordinator --db /var/lib/roundhouse/coordinator.db
//       --model-root /models --hf-cache /models/hub
//
// Prints "roundhouse-coordinator listening on HOST:PORT" to stderr once
// serving. SIGTERM/SIGINT shut down gracefully.

#include <pthread.h>
#include <signal.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/synchronization/mutex.h"
#include "absl/strings/str_cat.h"
#include "server/coordinator_server.h"

ABSL_FLAG(std::string, listen, "127.0.0.1:7600", "gRPC listen address");
ABSL_FLAG(std::string, metrics_listen, "127.0.0.1:9600",
          "Prometheus /metrics listen address (empty: none)");
ABSL_FLAG(std::string, db, "", "SQLite database file (required)");
ABSL_FLAG(std::vector<std::string>, model_root, {},
          "Directories that may hold models (comma-separated list)");
ABSL_FLAG(std::string, hf_cache, "",
          "Shared Hugging Face hub cache for hf://ORG/NAME[@REV] models");
ABSL_FLAG(double, lease_timeout_seconds, 15,
          "A lease without heartbeat for this long expires");
ABSL_FLAG(double, heartbeat_interval_seconds, 3,
          "Heartbeat interval told to workers");
ABSL_FLAG(double, aging_interval_seconds, 60,
          "Seconds of waiting that add one point of priority");
ABSL_FLAG(int, max_uncounted_retries, 10,
          "Requeues after worker loss/preemption before a job fails");

namespace {

// The documented flags are dashed (--model-root); absl names them with
// underscores. Rewrite dashed names and merge repeated --model-root
// occurrences into one comma list, so both spellings and repetition work.
std::vector<std::string> NormalizeArgs(int argc, char** argv) {
  std::vector<std::string> out;
  std::vector<std::string> roots;
  out.push_back(argv[0]);
  for (int i = 1; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--") {
      for (; i < argc; ++i) out.push_back(argv[i]);
      break;
    }
    if (arg.rfind("--", 0) == 0) {
      size_t eq = arg.find('=');
      std::string name = arg.substr(2, eq == std::string::npos ? eq : eq - 2);
      for (char& ch : name) {
        if (ch == '-') ch = '_';
      }
      std::string rest = eq == std::string::npos ? "" : arg.substr(eq);
      if (name == "model_root") {
        if (eq != std::string::npos) {
          roots.push_back(rest.substr(1));
        } else if (i + 1 < argc) {
          roots.push_back(argv[++i]);
        }
        continue;
      }
      arg = "--" + name + rest;
    }
    out.push_back(arg);
  }
  if (!roots.empty()) {
    std::string joined;
    for (const auto& r : roots) joined += (joined.empty() ? "" : ",") + r;
    out.push_back("--model_root=" + joined);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "roundhouse-coordinator --db FILE --model-root DIR [--model-root DIR] "
      "[flags]");
  // Debian's Abseil tracks lock order on every Mutex acquisition (a
  // debugging aid that cost ~7% of CPU in the submit benchmark); the unit
  // tests keep it on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  std::vector<std::string> args = NormalizeArgs(argc, argv);
  std::vector<char*> arg_ptrs;
  for (auto& a : args) arg_ptrs.push_back(a.data());
  absl::ParseCommandLine(static_cast<int>(arg_ptrs.size()), arg_ptrs.data());
  using roundhouse::server::CoordinatorServer;
  roundhouse::server::CoordinatorServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);
  auto& c = options.coordinator;
  c.db_path = absl::GetFlag(FLAGS_db);
  c.models.model_roots = absl::GetFlag(FLAGS_model_root);
  c.models.hf_cache = absl::GetFlag(FLAGS_hf_cache);
  double lease = absl::GetFlag(FLAGS_lease_timeout_seconds);
  double heartbeat = absl::GetFlag(FLAGS_heartbeat_interval_seconds);
  double aging = absl::GetFlag(FLAGS_aging_interval_seconds);
  if (c.db_path.empty()) {
    std::fprintf(stderr, "roundhouse-coordinator: --db is required\n");
    return 2;
  }
  if (!(lease > 0) || !(heartbeat > 0) || !(aging > 0) || heartbeat >= lease) {
    std::fprintf(stderr,
                 "roundhouse-coordinator: --lease-timeout-seconds, "
                 "--heartbeat-interval-seconds and --aging-interval-seconds "
                 "must be > 0, and the heartbeat interval below the lease "
                 "timeout\n");
    return 2;
  }
  if (absl::GetFlag(FLAGS_max_uncounted_retries) < 0) {
    std::fprintf(stderr,
                 "roundhouse-coordinator: --max-uncounted-retries must be "
                 ">= 0\n");
    return 2;
  }
  c.lease_timeout = absl::Seconds(lease);
  c.heartbeat_interval = absl::Seconds(heartbeat);
  c.aging_interval = absl::Seconds(aging);
  c.max_uncounted_retries = absl::GetFlag(FLAGS_max_uncounted_retries);

  // Block the shutdown signals in every thread; main waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  auto server = CoordinatorServer::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "roundhouse-coordinator: %s\n",
                 server.status().ToString().c_str());
    return 1;
  }
  std::string line = absl::StrCat("roundhouse-coordinator listening on ",
                                  (*server)->address(), "\n");
  std::fputs(line.c_str(), stderr);
  std::fflush(stderr);
  int sig = 0;
  sigwait(&signals, &sig);
  std::fprintf(stderr, "roundhouse-coordinator: signal %d, shutting down\n",
               sig);
  (*server)->Shutdown();
  std::fprintf(stderr, "roundhouse-coordinator: stopped\n");
  return 0;
}
