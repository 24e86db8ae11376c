#ifndef ROUNDHOUSE_SERVER_METRICS_H_
#define ROUNDHOUSE_SERVER_METRICS_H_

// Coordinator metrics (names per docs service.md §5.2, coordinator table).
//
// Counters and histograms are updated from CoordinatorListener events and
// from the RPC layer (OnRpc); gauges (queue depth, running, workers by
// state, oldest enqueue time, last heartbeats) are refreshed from the
// coordinator's stats at every Collect(), i.e. at every scrape. No job ids or
// model names become labels.
//
// Thread-safe. Create with std::make_shared (the Exposer holds a weak_ptr);
// SetStatsSource before the first scrape; the source must outlive scrapes
// (call SetStatsSource(nullptr) before destroying it).

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "prometheus/collectable.h"
#include "prometheus/counter.h"
#include "prometheus/family.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"
#include "server/core/coordinator.h"

namespace roundhouse::server {

class CoordinatorMetrics : public CoordinatorListener,
                           public prometheus::Collectable {
 public:
  CoordinatorMetrics();

  void SetStatsSource(std::function<CoordinatorStats()> source);

  // One finished RPC: `method` is the RPC name ("SubmitJob"), `code` the gRPC
  // status code name ("OK", "INVALID_ARGUMENT").
  void OnRpc(const std::string& method, const std::string& code,
             double seconds);

  // CoordinatorListener.
  void OnJobSubmitted(int priority) override;
  void OnJobStarted(double queue_wait_seconds, bool resumed) override;
  void OnRetry(RetryReason reason) override;
  void OnLeaseExpired() override;
  void OnJobFinished(roundhouse::v1::JobState state,
                     double run_seconds) override;

  // prometheus::Collectable: refreshes the gauges, then collects.
  std::vector<prometheus::MetricFamily> Collect() const override;

  // The text exposition format of Collect() (for tests and debugging).
  std::string SerializeText() const;

 private:
  void RefreshGauges() const;

  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Counter>& submitted_;
  prometheus::Family<prometheus::Counter>& completed_;
  prometheus::Family<prometheus::Gauge>& queued_;
  prometheus::Gauge& running_;
  prometheus::Gauge& oldest_enqueue_;
  prometheus::Histogram& queue_wait_;
  prometheus::Family<prometheus::Histogram>& duration_;
  prometheus::Counter& attempts_;
  prometheus::Family<prometheus::Counter>& retries_;
  prometheus::Counter& lease_expirations_;
  prometheus::Counter& resumes_;
  prometheus::Family<prometheus::Gauge>& workers_;
  prometheus::Family<prometheus::Gauge>& worker_heartbeat_;
  prometheus::Family<prometheus::Counter>& rpc_requests_;
  prometheus::Family<prometheus::Histogram>& rpc_duration_;

  mutable absl::Mutex mu_;  // guards the source and the gauge refresh
  std::function<CoordinatorStats()> source_ ABSL_GUARDED_BY(mu_);
  // Starts with the default priority (50) so the queue-depth series exists
  // from the first scrape, even when every job is leased at once.
  mutable std::vector<int> known_priorities_ ABSL_GUARDED_BY(mu_) = {50};
};

}  // namespace roundhouse::server

#endif  // ROUNDHOUSE_SERVER_METRICS_H_
