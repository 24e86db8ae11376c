// roundhouse-coordinator-bench: load generator for a running coordinator.
//
//   roundhouse-coordinator-bench --coordinator 127.0.0.1:7600 --model m
//       --preload 10000 --workers 200 --clients 1,8,64 --duration-seconds 10
//
// Phases: (1) preload N queued jobs; (2) start W simulated workers that
// register and heartbeat every --heartbeat-interval-seconds (a few of them,
// --leasing-workers, hold a lease and report progress); (3) for each client
// count C, C threads submit jobs back to back for the duration; prints
// submits/s and latency percentiles per phase. Not a test: it measures.

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "roundhouse/v1/roundhouse.grpc.pb.h"

ABSL_FLAG(std::string, coordinator, "127.0.0.1:7600", "coordinator address");
ABSL_FLAG(std::string, model, "m",
          "model reference the coordinator accepts (relative to its root)");
ABSL_FLAG(int, preload, 10000, "jobs queued before measuring");
ABSL_FLAG(int, workers, 200, "simulated workers heartbeating");
ABSL_FLAG(int, leasing_workers, 4, "of those, how many hold a lease");
ABSL_FLAG(double, heartbeat_interval_seconds, 1, "heartbeat period");
ABSL_FLAG(std::string, clients, "1,8,64", "concurrent submit clients per run");
ABSL_FLAG(double, duration_seconds, 10, "length of each submit run");
ABSL_FLAG(int, channels, 8, "gRPC connections shared by the clients");

namespace v1 = roundhouse::v1;

namespace {

std::vector<std::unique_ptr<v1::JobService::Stub>> MakeJobStubs(
    const std::string& target, int n) {
  std::vector<std::unique_ptr<v1::JobService::Stub>> stubs;
  for (int i = 0; i < n; ++i) {
    grpc::ChannelArguments args;
    args.SetInt("roundhouse.bench_channel", i);  // distinct connections
    stubs.push_back(v1::JobService::NewStub(grpc::CreateCustomChannel(
        target, grpc::InsecureChannelCredentials(), args)));
  }
  return stubs;
}

struct RunResult {
  int64_t ok = 0;
  int64_t errors = 0;
  double seconds = 0;
  std::vector<double> latencies_ms;
};

double Percentile(std::vector<double>& v, double p) {
  if (v.empty()) return 0;
  size_t k = std::min(v.size() - 1, static_cast<size_t>(p * v.size()));
  std::nth_element(v.begin(), v.begin() + k, v.end());
  return v[k];
}

void Report(const std::string& name, RunResult& r) {
  double max = r.latencies_ms.empty()
                   ? 0
                   : *std::max_element(r.latencies_ms.begin(),
                                       r.latencies_ms.end());
  double p50 = Percentile(r.latencies_ms, 0.50);
  double p99 = Percentile(r.latencies_ms, 0.99);
  std::printf(
      "%-14s submits=%-7lld errors=%-4lld seconds=%6.2f submits/s=%8.1f "
      "p50_ms=%7.2f p99_ms=%7.2f max_ms=%7.2f\n",
      name.c_str(), static_cast<long long>(r.ok),
      static_cast<long long>(r.errors), r.seconds, r.ok / r.seconds, p50, p99,
      max);
  std::fflush(stdout);
}

// C threads submit until `stop_after` jobs or `duration` passes.
RunResult SubmitRun(std::vector<std::unique_ptr<v1::JobService::Stub>>& stubs,
                    int clients, absl::Duration duration, int64_t max_jobs,
                    const std::string& tag) {
  std::string spec = absl::StrCat(
      R"({"model":")", absl::GetFlag(FLAGS_model),
      R"(","scheme":{"bits":4,"group_size":32,"iters":0},)",
      R"("priority":10,"labels":{"bench":")", tag, R"("}})");
  absl::Mutex mu;
  RunResult total;
  std::atomic<int64_t> issued{0};
  absl::Time start = absl::Now();
  absl::Time end = start + duration;
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      RunResult mine;
      auto& stub = stubs[c % stubs.size()];
      while (absl::Now() < end && issued.fetch_add(1) < max_jobs) {
        v1::SubmitJobRequest req;
        req.set_spec_json(spec);
        v1::SubmitJobResponse resp;
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::seconds(30));
        absl::Time t0 = absl::Now();
        grpc::Status s = stub->SubmitJob(&ctx, req, &resp);
        double ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
        if (s.ok()) {
          ++mine.ok;
          mine.latencies_ms.push_back(ms);
        } else {
          if (mine.errors++ == 0) {
            std::fprintf(stderr, "submit error: %s\n",
                         s.error_message().c_str());
          }
        }
      }
      absl::MutexLock lock(&mu);
      total.ok += mine.ok;
      total.errors += mine.errors;
      total.latencies_ms.insert(total.latencies_ms.end(),
                                mine.latencies_ms.begin(),
                                mine.latencies_ms.end());
    });
  }
  for (auto& t : threads) t.join();
  total.seconds = absl::ToDoubleSeconds(absl::Now() - start);
  return total;
}

// Simulated workers: register, then heartbeat every interval, spread evenly
// over a few threads. The first `leasing` workers lease one job each and
// report progress on it.
class WorkerFleet {
 public:
  WorkerFleet(const std::string& target, int n, int leasing,
              absl::Duration interval)
      : n_(n), leasing_(leasing), interval_(interval) {
    channel_ = grpc::CreateChannel(target, grpc::InsecureChannelCredentials());
    stub_ = v1::WorkerService::NewStub(channel_);
  }

  bool Start() {
    leases_.resize(n_);
    for (int i = 0; i < n_; ++i) {
      grpc::ClientContext ctx;
      v1::RegisterWorkerRequest req;
      req.set_worker_id(absl::StrCat("bench-worker-", i));
      req.set_device("cuda");
      req.set_memory_bytes(80LL << 30);
      req.set_gpu_count(1);
      req.set_version("bench");
      v1::RegisterWorkerResponse resp;
      grpc::Status s = stub_->RegisterWorker(&ctx, req, &resp);
      if (!s.ok()) {
        std::fprintf(stderr, "register: %s\n", s.error_message().c_str());
        return false;
      }
      if (i < leasing_) {
        grpc::ClientContext lctx;
        v1::LeaseJobRequest lreq;
        lreq.set_worker_id(req.worker_id());
        lreq.set_wait_seconds(1);
        v1::LeaseJobResponse lresp;
        if (stub_->LeaseJob(&lctx, lreq, &lresp).ok() &&
            lresp.has_lease()) {
          leases_[i] = lresp.lease();
        }
      }
    }
    constexpr int kThreads = 4;
    for (int t = 0; t < kThreads; ++t) {
      threads_.emplace_back([this, t] { Loop(t, kThreads); });
    }
    return true;
  }

  void Stop() {
    stop_.store(true);
    for (auto& t : threads_) t.join();
  }

  std::string Summary() {
    absl::MutexLock lock(&mu_);
    double p99 = Percentile(latencies_ms_, 0.99);
    return absl::StrCat("heartbeats=", beats_, " errors=", errors_,
                        " abandon_or_cancel=", non_continue_,
                        " p99_ms=", p99);
  }

 private:
  void Loop(int t, int threads) {
    int per = (n_ + threads - 1) / threads;
    int lo = t * per, hi = std::min(n_, lo + per);
    if (lo >= hi) return;
    absl::Duration gap = interval_ / (hi - lo);
    int block = 0;
    while (!stop_.load()) {
      for (int i = lo; i < hi && !stop_.load(); ++i) {
        absl::Time due = absl::Now() + gap;
        v1::HeartbeatRequest req;
        req.set_worker_id(absl::StrCat("bench-worker-", i));
        if (!leases_[i].job_id().empty()) {
          auto* ref = req.add_leases();
          ref->set_job_id(leases_[i].job_id());
          ref->set_attempt(leases_[i].attempt());
          ref->set_lease_epoch(leases_[i].lease_epoch());
          ref->set_worker_id(req.worker_id());
          auto* p = req.add_progress();
          p->set_stage("tuning");
          p->set_blocks_total(1000);
          p->set_blocks_done(++block % 1000);
          p->set_fraction((block % 1000) / 1000.0);
        }
        v1::HeartbeatResponse resp;
        grpc::ClientContext ctx;
        absl::Time t0 = absl::Now();
        grpc::Status s = stub_->Heartbeat(&ctx, req, &resp);
        double ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
        {
          absl::MutexLock lock(&mu_);
          ++beats_;
          latencies_ms_.push_back(ms);
          if (!s.ok()) ++errors_;
          for (int a : resp.actions()) {
            if (a != v1::LEASE_ACTION_CONTINUE) ++non_continue_;
          }
        }
        absl::SleepFor(due - absl::Now());
      }
    }
  }

  const int n_, leasing_;
  const absl::Duration interval_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::WorkerService::Stub> stub_;
  std::vector<v1::Lease> leases_;
  std::vector<std::thread> threads_;
  std::atomic<bool> stop_{false};
  absl::Mutex mu_;
  int64_t beats_ = 0, errors_ = 0, non_continue_ = 0;
  std::vector<double> latencies_ms_;
};

}  // namespace

int main(int argc, char** argv) {
  absl::ParseCommandLine(argc, argv);
  std::string target = absl::GetFlag(FLAGS_coordinator);
  std::vector<int> client_counts;
  for (absl::string_view c :
       absl::StrSplit(absl::GetFlag(FLAGS_clients), ',')) {
    int n;
    if (!absl::SimpleAtoi(c, &n) || n <= 0) {
      std::fprintf(stderr, "--clients: \"%s\" is not a positive integer\n",
                   std::string(c).c_str());
      return 2;
    }
    client_counts.push_back(n);
  }
  auto stubs = MakeJobStubs(target, std::max(1, absl::GetFlag(FLAGS_channels)));
  unsigned cores = std::thread::hardware_concurrency();
  std::printf("coordinator=%s cores=%u preload=%d workers=%d leasing=%d "
              "heartbeat_interval_s=%.1f duration_s=%.1f\n",
              target.c_str(), cores, absl::GetFlag(FLAGS_preload),
              absl::GetFlag(FLAGS_workers), absl::GetFlag(FLAGS_leasing_workers),
              absl::GetFlag(FLAGS_heartbeat_interval_seconds),
              absl::GetFlag(FLAGS_duration_seconds));

  if (absl::GetFlag(FLAGS_preload) > 0) {
    RunResult pre = SubmitRun(stubs, 32, absl::Hours(1),
                              absl::GetFlag(FLAGS_preload), "preload");
    Report("preload(32)", pre);
    if (pre.ok < absl::GetFlag(FLAGS_preload)) {
      std::fprintf(stderr, "preload incomplete\n");
      return 1;
    }
  }
  WorkerFleet fleet(target, absl::GetFlag(FLAGS_workers),
                    absl::GetFlag(FLAGS_leasing_workers),
                    absl::Seconds(absl::GetFlag(FLAGS_heartbeat_interval_seconds)));
  if (absl::GetFlag(FLAGS_workers) > 0 && !fleet.Start()) return 1;
  absl::SleepFor(absl::Seconds(1));
  for (int c : client_counts) {
    RunResult r = SubmitRun(
        stubs, c, absl::Seconds(absl::GetFlag(FLAGS_duration_seconds)),
        INT64_MAX, absl::StrCat("c", c));
    Report(absl::StrCat("clients=", c), r);
  }
  if (absl::GetFlag(FLAGS_workers) > 0) {
    fleet.Stop();
    std::printf("workers: %s\n", fleet.Summary().c_str());
  }
  return 0;
}
