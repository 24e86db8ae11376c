#ifndef ROUNDHOUSE_WORKER_AGENT_CHILD_PROCESS_H_
#define ROUNDHOUSE_WORKER_AGENT_CHILD_PROCESS_H_

// A job's engine process: fork+exec with stdout on a pipe, in its own process
// group so that signals reach everything it started (and a crash in libtorch
// takes down only that group, never the agent).

#include <sys/types.h>

#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace roundhouse::agent {

// How a child ended.
struct ChildExit {
  bool signaled = false;         // true: killed by `signal_number`
  int exit_code = 0;             // valid when !signaled
  int signal_number = 0;         // valid when signaled
  std::string Describe() const;  // "exit code 3" / "signal 9 (Killed)"
};

// Thread-compatible: one thread owns the object (spawns, signals, reaps);
// `stdout_fd()` may be read by another thread until that thread sees EOF.
class ChildProcess {
 public:
  // Starts `argv[0]` (a path, not searched in PATH) with `argv`. The child's
  // stdout is a pipe readable through stdout_fd(); stdin is /dev/null;
  // stderr is inherited. The child gets a fresh process group, an empty
  // signal mask, default SIGPIPE/SIGTERM/SIGINT dispositions, and SIGKILL if
  // the spawning thread dies (PR_SET_PDEATHSIG). Its environment is the
  // agent's with `env` applied on top (NAME -> value; e.g.
  // CUDA_VISIBLE_DEVICES). An exec failure shows up as exit code 127 with a
  // message on stderr.
  static absl::StatusOr<std::unique_ptr<ChildProcess>> Spawn(
      const std::vector<std::string>& argv,
      const std::vector<std::pair<std::string, std::string>>& env = {});

  // Kills (SIGKILL) and reaps a child still running; closes the pipe.
  ~ChildProcess();

  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  pid_t pid() const { return pid_; }
  // Read end of the child's stdout; owned by this object (closed in the
  // destructor, so readers must finish first).
  int stdout_fd() const { return stdout_fd_; }

  // Sends `sig` to the child's whole process group. Safe to call after the
  // child exited (stragglers of the group still get it; an empty group is
  // not an error).
  void SignalGroup(int sig);

  // Non-blocking reap; nullopt while running. After it returned a value,
  // later calls return the same value.
  std::optional<ChildExit> TryWait();

 private:
  ChildProcess(pid_t pid, int stdout_fd) : pid_(pid), stdout_fd_(stdout_fd) {}
  pid_t pid_;
  int stdout_fd_;
  std::optional<ChildExit> exit_;
};

}  // namespace roundhouse::agent

#endif  // ROUNDHOUSE_WORKER_AGENT_CHILD_PROCESS_H_
