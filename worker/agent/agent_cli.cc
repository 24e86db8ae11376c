#include "worker/agent/agent_cli.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <time.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "grpcpp/grpcpp.h"
#include "worker/agent/agent.h"
#include "worker/agent/agent_flags.h"
#include "worker/agent/agent_metrics.h"

namespace roundhouse::agent {

int RunAgentCommand(int argc, char** argv) {
  absl::StatusOr<AgentFlags> parsed = ParseAgentFlags(argc, argv);
  if (!parsed.ok()) {
    fprintf(stderr, "roundhouse-worker agent: %s\n",
            std::string(parsed.status().message()).c_str());
    return 2;
  }
  AgentFlags flags = *std::move(parsed);
  if (flags.help) {
    fputs(AgentUsage().c_str(), stdout);
    return 0;
  }
  if (absl::Status s = ResolveAgentDefaults(&flags); !s.ok()) {
    fprintf(stderr, "roundhouse-worker agent: %s\n",
            std::string(s.message()).c_str());
    return 2;
  }

  // Block SIGTERM/SIGINT before any thread exists (gRPC's included) so that
  // only the sigwait thread below receives them; children get a clean mask.
  sigset_t drain_signals;
  sigemptyset(&drain_signals);
  sigaddset(&drain_signals, SIGTERM);
  sigaddset(&drain_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &drain_signals, nullptr);

  AgentMetrics metrics;
  if (!flags.metrics_listen.empty()) {
    if (absl::Status s = metrics.StartExposer(flags.metrics_listen); !s.ok()) {
      fprintf(stderr, "roundhouse-worker agent: %s\n",
              std::string(s.message()).c_str());
      return 2;
    }
  }
  std::shared_ptr<grpc::Channel> channel = grpc::CreateChannel(
      flags.coordinator, grpc::InsecureChannelCredentials());
  Agent agent(flags.options, roundhouse::v1::WorkerService::NewStub(channel),
              &metrics);

  std::atomic<bool> done{false};
  std::thread signal_waiter([&] {
    const timespec poll = {0, 200 * 1000 * 1000};
    while (!done.load()) {
      const int sig = sigtimedwait(&drain_signals, nullptr, &poll);
      if (sig == SIGTERM || sig == SIGINT) {
        if (agent.draining()) {
          fprintf(stderr, "roundhouse-worker agent: already draining\n");
        }
        agent.RequestDrain();
      }
    }
  });
  absl::Status s = agent.Run();
  done.store(true);
  signal_waiter.join();
  if (!s.ok()) {
    fprintf(stderr, "roundhouse-worker agent: %s\n",
            std::string(s.message()).c_str());
    return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  }
  return 0;
}

}  // namespace roundhouse::agent
