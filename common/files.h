#ifndef ROUNDHOUSE_COMMON_FILES_H_
#define ROUNDHOUSE_COMMON_FILES_H_

// File-system helpers with the durability rules roundhouse promises.
// Implemented with POSIX calls, not std::filesystem: the CUDA libtorch wheel
// exports std::filesystem symbols of its own, and a binary linking it would
// bind to them (seen crashing in remove_all on the GPU machine).
//
// artifacts and checkpoints appear atomically (write to a temporary name,
// fsync, rename, fsync the directory) and nothing is left half written.
// All functions are thread-compatible (no shared state); errors name the path.

#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace roundhouse {

// Reads a whole file.
absl::StatusOr<std::string> ReadFile(const std::string& path);

// Writes `contents` to `path` atomically: a sibling temporary file is written,
// fsynced and renamed over `path`, then the directory is fsynced.
absl::Status WriteFileAtomically(const std::string& path,
                                 absl::string_view contents);

// fsyncs a file or directory.
absl::Status FsyncPath(const std::string& path);

// Renames `from` to `to` (same file system) and fsyncs the parent of `to`.
// Fails if `to` exists and is a non-empty directory.
absl::Status RenameDurably(const std::string& from, const std::string& to);

// mkdir -p.
absl::Status MakeDirs(const std::string& path);

// rm -rf; a missing path is not an error.
absl::Status RemoveTree(const std::string& path);

bool PathExists(const std::string& path);
bool IsDirectory(const std::string& path);

// Names of the regular files directly in `dir` (no recursion), sorted.
absl::StatusOr<std::vector<std::string>> ListDirectory(const std::string& dir);

// Regular files below `dir`, as paths relative to it, sorted.
absl::StatusOr<std::vector<std::string>> ListFilesRecursive(
    const std::string& dir);

// Joins path components with '/'.
std::string JoinPath(absl::string_view a, absl::string_view b);

// Canonical absolute path (symlinks resolved); the path must exist.
absl::StatusOr<std::string> RealPath(const std::string& path);

// True when `path` (canonical) equals `root` (canonical) or lies below it.
bool IsWithin(const std::string& path, const std::string& root);

}  // namespace roundhouse

#endif  // ROUNDHOUSE_COMMON_FILES_H_
