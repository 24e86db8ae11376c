#include "client/cli.h"

#include <cstdlib>
#include <map>
#include <memory>
#include <optional>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "client/exit_codes.h"
#include "client/format.h"
#include "client/spec_merge.h"
#include "client/upload.h"
#include "common/files.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "roundhouse/v1/roundhouse.grpc.pb.h"

namespace roundhouse::client {

namespace v1 = ::roundhouse::v1;

std::string CliUsage() {
  return R"(usage: roundhouse [--coordinator HOST:PORT] COMMAND [ARGS] [FLAGS]

Commands:
  submit [SPEC.json] [flags]   submit a quantization job; prints its id
      --model M  --bits B  --group-size G  --sym | --asym  --iters N
      --nsamples N  --seqlen N  --batch-size N  --seed S  --priority P
      --label k=v (repeatable)  --deadline-seconds D  --format F (repeatable)
      --calibration PATH  --idempotency-key K
      --wait     watch the job until it ends; exit with its state (below)
      --json     print the job as JSON (then JobEvents, one per line)
  watch JOB [--json]           follow a job's progress until it ends
  get JOB [--json]             show a job
  list [--state S]... [--label k=v]... [--page-size N] [--page-token T]
       [--all] [--json]        list jobs (newest pages first as the
                               coordinator orders them)
  cancel JOB [--json]          request cancellation
  inspect JOB [--json]         everything: spec, attempts, per-block losses,
                               artifact files (size, sha256), error
  upload (--job JOB | --dir PATH) --repo ORG/NAME
         [--endpoint URL] [--execute]
                               check the artifact's deliverable folder
                               (README.md, test_results.json,
                               quantization_config.json, .gitattributes,
                               manifest.json) and print the hub upload
                               command (huggingface-cli upload ...);
                               --endpoint: default https://huggingface.co
                               (others are passed as HF_ENDPOINT);
                               --execute: check the endpoint is reachable
                               and huggingface-cli is on PATH, then run it

Flags are `--name value` or `--name=value`. The spec file's keys are the
JobSpec proto field names; flags override them; the coordinator validates.
Coordinator: --coordinator, else $ROUNDHOUSE_COORDINATOR, else 127.0.0.1:7600.

Exit codes:
  0   success (watch / submit --wait: the job SUCCEEDED)
  1   local error
  2   usage error (bad flag or value, unreadable/invalid SPEC.json)
  3   coordinator unreachable or RPC error (shows the gRPC status and the
      server's message, e.g. the invalid spec field); for upload --execute
      also: the hub endpoint is unreachable
  10  job FAILED
  11  job CANCELLED
  12  job DEADLINE_EXCEEDED
  13  job FAILED_QUALITY (artifact kept, quality gate failed)
upload: 1 when the folder is not a complete deliverable, is not on this
machine, or huggingface-cli is not on PATH; with --execute, the uploader's
own exit code.
)";
}

namespace {

struct FlagSpec {
  bool takes_value = false;
  bool repeatable = false;
};

struct Args {
  std::vector<std::string> positionals;
  std::map<std::string, std::vector<std::string>> flags;

  bool Has(const std::string& name) const { return flags.count(name) > 0; }
  std::string Get(const std::string& name) const {
    auto it = flags.find(name);
    return it == flags.end() ? "" : it->second.back();
  }
  std::vector<std::string> GetAll(const std::string& name) const {
    auto it = flags.find(name);
    return it == flags.end() ? std::vector<std::string>() : it->second;
  }
};

absl::StatusOr<Args> ParseArgs(const std::vector<std::string>& args,
                               const std::string& command,
                               std::map<std::string, FlagSpec> specs) {
  specs["coordinator"] = {true, false};
  Args out;
  bool only_positionals = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (only_positionals || !absl::StartsWith(a, "--")) {
      if (!only_positionals && absl::StartsWith(a, "-") && a != "-") {
        return absl::InvalidArgumentError(
            absl::StrCat("unknown flag '", a, "' for ", command));
      }
      out.positionals.push_back(a);
      continue;
    }
    if (a == "--") {
      only_positionals = true;
      continue;
    }
    std::string name = a.substr(2), value;
    bool has_value = false;
    if (size_t eq = name.find('='); eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_value = true;
    }
    auto spec = specs.find(name);
    if (spec == specs.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unknown flag --", name, " for ", command));
    }
    if (spec->second.takes_value) {
      if (!has_value) {
        if (i + 1 >= args.size()) {
          return absl::InvalidArgumentError(
              absl::StrCat("--", name, ": missing value"));
        }
        value = args[++i];
      }
    } else {
      if (has_value && value != "true" && value != "false") {
        return absl::InvalidArgumentError(
            absl::StrCat("--", name, " takes no value"));
      }
      if (value == "false") continue;
      value = "true";
    }
    auto& slot = out.flags[name];
    if (!slot.empty() && !spec->second.repeatable) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " given more than once"));
    }
    slot.push_back(value);
  }
  return out;
}

absl::StatusOr<int> IntFlag(const Args& args, const std::string& name) {
  int v;
  if (!absl::SimpleAtoi(args.Get(name), &v)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--", name, ": expected an integer, got '", args.Get(name), "'"));
  }
  return v;
}

absl::StatusOr<std::pair<std::string, std::string>> LabelFlag(
    const std::string& text) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos || eq == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("--label: expected key=value, got '", text, "'"));
  }
  return std::make_pair(text.substr(0, eq), text.substr(eq + 1));
}

const char* CodeName(grpc::StatusCode code) {
  switch (code) {
    case grpc::StatusCode::OK:
      return "OK";
    case grpc::StatusCode::CANCELLED:
      return "CANCELLED";
    case grpc::StatusCode::UNKNOWN:
      return "UNKNOWN";
    case grpc::StatusCode::INVALID_ARGUMENT:
      return "INVALID_ARGUMENT";
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND:
      return "NOT_FOUND";
    case grpc::StatusCode::ALREADY_EXISTS:
      return "ALREADY_EXISTS";
    case grpc::StatusCode::PERMISSION_DENIED:
      return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED:
      return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::FAILED_PRECONDITION:
      return "FAILED_PRECONDITION";
    case grpc::StatusCode::ABORTED:
      return "ABORTED";
    case grpc::StatusCode::OUT_OF_RANGE:
      return "OUT_OF_RANGE";
    case grpc::StatusCode::UNIMPLEMENTED:
      return "UNIMPLEMENTED";
    case grpc::StatusCode::INTERNAL:
      return "INTERNAL";
    case grpc::StatusCode::UNAVAILABLE:
      return "UNAVAILABLE";
    case grpc::StatusCode::DATA_LOSS:
      return "DATA_LOSS";
    case grpc::StatusCode::UNAUTHENTICATED:
      return "UNAUTHENTICATED";
    default:
      return "UNKNOWN_CODE";
  }
}

class Cli {
 public:
  Cli(const CliIo& io, std::string coordinator)
      : io_(io),
        out_(*io.out),
        err_(*io.err),
        coordinator_(std::move(coordinator)),
        stub_(v1::JobService::NewStub(grpc::CreateChannel(
            coordinator_, grpc::InsecureChannelCredentials()))) {}

  int Usage(const absl::Status& s) {
    err_ << "roundhouse: " << s.message() << "\n(see roundhouse --help)\n";
    return kExitUsage;
  }

  int RpcError(const char* method, const grpc::Status& s) {
    err_ << "roundhouse: " << method << " failed: " << CodeName(s.error_code())
         << ": " << s.error_message();
    if (s.error_code() == grpc::StatusCode::UNAVAILABLE ||
        s.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) {
      err_ << " (is the coordinator running at " << coordinator_ << "?)";
    }
    err_ << "\n";
    return kExitRpc;
  }

  void SetDeadline(grpc::ClientContext* ctx) {
    ctx->set_deadline(absl::ToChronoTime(absl::Now() + io_.rpc_timeout));
  }

  absl::StatusOr<std::string> OneJobId(const Args& args, const char* command) {
    if (args.positionals.size() != 1) {
      return absl::InvalidArgumentError(
          absl::StrCat(command, " needs exactly one JOB id"));
    }
    return args.positionals[0];
  }

  int Submit(const std::vector<std::string>& raw) {
    absl::StatusOr<Args> parsed = ParseArgs(raw, "submit",
                                            {{"model", {true}},
                                             {"bits", {true}},
                                             {"group-size", {true}},
                                             {"sym", {}},
                                             {"asym", {}},
                                             {"iters", {true}},
                                             {"nsamples", {true}},
                                             {"seqlen", {true}},
                                             {"batch-size", {true}},
                                             {"seed", {true}},
                                             {"priority", {true}},
                                             {"label", {true, true}},
                                             {"deadline-seconds", {true}},
                                             {"format", {true, true}},
                                             {"calibration", {true}},
                                             {"idempotency-key", {true}},
                                             {"wait", {}},
                                             {"json", {}}});
    if (!parsed.ok()) return Usage(parsed.status());
    const Args& args = *parsed;
    if (args.positionals.size() > 1) {
      return Usage(absl::InvalidArgumentError(
          "submit takes at most one SPEC.json file"));
    }
    nlohmann::json base = nlohmann::json::object();
    if (!args.positionals.empty()) {
      const std::string& path = args.positionals[0];
      absl::StatusOr<std::string> text = ReadFile(path);
      if (!text.ok()) {
        return Usage(absl::InvalidArgumentError(absl::StrCat(
            "cannot read spec file '", path, "': ", text.status().message())));
      }
      try {
        base = nlohmann::json::parse(*text);
      } catch (const nlohmann::json::exception& e) {
        return Usage(absl::InvalidArgumentError(absl::StrCat(
            "spec file '", path, "' is not valid JSON: ", e.what())));
      }
    }
    SpecOverrides o;
    if (args.Has("model")) o.model = args.Get("model");
    struct IntTarget {
      const char* flag;
      std::optional<int>* target;
    };
    for (IntTarget t :
         {IntTarget{"bits", &o.bits}, IntTarget{"group-size", &o.group_size},
          IntTarget{"iters", &o.iters}, IntTarget{"nsamples", &o.nsamples},
          IntTarget{"seqlen", &o.seqlen},
          IntTarget{"batch-size", &o.batch_size}, IntTarget{"seed", &o.seed},
          IntTarget{"priority", &o.priority}}) {
      if (!args.Has(t.flag)) continue;
      absl::StatusOr<int> v = IntFlag(args, t.flag);
      if (!v.ok()) return Usage(v.status());
      *t.target = *v;
    }
    if (args.Has("sym") && args.Has("asym")) {
      return Usage(absl::InvalidArgumentError(
          "--sym and --asym are mutually exclusive"));
    }
    if (args.Has("sym")) o.sym = true;
    if (args.Has("asym")) o.sym = false;
    if (args.Has("deadline-seconds")) {
      double d;
      if (!absl::SimpleAtod(args.Get("deadline-seconds"), &d) || !(d >= 0)) {
        return Usage(absl::InvalidArgumentError(
            absl::StrCat("--deadline-seconds: expected seconds >= 0, got '",
                         args.Get("deadline-seconds"), "'")));
      }
      o.deadline_seconds = d;
    }
    for (const std::string& l : args.GetAll("label")) {
      absl::StatusOr<std::pair<std::string, std::string>> kv = LabelFlag(l);
      if (!kv.ok()) return Usage(kv.status());
      o.labels.push_back(*kv);
    }
    o.formats = args.GetAll("format");
    if (args.Has("calibration")) o.calibration_path = args.Get("calibration");
    if (args.positionals.empty() && !o.model) {
      return Usage(absl::InvalidArgumentError(
          "submit needs a SPEC.json file or --model"));
    }
    absl::StatusOr<nlohmann::json> spec = MergeSpec(base, o);
    if (!spec.ok()) return Usage(spec.status());

    v1::SubmitJobRequest req;
    req.set_spec_json(spec->dump());
    req.set_idempotency_key(args.Get("idempotency-key"));
    v1::SubmitJobResponse resp;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    grpc::Status s = stub_->SubmitJob(&ctx, req, &resp);
    if (!s.ok()) return RpcError("SubmitJob", s);
    if (!resp.created()) {
      err_ << "roundhouse: job " << resp.job().job_id()
           << " already exists for idempotency key '" << req.idempotency_key()
           << "'; not submitted again\n";
    }
    const bool json = args.Has("json");
    if (json) {
      out_ << ToJson(resp.job(), /*pretty=*/false) << "\n";
    } else {
      out_ << resp.job().job_id() << "\n";
    }
    out_.flush();
    if (!args.Has("wait")) return kExitOk;
    return Watch(resp.job().job_id(), json);
  }

  int WatchCommand(const std::vector<std::string>& raw) {
    absl::StatusOr<Args> parsed = ParseArgs(raw, "watch", {{"json", {}}});
    if (!parsed.ok()) return Usage(parsed.status());
    absl::StatusOr<std::string> id = OneJobId(*parsed, "watch");
    if (!id.ok()) return Usage(id.status());
    return Watch(*id, parsed->Has("json"));
  }

  int Watch(const std::string& job_id, bool json) {
    constexpr int kBarWidth = 30;
    v1::Job last;
    bool have_event = false;
    bool bar_drawn = false;
    absl::Time broken_since = absl::InfiniteFuture();
    auto end_bar = [&] {
      if (bar_drawn) out_ << "\n";
      bar_drawn = false;
    };
    while (true) {
      grpc::ClientContext ctx;
      v1::WatchJobRequest req;
      req.set_job_id(job_id);
      std::unique_ptr<grpc::ClientReaderInterface<v1::JobEvent>> reader =
          stub_->WatchJob(&ctx, req);
      v1::JobEvent event;
      bool terminal = false;
      while (reader->Read(&event)) {
        have_event = true;
        broken_since = absl::InfiniteFuture();
        last = event.job();
        if (json) {
          out_ << ToJson(event, /*pretty=*/false) << "\n";
        } else if (io_.stdout_is_tty) {
          out_ << "\r" << FormatProgressBar(last, kBarWidth) << "\x1b[K";
          bar_drawn = true;
        } else {
          out_ << FormatProgressLine(last) << "\n";
        }
        out_.flush();
        if (IsTerminal(last.state())) {
          terminal = true;
          break;
        }
      }
      if (terminal) {
        ctx.TryCancel();
        reader->Finish().ok();  // CANCELLED by us; nothing to report
        break;
      }
      grpc::Status s = reader->Finish();
      // Reconnect only once the job was seen: a coordinator restart must
      // not fail a CI gate, but an unreachable one at start is an error.
      const bool retryable =
          have_event &&
          (s.ok() || s.error_code() == grpc::StatusCode::UNAVAILABLE);
      if (!retryable) {
        end_bar();
        if (s.ok()) {
          err_ << "roundhouse: WatchJob ended before job " << job_id
               << " finished\n";
          return kExitRpc;
        }
        return RpcError("WatchJob", s);
      }
      const absl::Time now = absl::Now();
      if (broken_since == absl::InfiniteFuture()) {
        broken_since = now;
        end_bar();
        err_ << "roundhouse: lost the watch stream ("
             << (s.ok() ? "closed" : s.error_message()) << "); reconnecting\n";
      }
      if (now - broken_since > io_.watch_reconnect_timeout) {
        return RpcError("WatchJob",
                        s.ok() ? grpc::Status(grpc::StatusCode::UNAVAILABLE,
                                              "stream kept closing")
                               : s);
      }
      absl::SleepFor(absl::Milliseconds(500));
    }
    end_bar();
    const std::string outcome = FormatOutcome(last);
    if (last.state() == v1::JOB_STATE_SUCCEEDED && !json) {
      out_ << outcome << "\n" << FormatArtifactFiles(last);
    } else {
      err_ << outcome << "\n";
    }
    out_.flush();
    return ExitCodeForState(last.state());
  }

  int Get(const std::vector<std::string>& raw, bool inspect) {
    const char* command = inspect ? "inspect" : "get";
    absl::StatusOr<Args> parsed = ParseArgs(raw, command, {{"json", {}}});
    if (!parsed.ok()) return Usage(parsed.status());
    absl::StatusOr<std::string> id = OneJobId(*parsed, command);
    if (!id.ok()) return Usage(id.status());
    v1::GetJobRequest req;
    req.set_job_id(*id);
    v1::Job job;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    grpc::Status s = stub_->GetJob(&ctx, req, &job);
    if (!s.ok()) return RpcError("GetJob", s);
    if (parsed->Has("json")) {
      out_ << ToJson(job, /*pretty=*/true) << "\n";
    } else {
      out_ << (inspect ? FormatInspect(job) : FormatJobSummary(job));
    }
    return kExitOk;
  }

  int List(const std::vector<std::string>& raw) {
    absl::StatusOr<Args> parsed = ParseArgs(raw, "list",
                                            {{"state", {true, true}},
                                             {"label", {true, true}},
                                             {"page-size", {true}},
                                             {"page-token", {true}},
                                             {"all", {}},
                                             {"json", {}}});
    if (!parsed.ok()) return Usage(parsed.status());
    const Args& args = *parsed;
    if (!args.positionals.empty()) {
      return Usage(absl::InvalidArgumentError("list takes no JOB argument"));
    }
    v1::ListJobsRequest req;
    for (const std::string& st : args.GetAll("state")) {
      absl::StatusOr<v1::JobState> state = ParseState(st);
      if (!state.ok()) return Usage(state.status());
      req.add_states(*state);
    }
    for (const std::string& l : args.GetAll("label")) {
      absl::StatusOr<std::pair<std::string, std::string>> kv = LabelFlag(l);
      if (!kv.ok()) return Usage(kv.status());
      (*req.mutable_label_selector())[kv->first] = kv->second;
    }
    if (args.Has("page-size")) {
      absl::StatusOr<int> n = IntFlag(args, "page-size");
      if (!n.ok()) return Usage(n.status());
      if (*n <= 0) {
        return Usage(absl::InvalidArgumentError("--page-size must be > 0"));
      }
      req.set_page_size(*n);
    }
    req.set_page_token(args.Get("page-token"));
    v1::ListJobsResponse all;
    while (true) {
      v1::ListJobsResponse page;
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      grpc::Status s = stub_->ListJobs(&ctx, req, &page);
      if (!s.ok()) return RpcError("ListJobs", s);
      for (const v1::Job& j : page.jobs()) *all.add_jobs() = j;
      all.set_next_page_token(page.next_page_token());
      if (!args.Has("all") || page.next_page_token().empty()) break;
      if (page.next_page_token() == req.page_token()) {
        err_ << "roundhouse: ListJobs returned the same page token twice\n";
        return kExitRpc;
      }
      req.set_page_token(page.next_page_token());
    }
    if (args.Has("json")) {
      out_ << ToJson(all, /*pretty=*/true) << "\n";
      return kExitOk;
    }
    out_ << FormatJobTable({all.jobs().begin(), all.jobs().end()});
    if (!all.next_page_token().empty()) {
      err_ << "more jobs: roundhouse list --page-token "
           << all.next_page_token() << " (or --all)\n";
    }
    return kExitOk;
  }

  int Cancel(const std::vector<std::string>& raw) {
    absl::StatusOr<Args> parsed = ParseArgs(raw, "cancel", {{"json", {}}});
    if (!parsed.ok()) return Usage(parsed.status());
    absl::StatusOr<std::string> id = OneJobId(*parsed, "cancel");
    if (!id.ok()) return Usage(id.status());
    v1::CancelJobRequest req;
    req.set_job_id(*id);
    v1::Job job;
    grpc::ClientContext ctx;
    SetDeadline(&ctx);
    grpc::Status s = stub_->CancelJob(&ctx, req, &job);
    if (!s.ok()) return RpcError("CancelJob", s);
    if (parsed->Has("json")) {
      out_ << ToJson(job, /*pretty=*/true) << "\n";
    } else if (IsTerminal(job.state())) {
      out_ << "job " << job.job_id() << " is " << StateName(job.state())
           << "\n";
    } else {
      out_ << "job " << job.job_id() << ": cancel requested (state "
           << StateName(job.state()) << ")\n";
    }
    return kExitOk;
  }

  int Upload(const std::vector<std::string>& raw) {
    absl::StatusOr<Args> parsed = ParseArgs(raw, "upload",
                                            {{"job", {true}},
                                             {"dir", {true}},
                                             {"repo", {true}},
                                             {"endpoint", {true}},
                                             {"execute", {}}});
    if (!parsed.ok()) return Usage(parsed.status());
    const Args& args = *parsed;
    if (!args.positionals.empty()) {
      return Usage(absl::InvalidArgumentError(absl::StrCat(
          "upload takes no positional argument (got '", args.positionals[0],
          "'); use --job JOB or --dir PATH")));
    }
    if (args.Has("job") == args.Has("dir")) {
      return Usage(
          absl::InvalidArgumentError("upload needs exactly one of --job JOB "
                                     "or --dir PATH"));
    }
    if (!args.Has("repo")) {
      return Usage(absl::InvalidArgumentError("upload needs --repo ORG/NAME"));
    }
    const std::string repo = args.Get("repo");
    if (absl::Status s = ValidateRepoId(repo); !s.ok()) return Usage(s);
    const std::string endpoint =
        args.Has("endpoint") ? args.Get("endpoint") : kDefaultHubEndpoint;
    if (absl::StatusOr<Endpoint> e = ParseEndpoint(endpoint); !e.ok()) {
      return Usage(e.status());
    }

    std::string dir = args.Get("dir");
    if (args.Has("job")) {
      v1::GetJobRequest req;
      req.set_job_id(args.Get("job"));
      v1::Job job;
      grpc::ClientContext ctx;
      SetDeadline(&ctx);
      grpc::Status s = stub_->GetJob(&ctx, req, &job);
      if (!s.ok()) return RpcError("GetJob", s);
      if (job.state() != v1::JOB_STATE_SUCCEEDED) {
        err_ << "roundhouse: upload: job " << job.job_id() << " is "
             << StateName(job.state());
        if (job.state() == v1::JOB_STATE_FAILED_QUALITY) {
          err_ << ": its artifact failed the quality gate; not publishing "
                  "it\n";
          return kExitFailedQuality;
        }
        err_ << "; only a SUCCEEDED job has a deliverable to upload\n";
        return IsTerminal(job.state()) ? ExitCodeForState(job.state())
                                       : kExitLocalError;
      }
      dir = job.artifact().directory();
      if (dir.empty()) {
        err_ << "roundhouse: upload: job " << job.job_id()
             << " records no artifact directory\n";
        return kExitLocalError;
      }
    }
    if (absl::Status s = CheckDeliverable(dir); !s.ok()) {
      err_ << "roundhouse: upload: " << s.message();
      if (args.Has("job") && absl::IsNotFound(s)) {
        err_ << " (the artifact lives on the worker's artifact root; run "
                "this where it is mounted, or copy it and use --dir)";
      }
      err_ << "\n";
      return kExitLocalError;
    }
    absl::StatusOr<std::string> abs_dir = RealPath(dir);
    if (!abs_dir.ok()) {
      err_ << "roundhouse: upload: " << abs_dir.status().message() << "\n";
      return kExitLocalError;
    }
    absl::StatusOr<UploadPlan> plan = PlanUpload(*abs_dir, repo, endpoint);
    if (!plan.ok()) return Usage(plan.status());
    if (!args.Has("execute")) {
      out_ << plan->command_line << "\n";
      err_ << "(run it, or add --execute to have roundhouse run it)\n";
      return kExitOk;
    }
    if (absl::Status s =
            CheckEndpointReachable(endpoint, io_.hub_connect_timeout);
        !s.ok()) {
      err_ << "roundhouse: upload: " << s.message() << "\n";
      return kExitRpc;
    }
    const char* path_env = std::getenv("PATH");
    absl::StatusOr<std::string> program =
        FindProgram(kUploaderProgram, path_env ? path_env : "");
    if (!program.ok()) {
      err_ << "roundhouse: upload: " << program.status().message() << "\n";
      return kExitLocalError;
    }
    err_ << "running: " << plan->command_line << "\n";
    out_.flush();
    err_.flush();
    absl::StatusOr<int> code = RunUpload(*program, *plan);
    if (!code.ok()) {
      err_ << "roundhouse: upload: " << code.status().message() << "\n";
      return kExitLocalError;
    }
    if (*code != 0) {
      err_ << "roundhouse: upload: " << kUploaderProgram << " exited with "
           << *code << "\n";
    }
    return *code;
  }

 private:
  const CliIo& io_;
  std::ostream& out_;
  std::ostream& err_;
  const std::string coordinator_;
  std::unique_ptr<v1::JobService::Stub> stub_;
};

}  // namespace

int RunCli(const std::vector<std::string>& args, const CliIo& io) {
  std::ostream& err = *io.err;
  std::string command;
  std::vector<std::string> rest;
  bool help = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    if (a == "--help" || a == "-h" || (command.empty() && a == "help")) {
      help = true;
      continue;
    }
    if (command.empty() && !absl::StartsWith(a, "-")) {
      command = a;
      continue;
    }
    rest.push_back(a);
    // The value of a leading --coordinator is not the command.
    if (command.empty() && a == "--coordinator" && i + 1 < args.size()) {
      rest.push_back(args[++i]);
    }
  }
  if (help) {
    *io.out << CliUsage();
    return kExitOk;
  }
  if (command.empty()) {
    err << "roundhouse: missing COMMAND\n" << CliUsage();
    return kExitUsage;
  }
  // --coordinator may appear anywhere; the last one wins.
  std::string coordinator = io.default_coordinator;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest[i] == "--coordinator" && i + 1 < rest.size()) {
      coordinator = rest[i + 1];
    } else if (absl::StartsWith(rest[i], "--coordinator=")) {
      coordinator = rest[i].substr(14);
    }
  }
  if (coordinator.empty()) {
    err << "roundhouse: --coordinator must not be empty\n";
    return kExitUsage;
  }
  Cli cli(io, coordinator);
  if (command == "submit") return cli.Submit(rest);
  if (command == "watch") return cli.WatchCommand(rest);
  if (command == "get") return cli.Get(rest, /*inspect=*/false);
  if (command == "inspect") return cli.Get(rest, /*inspect=*/true);
  if (command == "list") return cli.List(rest);
  if (command == "cancel") return cli.Cancel(rest);
  if (command == "upload") return cli.Upload(rest);
  err << "roundhouse: unknown command '" << command
      << "'\n(see roundhouse --help)\n";
  return kExitUsage;
}

}  // namespace roundhouse::client
