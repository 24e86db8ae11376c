#include "worker/engine/tokenizer/corpus_io.h"

#include <fstream>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace roundhouse::tokenizer {

absl::StatusOr<std::vector<std::string>> ReadCorpusFile(
    const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  std::vector<std::string> out;
  std::string line;
  int line_no = 0;
  while (std::getline(in, line)) {
    ++line_no;
    if (line.empty()) continue;
    auto j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_string()) {
      out.push_back(j.get<std::string>());
    } else if (j.is_object() && j.contains("base64") &&
               j["base64"].is_string()) {
      std::string bytes;
      if (!absl::Base64Unescape(j["base64"].get<std::string>(), &bytes)) {
        return absl::InvalidArgumentError(
            absl::StrCat(path, ":", line_no, ": field base64 is not base64"));
      }
      out.push_back(std::move(bytes));
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", line_no,
                       ": expected a JSON string or {\"base64\": \"...\"}"));
    }
  }
  return out;
}

}  // namespace roundhouse::tokenizer
