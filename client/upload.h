#ifndef ROUNDHOUSE_CLIENT_UPLOAD_H_
#define ROUNDHOUSE_CLIENT_UPLOAD_H_

// `roundhouse upload`: publishing an artifact's deliverable folder to a
// model hub with the Hugging Face command line
// (`huggingface-cli upload REPO DIR . --repo-type model`).
//
// The pieces are separate so that the CLI can print the command without
// touching the network and tests can exercise each check:
//   CheckDeliverable      the folder holds what the engine's deliverable
//                         stage writes (worker/engine/deliverable.h)
//   PlanUpload            the exact command (argv, environment, shell text)
//   CheckEndpointReachable  TCP connect to the hub's host:port
//   FindProgram           the uploader on $PATH
//   RunUpload             fork/exec, wait, the child's exit status
//
// Thread-compatible; RunUpload forks, so call it from a process that can
// (no locks held by other threads across the fork matter: the child only
// calls execve).

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace roundhouse::client {

inline constexpr char kDefaultHubEndpoint[] = "https://huggingface.co";
inline constexpr char kUploaderProgram[] = "huggingface-cli";

// Files the deliverable stage writes at the top of the artifact directory.
// quantization_config.json is checked per export format directory (from
// manifest.json's "formats"; the top level when there is no manifest).
inline constexpr const char* kDeliverableFiles[] = {
    "README.md", "test_results.json", ".gitattributes", "manifest.json"};

// OK when `dir` is a directory holding every kDeliverableFiles entry and a
// quantization_config.json next to each exported config.json. Otherwise
// FailedPrecondition listing every missing path (NotFound when `dir` is not
// a directory).
absl::Status CheckDeliverable(const std::string& dir);

// An http(s) URL split for the reachability check.
struct Endpoint {
  std::string scheme;  // "http" or "https"
  std::string host;    // without brackets for IPv6 literals
  int port = 0;        // explicit, else 80 / 443
};
// InvalidArgument naming the endpoint for anything but
// http(s)://host[:port][/path].
absl::StatusOr<Endpoint> ParseEndpoint(const std::string& url);

// "ORG/NAME" as the hub spells repository ids: InvalidArgument otherwise.
absl::Status ValidateRepoId(const std::string& repo);

struct UploadPlan {
  std::vector<std::string> argv;  // argv[0] = kUploaderProgram
  // "HF_ENDPOINT=<url>" when the endpoint is not the default, else empty.
  std::vector<std::string> env;
  // What a person types: env prefix, then argv, shell-quoted where needed.
  std::string command_line;
};
// The command uploading `dir` (made absolute by the caller if wanted) to
// `repo` on `endpoint`. Validates repo and endpoint.
absl::StatusOr<UploadPlan> PlanUpload(const std::string& dir,
                                      const std::string& repo,
                                      const std::string& endpoint);

// Resolves the endpoint's host and opens (then closes) a TCP connection
// within `timeout`. Unavailable naming the endpoint when that fails.
absl::Status CheckEndpointReachable(const std::string& endpoint,
                                    absl::Duration timeout);

// The first executable `program` in the ':'-separated `path_env`
// ($PATH). NotFound naming the program and the search path.
absl::StatusOr<std::string> FindProgram(const std::string& program,
                                        const std::string& path_env);

// Runs `executable` with plan.argv and this process's environment plus
// plan.env (which overrides variables of the same name); stdin, stdout and
// stderr are inherited. Returns the child's exit code (128 + signal number
// when it was killed by a signal). Internal when fork/exec fails.
absl::StatusOr<int> RunUpload(const std::string& executable,
                              const UploadPlan& plan);

}  // namespace roundhouse::client

#endif  // ROUNDHOUSE_CLIENT_UPLOAD_H_
