#ifndef ROUNDHOUSE_WORKER_AGENT_AGENT_FLAGS_H_
#define ROUNDHOUSE_WORKER_AGENT_AGENT_FLAGS_H_

// Command-line parsing of `roundhouse-worker agent` (flags documented in
// agent_cli.h). Plain parsing instead of absl flags on purpose: the agent
// and the engine commands live in one binary, and global absl flags such as
// --device or --threads would collide with the engine's.

#include <string>

#include "absl/status/statusor.h"
#include "worker/agent/agent.h"

namespace roundhouse::agent {

struct AgentFlags {
  AgentOptions options;  // worker_id/memory_bytes may still be unset
  std::string coordinator = "127.0.0.1:7600";
  std::string metrics_listen;  // "" = no metrics endpoint
  bool help = false;
};

// Parses `argv[1..argc)` (argv[0] is the command name "agent"). Errors are
// INVALID_ARGUMENT naming the flag. Does not touch the system.
absl::StatusOr<AgentFlags> ParseAgentFlags(int argc, char** argv);

// Fills what ParseAgentFlags left to the machine: worker_id
// (<hostname>-<pid>), memory_bytes (physical RAM for cpu, GPU 0's memory via
// nvidia-smi for cuda) and gpu_count. Errors name the flag to set instead.
absl::Status ResolveAgentDefaults(AgentFlags* flags);

// The --help text.
std::string AgentUsage();

}  // namespace roundhouse::agent

#endif  // ROUNDHOUSE_WORKER_AGENT_AGENT_FLAGS_H_
