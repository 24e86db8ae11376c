#ifndef ROUNDHOUSE_CLIENT_CLI_H_
#define ROUNDHOUSE_CLIENT_CLI_H_

// The `roundhouse` command line:
//
//   roundhouse [--coordinator HOST:PORT] COMMAND [ARGS] [FLAGS]
//
//   submit [SPEC.json] [--model M] [--bits B] [--group-size G] [--sym|--asym]
//          [--iters N] [--nsamples N] [--seqlen N] [--batch-size N]
//          [--seed S] [--priority P] [--label k=v]... [--deadline-seconds D]
//          [--format F]... [--calibration PATH] [--idempotency-key K]
//          [--wait] [--json]
//   watch JOB [--json]
//   get JOB [--json]
//   list [--state S]... [--label k=v]... [--page-size N] [--page-token T]
//        [--all] [--json]
//   cancel JOB [--json]
//   inspect JOB [--json]
//   upload (--job JOB | --dir PATH) --repo ORG/NAME [--endpoint URL]
//          [--execute]                      (client/upload.h)
//
// Flags take `--name value` or `--name=value`, anywhere after the command.
// The coordinator address is --coordinator, else $ROUNDHOUSE_COORDINATOR,
// else 127.0.0.1:7600. Exit codes: client/exit_codes.h (also in --help).
//
// Output: results on stdout (with --json: protobuf JSON with the proto field
// names; `watch --json` prints one JobEvent object per line), diagnostics on
// stderr. `watch` (and `submit --wait`) redraws a one-line progress bar with
// '\r' when stdout is a terminal and prints one plain line per event
// otherwise.

#include <ostream>
#include <string>
#include <vector>

#include "absl/time/time.h"

namespace roundhouse::client {

// Where the CLI writes and what it knows about its environment. The streams
// are borrowed and must outlive RunCli.
struct CliIo {
  std::ostream* out = nullptr;
  std::ostream* err = nullptr;
  // stdout is a terminal: `watch` draws the '\r' progress bar.
  bool stdout_is_tty = false;
  // Used when --coordinator is absent (main: $ROUNDHOUSE_COORDINATOR or
  // 127.0.0.1:7600).
  std::string default_coordinator = "127.0.0.1:7600";
  // Deadline of each unary RPC.
  absl::Duration rpc_timeout = absl::Seconds(30);
  // `watch` reconnects after UNAVAILABLE (e.g. a coordinator restart) for
  // this long before giving up with exit code 3.
  absl::Duration watch_reconnect_timeout = absl::Seconds(60);
  // `upload --execute`: TCP connect timeout of the hub reachability check.
  absl::Duration hub_connect_timeout = absl::Seconds(3);
};

// Runs one command; `args` excludes the program name. Returns the exit code
// (see exit_codes.h). Thread-compatible.
int RunCli(const std::vector<std::string>& args, const CliIo& io);

// The --help text, including the exit codes.
std::string CliUsage();

}  // namespace roundhouse::client

#endif  // ROUNDHOUSE_CLIENT_CLI_H_
