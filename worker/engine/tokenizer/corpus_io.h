#ifndef ROUNDHOUSE_WORKER_ENGINE_TOKENIZER_CORPUS_IO_H_
#define ROUNDHOUSE_WORKER_ENGINE_TOKENIZER_CORPUS_IO_H_
// Reader for the tokenizer test/benchmark corpus format shared with the
// JavaScript reference scripts (tests/tokenizer/*.js): one entry per line,
// either a JSON string (the text) or {"base64": "..."} (raw bytes, used for
// invalid UTF-8, which a JSON string cannot carry).
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace roundhouse::tokenizer {

// Reads every entry of `path` as raw bytes. Errors name the file and line.
absl::StatusOr<std::vector<std::string>> ReadCorpusFile(
    const std::string& path);

}  // namespace roundhouse::tokenizer

#endif  // ROUNDHOUSE_WORKER_ENGINE_TOKENIZER_CORPUS_IO_H_
