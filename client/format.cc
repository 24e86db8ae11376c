#include "client/format.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/time.h"
#include "client/exit_codes.h"
#include "google/protobuf/util/json_util.h"
#include "nlohmann/json.hpp"

namespace roundhouse::client {

namespace v1 = ::roundhouse::v1;

std::string StateName(v1::JobState state) {
  std::string name = v1::JobState_Name(state);
  if (absl::StartsWith(name, "JOB_STATE_")) name = name.substr(10);
  return name.empty() ? absl::StrCat("STATE_", static_cast<int>(state)) : name;
}

std::string FailureClassName(v1::FailureClass failure_class) {
  std::string name = v1::FailureClass_Name(failure_class);
  if (absl::StartsWith(name, "FAILURE_CLASS_")) name = name.substr(14);
  return name.empty() ? absl::StrCat("CLASS_", static_cast<int>(failure_class))
                      : name;
}

absl::StatusOr<v1::JobState> ParseState(const std::string& text) {
  std::string upper = absl::AsciiStrToUpper(text);
  if (!absl::StartsWith(upper, "JOB_STATE_")) upper = "JOB_STATE_" + upper;
  v1::JobState state;
  if (!v1::JobState_Parse(upper, &state) ||
      state == v1::JOB_STATE_UNSPECIFIED) {
    return absl::InvalidArgumentError(
        absl::StrCat("--state: unknown state '", text,
                     "' (queued, running, succeeded, failed, cancelled, "
                     "deadline_exceeded, failed_quality)"));
  }
  return state;
}

std::string FormatEta(double seconds) {
  if (!(seconds >= 0) || std::isinf(seconds)) return "?";
  const int64_t s = static_cast<int64_t>(std::ceil(seconds));
  if (s < 60) return absl::StrCat(s, "s");
  if (s < 3600) return absl::StrFormat("%dm%02ds", s / 60, s % 60);
  return absl::StrFormat("%dh%02dm", s / 3600, (s % 3600) / 60);
}

std::string FormatBytes(int64_t bytes) {
  if (bytes < 1024) return absl::StrCat(bytes, " B");
  const char* units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes) / 1024;
  int u = 0;
  while (v >= 1024 && u < 4) {
    v /= 1024;
    ++u;
  }
  return absl::StrFormat("%.1f %s", v, units[u]);
}

std::string FormatTimestamp(double unix_seconds) {
  if (unix_seconds <= 0) return "-";
  return absl::FormatTime(
      "%Y-%m-%d %H:%M:%S",
      absl::FromUnixMicros(static_cast<int64_t>(unix_seconds * 1e6)),
      absl::UTCTimeZone());
}

namespace {

std::string LastLoss(const v1::Progress& p) {
  if (p.blocks_size() == 0) return "";
  const v1::BlockProgress& b = p.blocks(p.blocks_size() - 1);
  return absl::StrFormat("loss %.4g->%.4g", b.loss_before(), b.loss_after());
}

}  // namespace

std::string FormatProgressLine(const v1::Job& job) {
  const v1::Progress& p = job.progress();
  std::vector<std::string> parts = {
      absl::StrCat("job ", job.job_id()),
      absl::StrCat("state=", StateName(job.state()))};
  if (!p.stage().empty()) parts.push_back(absl::StrCat("stage=", p.stage()));
  if (p.blocks_total() > 0) {
    parts.push_back(
        absl::StrCat("block ", p.blocks_done(), "/", p.blocks_total()));
  }
  if (std::string loss = LastLoss(p); !loss.empty()) parts.push_back(loss);
  // proto3 leaves eta_seconds at 0 when the coordinator has no estimate
  // (e.g. while queued), so only a positive ETA of a running job is shown.
  if (job.state() == v1::JOB_STATE_RUNNING && p.eta_seconds() > 0) {
    parts.push_back(absl::StrCat("eta ", FormatEta(p.eta_seconds())));
  }
  return absl::StrJoin(parts, " ");
}

std::string FormatProgressBar(const v1::Job& job, int bar_width) {
  const v1::Progress& p = job.progress();
  const double fraction = std::clamp(p.fraction(), 0.0, 1.0);
  const int filled = static_cast<int>(fraction * bar_width);
  std::string line =
      absl::StrCat(job.job_id(), " [", std::string(filled, '#'),
                   std::string(std::max(0, bar_width - filled), '.'), "] ",
                   absl::StrFormat("%3d%%", static_cast<int>(fraction * 100)));
  absl::StrAppend(&line, " ",
                  p.stage().empty()
                      ? absl::AsciiStrToLower(StateName(job.state()))
                      : p.stage());
  if (p.blocks_total() > 0) {
    absl::StrAppend(&line, " ", p.blocks_done(), "/", p.blocks_total());
  }
  if (std::string loss = LastLoss(p); !loss.empty()) {
    absl::StrAppend(&line, " ", loss);
  }
  if (job.state() == v1::JOB_STATE_RUNNING) {
    absl::StrAppend(&line, " ETA ",
                    p.eta_seconds() > 0 ? FormatEta(p.eta_seconds()) : "?");
  } else if (IsTerminal(job.state())) {
    absl::StrAppend(&line, " ", StateName(job.state()));
  }
  return line;
}

std::string FormatOutcome(const v1::Job& job) {
  std::string out =
      absl::StrCat("job ", job.job_id(), " ", StateName(job.state()));
  if (job.state() == v1::JOB_STATE_SUCCEEDED) {
    absl::StrAppend(&out, ": artifact ", job.artifact().directory());
    return out;
  }
  if (job.state() == v1::JOB_STATE_FAILED_QUALITY &&
      !job.artifact().directory().empty()) {
    absl::StrAppend(&out, ": artifact kept at ", job.artifact().directory());
  }
  if (job.has_error() &&
      job.error().failure_class() != v1::FAILURE_CLASS_UNSPECIFIED) {
    absl::StrAppend(&out, ": ", FailureClassName(job.error().failure_class()));
    if (!job.error().message().empty()) {
      absl::StrAppend(&out, ": ", job.error().message());
    }
    if (job.error().peak_memory_bytes() > 0) {
      absl::StrAppend(&out, " (peak ",
                      FormatBytes(job.error().peak_memory_bytes()), ")");
    }
  }
  return out;
}

std::string FormatJobTable(const std::vector<v1::Job>& jobs) {
  std::vector<std::vector<std::string>> rows = {
      {"ID", "STATE", "PRI", "ATTEMPT", "STAGE", "CREATED", "MODEL"}};
  for (const v1::Job& j : jobs) {
    rows.push_back(
        {j.job_id(), StateName(j.state()), absl::StrCat(j.spec().priority()),
         absl::StrCat(j.attempt()),
         j.progress().stage().empty() ? "-" : j.progress().stage(),
         FormatTimestamp(j.created_unix_seconds()), j.spec().model()});
  }
  std::vector<size_t> width(rows[0].size(), 0);
  for (const auto& r : rows) {
    for (size_t c = 0; c < r.size(); ++c)
      width[c] = std::max(width[c], r[c].size());
  }
  std::string out;
  for (const auto& r : rows) {
    std::string line;
    for (size_t c = 0; c < r.size(); ++c) {
      line += r[c];
      if (c + 1 < r.size())
        line += std::string(width[c] - r[c].size() + 2, ' ');
    }
    absl::StrAppend(&out, line, "\n");
  }
  return out;
}

namespace {

// Deliverable files first (what a publisher looks for), then the rest.
int DeliverableRank(const std::string& path) {
  static const char* const kOrder[] = {"README.md", "test_results.json",
                                       "quantization_config.json",
                                       ".gitattributes"};
  const std::string base = path.substr(path.find_last_of('/') + 1);
  for (int i = 0; i < 4; ++i) {
    if (base == kOrder[i]) return i;
  }
  return 4;
}

std::string FormatJobHeader(const v1::Job& job) {
  std::string out;
  absl::StrAppend(&out, "job:       ", job.job_id(), "\n");
  absl::StrAppend(&out, "state:     ", StateName(job.state()),
                  job.cancel_requested() && !IsTerminal(job.state())
                      ? " (cancel requested)"
                      : "",
                  "\n");
  absl::StrAppend(&out, "model:     ", job.spec().model(), "\n");
  absl::StrAppend(&out, "priority:  ", job.spec().priority(), "\n");
  absl::StrAppend(&out, "attempt:   ", job.attempt(), " (retries counted ",
                  job.retries_counted(), ")", "\n");
  if (!job.worker_id().empty()) {
    absl::StrAppend(&out, "worker:    ", job.worker_id(), "\n");
  }
  absl::StrAppend(
      &out, "created:   ", FormatTimestamp(job.created_unix_seconds()), "\n");
  absl::StrAppend(&out, "progress:  ", FormatProgressLine(job), "\n");
  if (IsTerminal(job.state()))
    absl::StrAppend(&out, "outcome:   ", FormatOutcome(job), "\n");
  return out;
}

}  // namespace

std::string FormatArtifactFiles(const v1::Job& job) {
  const v1::ArtifactManifest& a = job.artifact();
  if (a.directory().empty() && a.files_size() == 0) return "";
  std::vector<const v1::ArtifactFile*> files;
  int64_t total = 0;
  for (const v1::ArtifactFile& f : a.files()) {
    files.push_back(&f);
    total += f.size_bytes();
  }
  std::stable_sort(files.begin(), files.end(),
                   [](const v1::ArtifactFile* x, const v1::ArtifactFile* y) {
                     return DeliverableRank(x->path()) <
                            DeliverableRank(y->path());
                   });
  std::string out =
      absl::StrCat("artifact:  ", a.directory(), " (", a.files_size(),
                   " files, ", FormatBytes(total), ")\n");
  for (const v1::ArtifactFile* f : files) {
    absl::StrAppend(&out, absl::StrFormat("  %-40s %10s\n", f->path(),
                                          FormatBytes(f->size_bytes())));
  }
  if (job.state() == v1::JOB_STATE_SUCCEEDED) {
    absl::StrAppend(&out, "upload:    roundhouse upload --job ", job.job_id(),
                    " --repo ORG/NAME\n");
  }
  return out;
}

std::string FormatJobSummary(const v1::Job& job) {
  return absl::StrCat(FormatJobHeader(job), FormatArtifactFiles(job));
}

std::string FormatInspect(const v1::Job& job) {
  std::string out = FormatJobHeader(job);
  absl::StrAppend(
      &out, "started:   ", FormatTimestamp(job.started_unix_seconds()), "\n");
  absl::StrAppend(
      &out, "finished:  ", FormatTimestamp(job.finished_unix_seconds()), "\n");
  absl::StrAppend(&out, "lease epoch: ", job.lease_epoch(), "\n");
  if (!job.idempotency_key().empty()) {
    absl::StrAppend(&out, "idempotency key: ", job.idempotency_key(), "\n");
  }
  if (!job.spec().labels().empty()) {
    std::vector<std::string> labels;
    for (const auto& [k, v] : job.spec().labels())
      labels.push_back(k + "=" + v);
    std::sort(labels.begin(), labels.end());
    absl::StrAppend(&out, "labels:    ", absl::StrJoin(labels, ","), "\n");
  }
  absl::StrAppend(&out, "\nspec:\n", ToJson(job.spec(), /*pretty=*/true), "\n");

  const v1::Progress& p = job.progress();
  if (p.blocks_size() > 0) {
    absl::StrAppend(&out, "\nblocks (", p.blocks_done(), "/", p.blocks_total(),
                    "):\n");
    absl::StrAppend(
        &out, absl::StrFormat("  %5s  %12s  %12s  %8s  %9s\n", "BLOCK",
                              "LOSS_BEFORE", "LOSS_AFTER", "GAIN", "SECONDS"));
    for (const v1::BlockProgress& b : p.blocks()) {
      const std::string gain =
          b.loss_before() > 0
              ? absl::StrFormat("%.1f%%",
                                100.0 * (b.loss_before() - b.loss_after()) /
                                    b.loss_before())
              : "-";
      absl::StrAppend(&out,
                      absl::StrFormat("  %5d  %12.6g  %12.6g  %8s  %9.2f\n",
                                      b.block_index(), b.loss_before(),
                                      b.loss_after(), gain, b.seconds()));
    }
  }
  if (!job.artifact().directory().empty() || job.artifact().files_size() > 0) {
    absl::StrAppend(&out, "\nartifact: ", job.artifact().directory(), "\n");
    int64_t total = 0;
    for (const v1::ArtifactFile& f : job.artifact().files()) {
      absl::StrAppend(&out,
                      absl::StrFormat("  %-40s %12s  %s\n", f.path(),
                                      FormatBytes(f.size_bytes()), f.sha256()));
      total += f.size_bytes();
    }
    absl::StrAppend(&out, "  ", job.artifact().files_size(), " files, ",
                    FormatBytes(total), "\n");
  }
  if (job.has_error() &&
      job.error().failure_class() != v1::FAILURE_CLASS_UNSPECIFIED) {
    absl::StrAppend(&out,
                    "\nerror: ", FailureClassName(job.error().failure_class()),
                    ": ", job.error().message());
    if (job.error().peak_memory_bytes() > 0) {
      absl::StrAppend(&out, " (peak ",
                      FormatBytes(job.error().peak_memory_bytes()), ")");
    }
    absl::StrAppend(&out, "\n");
  }
  return out;
}

std::string ToJson(const google::protobuf::Message& message, bool pretty) {
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = true;
  options.add_whitespace = pretty;
  std::string out;
  auto status =
      google::protobuf::util::MessageToJsonString(message, &out, options);
  if (!status.ok()) {
    return nlohmann::json({{"error", status.ToString()}}).dump();
  }
  while (!out.empty() && out.back() == '\n') out.pop_back();
  return out;
}

}  // namespace roundhouse::client
