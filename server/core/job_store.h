#ifndef ROUNDHOUSE_SERVER_CORE_JOB_STORE_H_
#define ROUNDHOUSE_SERVER_CORE_JOB_STORE_H_

// Durable storage of jobs and workers in SQLite (WAL, synchronous=FULL).
//
// Writes are group-committed: every write is queued to one writer thread,
// which drains everything queued so far into a single transaction and commits
// it (one fsync for the whole batch). A caller that must not acknowledge
// before durability waits on the returned ticket. Writes are applied in the
// order they were queued, so queueing full-row snapshots of a job under the
// caller's own lock makes the last queued snapshot the durable one.
//
// Thread safety: all methods are thread-safe. Load*() are meant for start-up,
// before writes are queued.

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "roundhouse/v1/roundhouse.pb.h"

struct sqlite3;
struct sqlite3_stmt;

namespace roundhouse::server {

// A job as stored: the public Job message plus coordinator-internal fields.
struct StoredJob {
  roundhouse::v1::Job job;
  std::string model_path;          // resolved absolute model directory
  int32_t uncounted_retries = 0;   // worker lost / preempted requeues
  bool low_memory = false;         // next attempt runs in low-memory mode
  bool low_memory_retry_used = false;
};

struct StoredWorker {
  roundhouse::v1::RegisterWorkerRequest info;
  double registered_unix_seconds = 0;
};

// Completion of one queued write. Wait() blocks until the batch holding the
// write committed (OK) or failed (the error, naming the job or worker).
class WriteTicket {
 public:
  absl::Status Wait() {
    done_.WaitForNotification();
    return status_;
  }
  bool Done() const { return done_.HasBeenNotified(); }

 private:
  friend class JobStore;
  absl::Status status_;
  absl::Notification done_;
};

class JobStore {
 public:
  // Opens (creating if needed) the database at `path` and starts the writer
  // thread. Errors name the path.
  static absl::StatusOr<std::unique_ptr<JobStore>> Open(
      const std::string& path);

  // Drains and commits every queued write, then closes the database.
  ~JobStore();

  JobStore(const JobStore&) = delete;
  JobStore& operator=(const JobStore&) = delete;

  // Every stored job, in acceptance order (created, then insertion order).
  absl::StatusOr<std::vector<StoredJob>> LoadJobs();
  absl::StatusOr<std::vector<StoredWorker>> LoadWorkers();

  // Queue an INSERT of a new job. Fails (on the ticket) when the job id or
  // the idempotency key already exists (UNIQUE constraints).
  std::shared_ptr<WriteTicket> InsertJob(const StoredJob& job);
  // Queue a full-row UPDATE of an existing job.
  std::shared_ptr<WriteTicket> UpdateJob(const StoredJob& job);
  // Queue an insert-or-replace of a worker row.
  std::shared_ptr<WriteTicket> UpsertWorker(const StoredWorker& worker);

  // Number of committed transactions and of writes in them, since Open.
  struct Counters {
    int64_t transactions = 0;
    int64_t writes = 0;
  };
  Counters GetCounters() const;

 private:
  enum class Kind { kInsertJob, kUpdateJob, kUpsertWorker };
  // A queued write holds a copy of the row taken under the caller's lock.
  struct PendingWrite {
    Kind kind;
    StoredJob job;
    StoredWorker worker;
    std::shared_ptr<WriteTicket> ticket;
  };

  explicit JobStore(sqlite3* db, std::string path);
  std::shared_ptr<WriteTicket> Enqueue(PendingWrite write);
  void WriterLoop();
  absl::Status Apply(const PendingWrite& write);
  absl::Status Exec(const char* sql);

  sqlite3* const db_;
  const std::string path_;
  mutable absl::Mutex mu_;
  std::deque<PendingWrite> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  Counters counters_ ABSL_GUARDED_BY(mu_);
  // Prepared statements, used by the writer thread only.
  sqlite3_stmt* insert_stmt_ = nullptr;
  sqlite3_stmt* update_stmt_ = nullptr;
  sqlite3_stmt* worker_stmt_ = nullptr;
  std::thread writer_;
};

}  // namespace roundhouse::server

#endif  // ROUNDHOUSE_SERVER_CORE_JOB_STORE_H_
