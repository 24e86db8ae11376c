#include "worker/agent/child_process.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"

namespace roundhouse::agent {

std::string ChildExit::Describe() const {
  if (signaled) {
    return absl::StrCat("signal ", signal_number, " (",
                        strsignal(signal_number), ")");
  }
  return absl::StrCat("exit code ", exit_code);
}

absl::StatusOr<std::unique_ptr<ChildProcess>> ChildProcess::Spawn(
    const std::vector<std::string>& argv,
    const std::vector<std::pair<std::string, std::string>>& env) {
  if (argv.empty() || argv[0].empty()) {
    return absl::InvalidArgumentError("empty engine command line");
  }
  // Everything the child needs is prepared before fork: after fork only
  // async-signal-safe calls are allowed (the agent is multi-threaded).
  std::vector<char*> c_argv;
  c_argv.reserve(argv.size() + 1);
  for (const std::string& a : argv)
    c_argv.push_back(const_cast<char*>(a.c_str()));
  c_argv.push_back(nullptr);
  // The environment: inherited entries not overridden, then the overrides.
  std::vector<std::string> env_strings;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string entry(*e);
    const std::string name = entry.substr(0, entry.find('='));
    bool overridden = false;
    for (const auto& [k, v] : env) overridden = overridden || k == name;
    if (!overridden) env_strings.push_back(entry);
  }
  for (const auto& [k, v] : env) env_strings.push_back(k + "=" + v);
  std::vector<char*> c_env;
  c_env.reserve(env_strings.size() + 1);
  for (const std::string& e : env_strings) {
    c_env.push_back(const_cast<char*>(e.c_str()));
  }
  c_env.push_back(nullptr);

  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe2: ", strerror(errno)));
  }
  int devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (devnull < 0) {
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    return absl::InternalError(
        absl::StrCat("open /dev/null: ", strerror(errno)));
  }
  const pid_t parent = getpid();
  const pid_t pid = fork();
  if (pid < 0) {
    const int err = errno;
    close(pipe_fds[0]);
    close(pipe_fds[1]);
    close(devnull);
    return absl::ResourceExhaustedError(absl::StrCat("fork: ", strerror(err)));
  }
  if (pid == 0) {
    setpgid(0, 0);
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    dup2(devnull, STDIN_FILENO);
    dup2(pipe_fds[1], STDOUT_FILENO);
    execve(c_argv[0], c_argv.data(), c_env.data());
    const char msg[] = "roundhouse-worker agent: cannot exec the engine\n";
    ssize_t ignored = write(STDERR_FILENO, msg, sizeof(msg) - 1);
    (void)ignored;
    _exit(127);
  }
  // Also set the group from the parent side, so a signal sent right after
  // Spawn returns cannot race the child's own setpgid.
  setpgid(pid, pid);
  close(pipe_fds[1]);
  close(devnull);
  return std::unique_ptr<ChildProcess>(new ChildProcess(pid, pipe_fds[0]));
}

ChildProcess::~ChildProcess() {
  if (!exit_.has_value()) {
    SignalGroup(SIGKILL);
    int status;
    while (waitpid(pid_, &status, 0) < 0 && errno == EINTR) {
    }
  }
  if (stdout_fd_ >= 0) close(stdout_fd_);
}

void ChildProcess::SignalGroup(int sig) { kill(-pid_, sig); }

std::optional<ChildExit> ChildProcess::TryWait() {
  if (exit_.has_value()) return exit_;
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid_, &status, WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == 0) return std::nullopt;
  ChildExit e;
  if (r < 0) {
    // Only possible if someone else reaped it; report as a crash.
    e.signaled = true;
    e.signal_number = SIGKILL;
  } else if (WIFSIGNALED(status)) {
    e.signaled = true;
    e.signal_number = WTERMSIG(status);
  } else {
    e.exit_code = WEXITSTATUS(status);
  }
  exit_ = e;
  return exit_;
}

}  // namespace roundhouse::agent
