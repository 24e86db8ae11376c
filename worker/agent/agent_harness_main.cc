// roundhouse_agent_harness: RunAgentCommand as its own process, so agent_test
// can exercise the real signal handling (SIGTERM drain) and the metrics
// endpoint without the engine. Usage: roundhouse_agent_harness agent [flags].

#include <stdio.h>
#include <string.h>

#include "worker/agent/agent_cli.h"

int main(int argc, char** argv) {
  if (argc < 2 || strcmp(argv[1], "agent") != 0) {
    fprintf(stderr, "usage: %s agent [flags]\n", argv[0]);
    return 2;
  }
  return roundhouse::agent::RunAgentCommand(argc - 1, argv + 1);
}
