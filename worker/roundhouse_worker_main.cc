// roundhouse-worker: `agent` serves a coordinator; every other command
// (quantize, inspect, generate, --help) is the standalone engine.

#include <string>

#include "worker/engine/engine_cli.h"

#if __has_include("worker/agent/agent_cli.h")
#include "worker/agent/agent_cli.h"
#define ROUNDHOUSE_HAVE_AGENT 1
#endif

int main(int argc, char** argv) {
  if (argc >= 2 && std::string(argv[1]) == "agent") {
#ifdef ROUNDHOUSE_HAVE_AGENT
    return roundhouse::agent::RunAgentCommand(argc - 1, argv + 1);
#else
    return 2;
#endif
  }
  return roundhouse::engine::RunEngineCommand(argc, argv);
}
