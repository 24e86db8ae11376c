#include "client/upload.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <regex>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/files.h"
#include "nlohmann/json.hpp"

extern char** environ;

namespace roundhouse::client {
namespace {

// Single-quotes `s` for a POSIX shell unless it is made of safe characters.
std::string ShellQuote(const std::string& s) {
  static const std::regex kSafe("^[A-Za-z0-9_./:=@%+,-]+$");
  if (!s.empty() && std::regex_match(s, kSafe)) return s;
  std::string out = "'";
  for (char c : s) {
    if (c == '\'') {
      out += "'\\''";
    } else {
      out += c;
    }
  }
  return out + "'";
}

// Directories holding an exported checkpoint: manifest.json's "formats"
// ({name: {"directory": sub}}), else the top level.
std::vector<std::string> FormatDirectories(const std::string& dir) {
  std::vector<std::string> out;
  absl::StatusOr<std::string> text = ReadFile(JoinPath(dir, "manifest.json"));
  if (text.ok()) {
    nlohmann::json m =
        nlohmann::json::parse(*text, nullptr, /*allow_exceptions=*/false);
    if (m.is_object() && m.contains("formats") && m["formats"].is_object()) {
      for (const auto& [name, f] : m["formats"].items()) {
        if (f.is_object() && f.contains("directory") &&
            f["directory"].is_string()) {
          out.push_back(f["directory"].get<std::string>());
        }
      }
    }
  }
  if (out.empty()) out.push_back("");
  return out;
}

}  // namespace

absl::Status CheckDeliverable(const std::string& dir) {
  if (!IsDirectory(dir)) {
    return absl::NotFoundError(
        absl::StrCat("artifact directory '", dir, "' does not exist here"));
  }
  std::vector<std::string> missing;
  for (const char* f : kDeliverableFiles) {
    if (!PathExists(JoinPath(dir, f))) missing.push_back(f);
  }
  for (const std::string& sub : FormatDirectories(dir)) {
    const std::string rel = JoinPath(sub, "quantization_config.json");
    if (!PathExists(JoinPath(dir, rel))) missing.push_back(rel);
  }
  if (!missing.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("'", dir, "' is not a complete deliverable: missing ",
                     absl::StrJoin(missing, ", ")));
  }
  return absl::OkStatus();
}

absl::StatusOr<Endpoint> ParseEndpoint(const std::string& url) {
  auto bad = [&url](const std::string& why) {
    return absl::InvalidArgumentError(
        absl::StrCat("--endpoint '", url, "': ", why));
  };
  Endpoint e;
  std::string rest;
  if (absl::StartsWith(url, "https://")) {
    e.scheme = "https";
    e.port = 443;
    rest = url.substr(8);
  } else if (absl::StartsWith(url, "http://")) {
    e.scheme = "http";
    e.port = 80;
    rest = url.substr(7);
  } else {
    return bad("expected http://HOST[:PORT] or https://HOST[:PORT]");
  }
  const std::string authority = rest.substr(0, rest.find('/'));
  if (absl::StrContains(authority, "@")) return bad("user info not allowed");
  std::string port_text;
  if (absl::StartsWith(authority, "[")) {
    const size_t close = authority.find(']');
    if (close == std::string::npos) return bad("unterminated IPv6 literal");
    e.host = authority.substr(1, close - 1);
    const std::string after = authority.substr(close + 1);
    if (!after.empty()) {
      if (after[0] != ':') return bad("junk after the IPv6 literal");
      port_text = after.substr(1);
    }
  } else {
    const size_t colon = authority.find(':');
    e.host = authority.substr(0, colon);
    if (colon != std::string::npos) port_text = authority.substr(colon + 1);
  }
  if (e.host.empty()) return bad("no host");
  if (!port_text.empty() || absl::EndsWith(authority, ":")) {
    int port;
    if (!absl::SimpleAtoi(port_text, &port) || port < 1 || port > 65535) {
      return bad("the port must be 1..65535");
    }
    e.port = port;
  }
  return e;
}

absl::Status ValidateRepoId(const std::string& repo) {
  static const std::regex kRepo(
      "^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$");
  if (!std::regex_match(repo, kRepo) || absl::StrContains(repo, "..")) {
    return absl::InvalidArgumentError(
        absl::StrCat("--repo '", repo,
                     "': expected ORG/NAME (letters, digits, '.', '_', "
                     "'-')"));
  }
  return absl::OkStatus();
}

absl::StatusOr<UploadPlan> PlanUpload(const std::string& dir,
                                      const std::string& repo,
                                      const std::string& endpoint) {
  if (absl::Status s = ValidateRepoId(repo); !s.ok()) return s;
  if (absl::StatusOr<Endpoint> e = ParseEndpoint(endpoint); !e.ok()) {
    return e.status();
  }
  UploadPlan plan;
  plan.argv = {kUploaderProgram, "upload", repo, dir, ".",
               "--repo-type",    "model"};
  std::string normalized = endpoint;
  while (absl::EndsWith(normalized, "/")) normalized.pop_back();
  if (normalized != kDefaultHubEndpoint) {
    plan.env.push_back(absl::StrCat("HF_ENDPOINT=", endpoint));
  }
  std::vector<std::string> words;
  for (const std::string& v : plan.env) words.push_back(ShellQuote(v));
  for (const std::string& a : plan.argv) words.push_back(ShellQuote(a));
  plan.command_line = absl::StrJoin(words, " ");
  return plan;
}

absl::Status CheckEndpointReachable(const std::string& endpoint,
                                    absl::Duration timeout) {
  absl::StatusOr<Endpoint> e = ParseEndpoint(endpoint);
  if (!e.ok()) return e.status();
  const std::string where =
      absl::StrCat("hub endpoint ", endpoint, " (", e->host, ":", e->port, ")");
  addrinfo hints;
  std::memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port = absl::StrCat(e->port);
  if (int rc = ::getaddrinfo(e->host.c_str(), port.c_str(), &hints, &res);
      rc != 0) {
    return absl::UnavailableError(absl::StrCat(
        where,
        " is not reachable: cannot resolve the host: ", ::gai_strerror(rc)));
  }
  const absl::Time deadline = absl::Now() + timeout;
  std::string last_error = "no address";
  bool connected = false;
  for (addrinfo* ai = res; ai != nullptr && !connected; ai = ai->ai_next) {
    const int fd =
        ::socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC | SOCK_NONBLOCK,
                 ai->ai_protocol);
    if (fd < 0) {
      last_error = std::strerror(errno);
      continue;
    }
    int rc = ::connect(fd, ai->ai_addr, ai->ai_addrlen);
    if (rc == 0) {
      connected = true;
    } else if (errno == EINPROGRESS) {
      // Wait for the handshake until the shared deadline.
      while (true) {
        const int64_t ms = absl::ToInt64Milliseconds(deadline - absl::Now());
        if (ms <= 0) {
          last_error = "timed out";
          break;
        }
        pollfd p{fd, POLLOUT, 0};
        rc = ::poll(&p, 1, static_cast<int>(ms));
        if (rc < 0 && errno == EINTR) continue;
        if (rc <= 0) {
          last_error = rc == 0 ? "timed out" : std::strerror(errno);
          break;
        }
        int err = 0;
        socklen_t len = sizeof(err);
        ::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
        if (err == 0) {
          connected = true;
        } else {
          last_error = std::strerror(err);
        }
        break;
      }
    } else {
      last_error = std::strerror(errno);
    }
    ::close(fd);
  }
  ::freeaddrinfo(res);
  if (!connected) {
    return absl::UnavailableError(
        absl::StrCat(where, " is not reachable: ", last_error));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> FindProgram(const std::string& program,
                                        const std::string& path_env) {
  if (absl::StrContains(program, "/")) {
    if (::access(program.c_str(), X_OK) == 0) return program;
  } else {
    for (absl::string_view d : absl::StrSplit(path_env, ':')) {
      // An empty PATH entry means the current directory.
      const std::string candidate =
          JoinPath(d.empty() ? "." : std::string(d), program);
      struct stat st;
      if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
          ::access(candidate.c_str(), X_OK) == 0) {
        return candidate;
      }
    }
  }
  return absl::NotFoundError(absl::StrCat(
      "'", program, "' is not on PATH (", path_env,
      "); install it with `pip install -U \"huggingface_hub[cli]\"`"));
}

absl::StatusOr<int> RunUpload(const std::string& executable,
                              const UploadPlan& plan) {
  // Everything the child needs is built before fork: after it, the child
  // only calls execve and _exit.
  std::vector<std::string> env_strings;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const std::string entry = *e;
    const std::string name = entry.substr(0, entry.find('='));
    bool overridden = false;
    for (const std::string& o : plan.env) {
      overridden |= o.substr(0, o.find('=')) == name;
    }
    if (!overridden) env_strings.push_back(entry);
  }
  for (const std::string& o : plan.env) env_strings.push_back(o);
  std::vector<char*> envp, argv;
  for (std::string& s : env_strings) envp.push_back(s.data());
  envp.push_back(nullptr);
  std::vector<std::string> args = plan.argv;
  for (std::string& s : args) argv.push_back(s.data());
  argv.push_back(nullptr);

  const pid_t pid = ::fork();
  if (pid < 0) {
    return absl::InternalError(
        absl::StrCat("fork failed: ", std::strerror(errno)));
  }
  if (pid == 0) {
    ::execve(executable.c_str(), argv.data(), envp.data());
    ::_exit(127);
  }
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      return absl::InternalError(
          absl::StrCat("waitpid failed: ", std::strerror(errno)));
    }
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return absl::InternalError("the uploader ended in an unknown way");
}

}  // namespace roundhouse::client
