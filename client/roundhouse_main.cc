// roundhouse: the command-line client of the roundhouse coordinator.
// Usage and exit codes: client/cli.h, `roundhouse --help`.

#include <stdlib.h>
#include <unistd.h>

#include <iostream>
#include <string>
#include <vector>

#include "client/cli.h"

int main(int argc, char** argv) {
  roundhouse::client::CliIo io;
  io.out = &std::cout;
  io.err = &std::cerr;
  io.stdout_is_tty = isatty(STDOUT_FILENO) == 1;
  if (const char* env = getenv("ROUNDHOUSE_COORDINATOR"); env && *env) {
    io.default_coordinator = env;
  }
  std::vector<std::string> args(argv + 1, argv + argc);
  return roundhouse::client::RunCli(args, io);
}
