#include "worker/engine/tokenizer/calibration.h"

#include <algorithm>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/files.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "nlohmann/json.hpp"
#include "worker/engine/tokenizer/tokenizer.h"

namespace roundhouse::calibration {
namespace {

using json = nlohmann::json;
using tokenizer::Tokenizer;

constexpr int kQueryAugmentationTokens = 10;
constexpr char kQueryAugmentationToken[] = "<|endoftext|>";

// One record of the source, before tokenization.
struct Record {
  std::string origin;  // "file:line", for error messages
  std::string text;
  std::vector<int32_t> ids;
  bool has_ids = false;
  std::string stratum;
};

absl::Status Invalid(const std::string& msg) {
  return absl::InvalidArgumentError(msg);
}

absl::Status ValidateOptions(const CalibrationOptions& o) {
  if (o.path.empty()) return Invalid("calibration.path: required");
  if (o.format != "" && o.format != "jsonl" && o.format != "text" &&
      o.format != "dir") {
    return Invalid(absl::StrCat("calibration.format: \"", o.format,
                                "\" is not one of \"\", jsonl, text, dir"));
  }
  if (o.selection != "random" && o.selection != "stratified") {
    return Invalid(absl::StrCat("calibration.selection: \"", o.selection,
                                "\" is not one of random, stratified"));
  }
  if (o.selection == "stratified" && o.stratify_column.empty()) {
    return Invalid(
        "calibration.stratify_column: required for stratified selection");
  }
  if (o.templ != "raw" && o.templ != "colqwen3_query" && o.templ != "pack") {
    return Invalid(absl::StrCat("calibration.template: \"", o.templ,
                                "\" is not one of raw, colqwen3_query, pack"));
  }
  if (o.templ == "pack" && o.selection == "stratified") {
    return Invalid(
        "calibration.selection: stratified selection cannot be combined "
        "with the pack template (chunks mix documents)");
  }
  if (o.nsamples <= 0) {
    return Invalid(
        absl::StrCat("calibration.nsamples: must be > 0, got ", o.nsamples));
  }
  if (o.seqlen <= 0) {
    return Invalid(
        absl::StrCat("calibration.seqlen: must be > 0, got ", o.seqlen));
  }
  if (o.eval_samples < 0) {
    return Invalid(absl::StrCat("calibration.eval_samples: must be >= 0, got ",
                                o.eval_samples));
  }
  return absl::OkStatus();
}

bool HasSuffix(const std::string& s, const char* suffix) {
  return absl::EndsWith(s, suffix);
}

// Reads the lines of `path`, rejecting invalid UTF-8 with file:line.
absl::Status ForEachLine(
    const std::string& path,
    const std::function<absl::Status(std::string_view, int)>& fn) {
  ASSIGN_OR_RETURN(std::string content, ReadFile(path));
  size_t start = 0;
  int line_no = 0;
  while (start < content.size()) {
    size_t end = content.find('\n', start);
    if (end == std::string::npos) end = content.size();
    ++line_no;
    std::string_view line(content.data() + start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    size_t bad = 0;
    if (!tokenizer::IsValidUtf8(line, &bad)) {
      return Invalid(absl::StrCat(
          path, ":", line_no, ": invalid UTF-8 at byte ", bad, " of the line"));
    }
    RETURN_IF_ERROR(fn(line, line_no));
    start = end + 1;
  }
  return absl::OkStatus();
}

bool IsBlank(std::string_view s) {
  for (char c : s) {
    if (c != ' ' && c != '\t' && c != '\r' && c != '\n') return false;
  }
  return true;
}

absl::Status ReadText(const std::string& path, std::vector<Record>* out) {
  return ForEachLine(path, [&](std::string_view line, int n) {
    if (IsBlank(line)) return absl::OkStatus();
    Record r;
    r.origin = absl::StrCat(path, ":", n);
    r.text.assign(line.data(), line.size());
    out->push_back(std::move(r));
    return absl::OkStatus();
  });
}

absl::Status ReadJsonl(const std::string& path, const CalibrationOptions& o,
                       std::string* field, std::vector<Record>* out) {
  return ForEachLine(path, [&](std::string_view line, int n) {
    if (IsBlank(line)) return absl::OkStatus();
    const std::string where = absl::StrCat(path, ":", n);
    json j = json::parse(line.begin(), line.end(), nullptr,
                         /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      return Invalid(absl::StrCat(where, ": not a JSON object"));
    }
    if (field->empty()) *field = j.contains("input_ids") ? "input_ids" : "text";
    if (!j.contains(*field)) {
      return Invalid(absl::StrCat(where, ": field \"", *field,
                                  "\" not found (calibration.field)"));
    }
    Record r;
    r.origin = where;
    const json& v = (*j.find(*field));
    if (v.is_string()) {
      r.text = v.get<std::string>();
    } else if (v.is_array()) {
      r.has_ids = true;
      r.ids.reserve(v.size());
      for (size_t i = 0; i < v.size(); ++i) {
        if (!v[i].is_number_integer() || v[i].get<int64_t>() < 0 ||
            v[i].get<int64_t>() > INT32_MAX) {
          return Invalid(absl::StrCat(where, ": field \"", *field, "\"[", i,
                                      "] is not a non-negative token id"));
        }
        r.ids.push_back(v[i].get<int32_t>());
      }
    } else {
      return Invalid(absl::StrCat(where, ": field \"", *field,
                                  "\" must be a string or a list of ids"));
    }
    if (!o.stratify_column.empty()) {
      auto it = j.find(o.stratify_column);
      if (it == j.end() || it->is_null()) {
        return Invalid(absl::StrCat(where, ": stratify column \"",
                                    o.stratify_column, "\" not found"));
      }
      r.stratum = it->is_string() ? it->get<std::string>() : it->dump();
    }
    out->push_back(std::move(r));
    return absl::OkStatus();
  });
}

absl::StatusOr<std::vector<Record>> ReadRecords(const CalibrationOptions& o,
                                                std::string* field) {
  std::string format = o.format;
  const bool is_dir = IsDirectory(o.path);
  if (format.empty()) {
    format = is_dir ? "dir"
             : (HasSuffix(o.path, ".jsonl") || HasSuffix(o.path, ".json"))
                 ? "jsonl"
                 : "text";
  }
  if (format == "dir" && !is_dir) {
    return Invalid(absl::StrCat("calibration.path: ", o.path,
                                " is not a directory (format dir)"));
  }
  if (format != "dir" && is_dir) {
    return Invalid(absl::StrCat("calibration.path: ", o.path,
                                " is a directory but format is ", format));
  }
  std::vector<Record> records;
  std::vector<std::pair<std::string, bool>> files;  // path, is_jsonl
  if (format == "dir") {
    ASSIGN_OR_RETURN(std::vector<std::string> rel, ListFilesRecursive(o.path));
    std::sort(rel.begin(), rel.end());
    for (const std::string& r : rel) {
      const bool jsonl = HasSuffix(r, ".jsonl") || HasSuffix(r, ".json");
      if (jsonl || HasSuffix(r, ".txt")) {
        files.emplace_back(JoinPath(o.path, r), jsonl);
      }
    }
    if (files.empty()) {
      return Invalid(
          absl::StrCat("calibration.path: no .jsonl, .json or .txt "
                       "files below ",
                       o.path));
    }
  } else {
    files.emplace_back(o.path, format == "jsonl");
  }
  for (const auto& [file, jsonl] : files) {
    if (!jsonl && !o.stratify_column.empty()) {
      return Invalid(absl::StrCat(file, ": plain text has no column \"",
                                  o.stratify_column, "\" to stratify by"));
    }
    if (jsonl) {
      RETURN_IF_ERROR(ReadJsonl(file, o, field, &records));
    } else {
      RETURN_IF_ERROR(ReadText(file, &records));
    }
  }
  if (records.empty()) {
    return Invalid(absl::StrCat("calibration.path: ", o.path,
                                " holds no records (empty dataset)"));
  }
  return records;
}

// tokenizer_config.json token fields are a string or {"content": ...}.
std::optional<std::string> ConfigToken(const json& cfg, const char* key) {
  auto it = cfg.find(key);
  if (it == cfg.end()) return std::nullopt;
  if (it->is_string()) return it->get<std::string>();
  if (it->is_object() && it->contains("content") &&
      (*it)["content"].is_string()) {
    return (*it)["content"].get<std::string>();
  }
  return std::nullopt;
}

struct TokenizerBundle {
  std::unique_ptr<Tokenizer> tok;
  std::optional<int32_t> pad, bos, eos;
};

absl::StatusOr<TokenizerBundle> LoadTokenizerDir(const std::string& dir,
                                                 bool required) {
  TokenizerBundle b;
  if (dir.empty()) {
    if (required) {
      return Invalid(
          "calibration.tokenizer_dir: required for text data (a folder "
          "holding tokenizer.json)");
    }
    return b;
  }
  const std::string tok_path = JoinPath(dir, "tokenizer.json");
  if (!IsDirectory(dir)) {
    return Invalid(absl::StrCat("calibration.tokenizer_dir: ", dir,
                                " is not a directory"));
  }
  auto tok = Tokenizer::LoadFromFile(tok_path);
  if (!tok.ok()) {
    if (absl::IsNotFound(tok.status()) && !required) return b;
    return Invalid(
        absl::StrCat("calibration.tokenizer_dir: ", tok.status().message()));
  }
  b.tok = std::move(tok).value();
  const std::string cfg_path = JoinPath(dir, "tokenizer_config.json");
  auto cfg_text = ReadFile(cfg_path);
  if (cfg_text.ok()) {
    json cfg = json::parse(*cfg_text, nullptr, /*allow_exceptions=*/false);
    if (cfg.is_discarded() || !cfg.is_object()) {
      return Invalid(absl::StrCat(cfg_path, ": not a JSON object"));
    }
    auto resolve =
        [&](const char* key) -> absl::StatusOr<std::optional<int32_t>> {
      auto t = ConfigToken(cfg, key);
      if (!t.has_value()) return std::optional<int32_t>();
      auto id = b.tok->TokenToId(*t);
      if (!id.has_value()) {
        return Invalid(absl::StrCat(cfg_path, ": ", key, " \"", *t,
                                    "\" is not in tokenizer.json"));
      }
      return id;
    };
    ASSIGN_OR_RETURN(b.pad, resolve("pad_token"));
    ASSIGN_OR_RETURN(b.bos, resolve("bos_token"));
    ASSIGN_OR_RETURN(b.eos, resolve("eos_token"));
  }
  return b;
}

// Python's str.strip(): leading/trailing Unicode whitespace. The ASCII set
// plus the common Unicode spaces covers real query text.
std::string PyStrip(std::string_view s) {
  auto is_space_at = [&](size_t pos, size_t* len) {
    const auto c = static_cast<unsigned char>(s[pos]);
    if (c == ' ' || (c >= 0x09 && c <= 0x0D) || (c >= 0x1C && c <= 0x1F)) {
      *len = 1;
      return true;
    }
    static const char* kSpaces[] = {
        "\xC2\x85",     "\xC2\xA0",     "\xE3\x80\x80", "\xE2\x80\xA8",
        "\xE2\x80\xA9", "\xE2\x80\xAF", "\xE2\x81\x9F", "\xE1\x9A\x80"};
    for (const char* sp : kSpaces) {
      const size_t n = std::char_traits<char>::length(sp);
      if (s.compare(pos, n, sp) == 0) {
        *len = n;
        return true;
      }
    }
    // U+2000..U+200A: E2 80 80..8A
    if (pos + 2 < s.size() + 0 && c == 0xE2 &&
        static_cast<unsigned char>(s[pos + 1]) == 0x80 &&
        static_cast<unsigned char>(s[pos + 2]) >= 0x80 &&
        static_cast<unsigned char>(s[pos + 2]) <= 0x8A) {
      *len = 3;
      return true;
    }
    return false;
  };
  size_t begin = 0, len = 0;
  while (begin < s.size() && is_space_at(begin, &len)) begin += len;
  size_t end = s.size();
  while (end > begin) {
    size_t start = end - 1;
    while (start > begin &&
           (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) {
      --start;
    }
    if (!is_space_at(start, &len) || start + len != end) break;
    end = start;
  }
  return std::string(s.substr(begin, end - begin));
}

// The reference AutoRound filter (autoround-spec §2.9).
bool PassesDropShort(const std::vector<int32_t>& ids, int seqlen) {
  if (static_cast<int>(ids.size()) < seqlen) return false;
  const int32_t last = ids[seqlen - 1];
  int count = 0;
  for (int i = 0; i < seqlen; ++i) count += ids[i] == last;
  return count <= seqlen / 2;
}

// Fisher-Yates driven by mt19937_64, with an unbiased bounded draw written
// out here so that the order is identical on every standard library.
uint64_t Bounded(std::mt19937_64& rng, uint64_t n) {
  const uint64_t limit = UINT64_MAX - UINT64_MAX % n;
  uint64_t x;
  do {
    x = rng();
  } while (x >= limit);
  return x % n;
}
template <typename T>
void Shuffle(std::vector<T>* v, std::mt19937_64& rng) {
  for (size_t i = v->size(); i > 1; --i) {
    std::swap((*v)[i - 1], (*v)[Bounded(rng, i)]);
  }
}

class Resolver {
 public:
  Resolver(const CalibrationOptions& o, const std::vector<Record>& records,
           const Tokenizer* tok)
      : o_(o),
        records_(records),
        tok_(tok),
        cache_(records.size()),
        state_(records.size(), 0) {}

  // Tokenized, templated, truncated ids of record i, or nullopt if the
  // record is not usable (empty, or dropped by drop_short).
  absl::StatusOr<const std::vector<int32_t>*> Get(size_t i) {
    if (state_[i] == 1) return &cache_[i];
    if (state_[i] == 2) return nullptr;
    const Record& r = records_[i];
    std::vector<int32_t> ids;
    if (r.has_ids) {
      if (o_.templ == "colqwen3_query") {
        return Invalid(absl::StrCat(
            r.origin,
            ": template colqwen3_query needs text, but the field holds ids"));
      }
      ids = r.ids;
      if (tok_ != nullptr) {
        for (int32_t id : ids) {
          if (id >= tok_->vocab_size()) {
            return Invalid(absl::StrCat(r.origin, ": token id ", id,
                                        " >= the tokenizer's vocab size ",
                                        tok_->vocab_size()));
          }
        }
      }
    } else {
      if (tok_ == nullptr) {
        return Invalid(absl::StrCat(
            r.origin,
            ": text data needs calibration.tokenizer_dir (tokenizer.json)"));
      }
      std::string prompt;
      if (o_.templ == "colqwen3_query") {
        prompt = o_.query_prefix + PyStrip(r.text);
        for (int k = 0; k < kQueryAugmentationTokens; ++k) {
          prompt += kQueryAugmentationToken;
        }
      } else {
        prompt = r.text;
      }
      auto enc = tok_->Encode(prompt, /*add_special_tokens=*/true);
      if (!enc.ok()) {
        return absl::Status(
            enc.status().code(),
            absl::StrCat(r.origin, ": ", enc.status().message()));
      }
      ids = std::move(enc).value();
    }
    bool usable = !ids.empty();
    if (usable && o_.drop_short && o_.templ != "pack") {
      usable = PassesDropShort(ids, o_.seqlen);
    }
    if (!usable) {
      state_[i] = 2;
      ++unusable_;
      return nullptr;
    }
    if (o_.templ != "pack" && static_cast<int>(ids.size()) > o_.seqlen) {
      ids.resize(o_.seqlen);
    }
    cache_[i] = std::move(ids);
    state_[i] = 1;
    return &cache_[i];
  }
  int unusable() const { return unusable_; }

 private:
  const CalibrationOptions& o_;
  const std::vector<Record>& records_;
  const Tokenizer* tok_;
  std::vector<std::vector<int32_t>> cache_;
  std::vector<uint8_t> state_;  // 0 unknown, 1 usable, 2 unusable
  int unusable_ = 0;
};

std::vector<Sample> Pad(std::vector<std::vector<int32_t>> seqs,
                        const std::vector<std::string>& strata, bool left,
                        int32_t pad_id, int seqlen) {
  size_t len = 0;
  for (const auto& s : seqs) len = std::max(len, s.size());
  len = std::min(len, static_cast<size_t>(seqlen));
  std::vector<Sample> out;
  out.reserve(seqs.size());
  for (size_t i = 0; i < seqs.size(); ++i) {
    Sample s;
    std::vector<int32_t>& ids = seqs[i];
    if (ids.size() > len) ids.resize(len);
    const size_t pad = len - ids.size();
    s.input_ids.assign(len, pad_id);
    s.attention_mask.assign(len, 0);
    const size_t off = left ? pad : 0;
    std::copy(ids.begin(), ids.end(), s.input_ids.begin() + off);
    std::fill(s.attention_mask.begin() + off,
              s.attention_mask.begin() + off + ids.size(), 1);
    s.stratum = strata[i];
    out.push_back(std::move(s));
  }
  return out;
}

void HashSamples(const std::vector<Sample>& samples, Sha256* h) {
  auto put32 = [h](uint32_t v) {
    const uint8_t b[4] = {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8),
                          static_cast<uint8_t>(v >> 16),
                          static_cast<uint8_t>(v >> 24)};
    h->Update(b, 4);
  };
  put32(static_cast<uint32_t>(samples.size()));
  put32(samples.empty() ? 0u
                        : static_cast<uint32_t>(samples[0].input_ids.size()));
  for (const Sample& s : samples) {
    for (int32_t id : s.input_ids) put32(static_cast<uint32_t>(id));
    h->Update(s.attention_mask.data(), s.attention_mask.size());
  }
}

absl::Status NotEnough(const CalibrationOptions& o, int64_t records,
                       int64_t usable, int needed, const std::string& what) {
  return Invalid(absl::StrCat(
      o.path, ": only ", usable, " usable ", what, " (", records,
      " records read", o.drop_short ? ", drop_short on" : "", "), but ", needed,
      " are needed (nsamples ", o.nsamples, " + eval_samples ", o.eval_samples,
      "); set allow_fewer to accept fewer"));
}

}  // namespace

absl::StatusOr<CalibrationSet> BuildCalibrationSet(
    const CalibrationOptions& options) {
  const CalibrationOptions& o = options;
  RETURN_IF_ERROR(ValidateOptions(o));
  if (!IsDirectory(o.path)) {
    auto probe = ReadFile(o.path);
    if (!probe.ok()) {
      return absl::NotFoundError(absl::StrCat("calibration.path: cannot read ",
                                              o.path, ": ",
                                              probe.status().message()));
    }
  }
  std::string field = o.field;
  ASSIGN_OR_RETURN(std::vector<Record> records, ReadRecords(o, &field));
  bool any_text = false;
  for (const Record& r : records) any_text |= !r.has_ids;
  ASSIGN_OR_RETURN(TokenizerBundle tb,
                   LoadTokenizerDir(o.tokenizer_dir, any_text));

  CalibrationSet set;
  set.records_read = static_cast<int64_t>(records.size());
  set.pad_token_id = o.pad_token_id >= 0  ? o.pad_token_id
                     : tb.pad.has_value() ? *tb.pad
                     : tb.eos.has_value() ? *tb.eos
                                          : 0;
  if (o.templ == "colqwen3_query" &&
      (tb.tok == nullptr ||
       !tb.tok->TokenToId(kQueryAugmentationToken).has_value())) {
    return Invalid(absl::StrCat(
        "calibration.template: colqwen3_query needs a tokenizer with the ",
        kQueryAugmentationToken, " token"));
  }

  Resolver resolver(o, records, tb.tok.get());
  std::mt19937_64 rng(o.seed);
  const int needed = o.nsamples + o.eval_samples;
  std::vector<std::vector<int32_t>> tune_ids, eval_ids;
  std::vector<std::string> tune_strata, eval_strata;

  if (o.templ == "pack") {
    // Documents in seeded random order, concatenated (leading BOS / trailing
    // EOS stripped per document) and cut into full seqlen chunks that get
    // BOS/EOS back when the documents had them (the reference's
    // `concat=true`). A trailing partial chunk is dropped.
    std::vector<size_t> order(records.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    Shuffle(&order, rng);
    bool add_bos = false, add_eos = false, first = true;
    std::vector<int32_t> stream;
    std::vector<std::vector<int32_t>> chunks;
    size_t pos = 0;
    int64_t usable_docs = 0;
    for (size_t idx : order) {
      ASSIGN_OR_RETURN(const std::vector<int32_t>* ids, resolver.Get(idx));
      if (ids == nullptr) continue;
      ++usable_docs;
      size_t b = 0, e = ids->size();
      const bool has_bos = tb.bos.has_value() && (*ids)[0] == *tb.bos;
      const bool has_eos =
          tb.eos.has_value() && e > 0 && (*ids)[e - 1] == *tb.eos;
      if (first) {
        add_bos = has_bos;
        add_eos = has_eos;
        first = false;
      }
      if (has_bos) ++b;
      if (has_eos && e > b) --e;
      stream.insert(stream.end(), ids->begin() + static_cast<long>(b),
                    ids->begin() + static_cast<long>(e));
      const size_t body = static_cast<size_t>(o.seqlen) - add_bos - add_eos;
      if (body == 0) {
        return Invalid("calibration.seqlen: too small to hold BOS/EOS");
      }
      while (stream.size() - pos >= body &&
             static_cast<int>(chunks.size()) < needed) {
        std::vector<int32_t> c;
        if (add_bos) c.push_back(*tb.bos);
        c.insert(c.end(), stream.begin() + static_cast<long>(pos),
                 stream.begin() + static_cast<long>(pos + body));
        if (add_eos) c.push_back(*tb.eos);
        pos += body;
        chunks.push_back(std::move(c));
      }
      if (static_cast<int>(chunks.size()) >= needed) break;
    }
    set.records_usable = usable_docs;
    if (static_cast<int>(chunks.size()) < needed &&
        (!o.allow_fewer || chunks.empty())) {
      return NotEnough(o, set.records_read, static_cast<int64_t>(chunks.size()),
                       needed, absl::StrCat("chunks of ", o.seqlen, " tokens"));
    }
    for (size_t i = 0; i < chunks.size(); ++i) {
      if (static_cast<int>(i) < o.nsamples) {
        tune_ids.push_back(std::move(chunks[i]));
        tune_strata.emplace_back();
      } else {
        eval_ids.push_back(std::move(chunks[i]));
        eval_strata.emplace_back();
      }
    }
  } else {
    // Candidate order: random = one seeded permutation; stratified = an even
    // share per stratum (each stratum in its own seeded order, strata in
    // sorted order), then the remainder from one seeded permutation of what
    // is left.
    std::vector<size_t> picked;
    std::vector<uint8_t> taken(records.size(), 0);
    std::vector<size_t> rest(records.size());
    for (size_t i = 0; i < rest.size(); ++i) rest[i] = i;
    if (o.selection == "stratified") {
      std::map<std::string, std::vector<size_t>> groups;
      for (size_t i = 0; i < records.size(); ++i) {
        groups[records[i].stratum].push_back(i);
      }
      const int share = o.nsamples / static_cast<int>(groups.size());
      for (auto& [value, members] : groups) {
        Shuffle(&members, rng);
        int got = 0;
        for (size_t idx : members) {
          if (got >= share) break;
          ASSIGN_OR_RETURN(const std::vector<int32_t>* ids, resolver.Get(idx));
          if (ids == nullptr) continue;
          picked.push_back(idx);
          taken[idx] = 1;
          ++got;
        }
      }
    }
    Shuffle(&rest, rng);
    for (size_t idx : rest) {
      if (taken[idx]) continue;
      if (static_cast<int>(picked.size()) >= needed) break;
      ASSIGN_OR_RETURN(const std::vector<int32_t>* ids, resolver.Get(idx));
      if (ids == nullptr) continue;
      // Tuning samples first (even shares + remainder), then eval samples.
      picked.push_back(idx);
      taken[idx] = 1;
    }
    set.records_usable = static_cast<int64_t>(picked.size());
    if (static_cast<int>(picked.size()) < needed) {
      // Every record has been examined at this point: the count is exact.
      set.records_usable = set.records_read - resolver.unusable();
      if (!o.allow_fewer || picked.empty()) {
        return NotEnough(o, set.records_read, set.records_usable, needed,
                         "samples");
      }
    }
    std::vector<size_t> tune(
        picked.begin(),
        picked.begin() + std::min<size_t>(picked.size(), o.nsamples));
    std::vector<size_t> eval(picked.begin() + static_cast<long>(tune.size()),
                             picked.end());
    // Stratified picks come stratum by stratum: shuffle so batches mix.
    Shuffle(&tune, rng);
    for (size_t idx : tune) {
      ASSIGN_OR_RETURN(const std::vector<int32_t>* ids, resolver.Get(idx));
      tune_ids.push_back(*ids);
      tune_strata.push_back(records[idx].stratum);
      ++set.per_stratum[records[idx].stratum];
    }
    for (size_t idx : eval) {
      ASSIGN_OR_RETURN(const std::vector<int32_t>* ids, resolver.Get(idx));
      eval_ids.push_back(*ids);
      eval_strata.push_back(records[idx].stratum);
    }
  }
  const bool left = o.templ == "colqwen3_query";
  set.samples =
      Pad(std::move(tune_ids), tune_strata, left, set.pad_token_id, o.seqlen);
  set.eval_samples =
      Pad(std::move(eval_ids), eval_strata, left, set.pad_token_id, o.seqlen);
  Sha256 h;
  h.Update("roundhouse-calibration-v1\n");
  HashSamples(set.samples, &h);
  HashSamples(set.eval_samples, &h);
  set.content_sha256 = h.HexDigest();
  return set;
}

CalibrationOptions ColpaliTrainSetPreset(std::string jsonl_path,
                                         std::string tokenizer_dir) {
  CalibrationOptions o;
  o.path = std::move(jsonl_path);
  o.format = "jsonl";
  o.field = "query";
  o.selection = "stratified";
  o.stratify_column = "source";
  o.templ = "colqwen3_query";
  o.nsamples = 256;
  o.seqlen = 512;
  o.seed = 42;
  o.tokenizer_dir = std::move(tokenizer_dir);
  return o;
}

}  // namespace roundhouse::calibration
