#include "server/core/job_store.h"

#include <sqlite3.h>

#include <set>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace roundhouse::server {
namespace {

using roundhouse::v1::Job;
using roundhouse::v1::JobState;

constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT NOT NULL UNIQUE,
  idempotency_key TEXT UNIQUE,
  state INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  created_unix_seconds REAL NOT NULL,
  started_unix_seconds REAL NOT NULL DEFAULT 0,
  finished_unix_seconds REAL NOT NULL DEFAULT 0,
  attempt INTEGER NOT NULL DEFAULT 0,
  lease_epoch INTEGER NOT NULL DEFAULT 0,
  worker_id TEXT NOT NULL DEFAULT '',
  retries_counted INTEGER NOT NULL DEFAULT 0,
  uncounted_retries INTEGER NOT NULL DEFAULT 0,
  cancel_requested INTEGER NOT NULL DEFAULT 0,
  low_memory INTEGER NOT NULL DEFAULT 0,
  low_memory_retry_used INTEGER NOT NULL DEFAULT 0,
  model_path TEXT NOT NULL,
  labels BLOB,
  spec BLOB NOT NULL,
  progress BLOB,
  error BLOB,
  artifact BLOB,
  estimated_memory_bytes INTEGER NOT NULL DEFAULT 0,
  memory_estimate_note TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state);
CREATE TABLE IF NOT EXISTS workers (
  worker_id TEXT PRIMARY KEY,
  info BLOB NOT NULL,
  registered_unix_seconds REAL NOT NULL
);
)sql";

constexpr char kInsertJob[] = R"sql(
INSERT INTO jobs (job_id, idempotency_key, state, priority,
  created_unix_seconds, started_unix_seconds, finished_unix_seconds, attempt,
  lease_epoch, worker_id, retries_counted, uncounted_retries,
  cancel_requested, low_memory, low_memory_retry_used, model_path, labels,
  spec, progress, error, artifact, estimated_memory_bytes,
  memory_estimate_note)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
  ?16, ?17, ?18, ?19, ?20, ?21, ?22, ?23))sql";

constexpr char kUpdateJob[] = R"sql(
UPDATE jobs SET idempotency_key = ?2, state = ?3, priority = ?4,
  created_unix_seconds = ?5, started_unix_seconds = ?6,
  finished_unix_seconds = ?7, attempt = ?8, lease_epoch = ?9,
  worker_id = ?10, retries_counted = ?11, uncounted_retries = ?12,
  cancel_requested = ?13, low_memory = ?14, low_memory_retry_used = ?15,
  model_path = ?16, labels = ?17, spec = ?18, progress = ?19, error = ?20,
  artifact = ?21, estimated_memory_bytes = ?22, memory_estimate_note = ?23
WHERE job_id = ?1)sql";

constexpr char kUpsertWorker[] =
    "INSERT OR REPLACE INTO workers (worker_id, info, registered_unix_seconds)"
    " VALUES (?1, ?2, ?3)";

constexpr char kSelectJobs[] = R"sql(
SELECT job_id, idempotency_key, state, priority, created_unix_seconds,
  started_unix_seconds, finished_unix_seconds, attempt, lease_epoch,
  worker_id, retries_counted, uncounted_retries, cancel_requested,
  low_memory, low_memory_retry_used, model_path, labels, spec, progress,
  error, artifact, estimated_memory_bytes, memory_estimate_note
FROM jobs ORDER BY seq)sql";

// Columns added after the first release, with their definitions: a database
// created before gets them by ALTER TABLE at Open.
constexpr std::pair<const char*, const char*> kAddedJobColumns[] = {
    {"estimated_memory_bytes", "INTEGER NOT NULL DEFAULT 0"},
    {"memory_estimate_note", "TEXT NOT NULL DEFAULT ''"},
};

// RAII for prepared statements.
class Statement {
 public:
  Statement(sqlite3* db, const char* sql) : db_(db) {
    rc_ = sqlite3_prepare_v2(db, sql, -1, &stmt_, nullptr);
  }
  ~Statement() { sqlite3_finalize(stmt_); }
  absl::Status status() const {
    if (rc_ == SQLITE_OK) return absl::OkStatus();
    return absl::InternalError(
        absl::StrCat("sqlite prepare: ", sqlite3_errmsg(db_)));
  }
  sqlite3_stmt* get() { return stmt_; }

 private:
  sqlite3* db_;
  sqlite3_stmt* stmt_ = nullptr;
  int rc_;
};

void BindText(sqlite3_stmt* s, int i, const std::string& v) {
  sqlite3_bind_text(s, i, v.data(), static_cast<int>(v.size()),
                    SQLITE_TRANSIENT);
}
void BindBlob(sqlite3_stmt* s, int i, const std::string& v) {
  sqlite3_bind_blob(s, i, v.data(), static_cast<int>(v.size()),
                    SQLITE_TRANSIENT);
}
std::string ColumnBlob(sqlite3_stmt* s, int i) {
  const void* p = sqlite3_column_blob(s, i);
  int n = sqlite3_column_bytes(s, i);
  return p == nullptr ? std::string() : std::string(static_cast<const char*>(p), n);
}
std::string ColumnText(sqlite3_stmt* s, int i) {
  const unsigned char* p = sqlite3_column_text(s, i);
  int n = sqlite3_column_bytes(s, i);
  return p == nullptr ? std::string()
                      : std::string(reinterpret_cast<const char*>(p), n);
}

void BindJob(sqlite3_stmt* s, const StoredJob& sj) {
  const Job& j = sj.job;
  BindText(s, 1, j.job_id());
  if (j.idempotency_key().empty()) {
    sqlite3_bind_null(s, 2);  // NULLs never collide on UNIQUE
  } else {
    BindText(s, 2, j.idempotency_key());
  }
  sqlite3_bind_int(s, 3, j.state());
  sqlite3_bind_int(s, 4, j.spec().priority());
  sqlite3_bind_double(s, 5, j.created_unix_seconds());
  sqlite3_bind_double(s, 6, j.started_unix_seconds());
  sqlite3_bind_double(s, 7, j.finished_unix_seconds());
  sqlite3_bind_int(s, 8, j.attempt());
  sqlite3_bind_int64(s, 9, j.lease_epoch());
  BindText(s, 10, j.worker_id());
  sqlite3_bind_int(s, 11, j.retries_counted());
  sqlite3_bind_int(s, 12, sj.uncounted_retries);
  sqlite3_bind_int(s, 13, j.cancel_requested() ? 1 : 0);
  sqlite3_bind_int(s, 14, sj.low_memory ? 1 : 0);
  sqlite3_bind_int(s, 15, sj.low_memory_retry_used ? 1 : 0);
  BindText(s, 16, sj.model_path);
  // Labels are inside the spec; the column keeps them queryable by hand.
  roundhouse::v1::JobSpec labels_only;
  *labels_only.mutable_labels() = j.spec().labels();
  BindBlob(s, 17, labels_only.SerializeAsString());
  BindBlob(s, 18, j.spec().SerializeAsString());
  BindBlob(s, 19, j.progress().SerializeAsString());
  BindBlob(s, 20, j.error().SerializeAsString());
  BindBlob(s, 21, j.artifact().SerializeAsString());
  sqlite3_bind_int64(s, 22, j.estimated_memory_bytes());
  BindText(s, 23, j.memory_estimate_note());
}

// Adds the kAddedJobColumns a database created by an older build lacks.
absl::Status MigrateJobColumns(sqlite3* db) {
  std::set<std::string> have;
  sqlite3_stmt* s = nullptr;
  if (sqlite3_prepare_v2(db, "PRAGMA table_info(jobs)", -1, &s, nullptr) !=
      SQLITE_OK) {
    return absl::InternalError(
        absl::StrCat("PRAGMA table_info(jobs): ", sqlite3_errmsg(db)));
  }
  while (sqlite3_step(s) == SQLITE_ROW) have.insert(ColumnText(s, 1));
  sqlite3_finalize(s);
  for (const auto& [name, definition] : kAddedJobColumns) {
    if (have.count(name)) continue;
    const std::string sql =
        absl::StrCat("ALTER TABLE jobs ADD COLUMN ", name, " ", definition);
    char* err = nullptr;
    if (sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : "unknown error";
      sqlite3_free(err);
      return absl::InternalError(absl::StrCat(sql, ": ", msg));
    }
  }
  return absl::OkStatus();
}

}  // namespace

JobStore::JobStore(sqlite3* db, std::string path)
    : db_(db), path_(std::move(path)) {
  writer_ = std::thread([this] { WriterLoop(); });
}

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(
    const std::string& path) {
  sqlite3* db = nullptr;
  int rc = sqlite3_open_v2(
      path.c_str(), &db,
      SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX,
      nullptr);
  if (rc != SQLITE_OK) {
    std::string msg = db ? sqlite3_errmsg(db) : sqlite3_errstr(rc);
    sqlite3_close(db);
    return absl::UnavailableError(
        absl::StrCat("cannot open database ", path, ": ", msg));
  }
  sqlite3_busy_timeout(db, 5000);
  for (const char* pragma :
       {"PRAGMA journal_mode=WAL", "PRAGMA synchronous=FULL",
        "PRAGMA foreign_keys=ON", kSchema}) {
    char* err = nullptr;
    if (sqlite3_exec(db, pragma, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string msg = err ? err : "unknown error";
      sqlite3_free(err);
      sqlite3_close(db);
      return absl::InternalError(
          absl::StrCat("cannot initialise database ", path, ": ", msg));
    }
  }
  if (absl::Status s = MigrateJobColumns(db); !s.ok()) {
    sqlite3_close(db);
    return absl::InternalError(absl::StrCat("cannot initialise database ",
                                            path, ": ", s.message()));
  }
  return std::unique_ptr<JobStore>(new JobStore(db, path));
}

JobStore::~JobStore() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  writer_.join();
  sqlite3_finalize(insert_stmt_);
  sqlite3_finalize(update_stmt_);
  sqlite3_finalize(worker_stmt_);
  sqlite3_close(db_);
}

absl::StatusOr<std::vector<StoredJob>> JobStore::LoadJobs() {
  Statement st(db_, kSelectJobs);
  RETURN_IF_ERROR(st.status());
  std::vector<StoredJob> out;
  sqlite3_stmt* s = st.get();
  int rc;
  while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
    StoredJob sj;
    Job& j = sj.job;
    j.set_job_id(ColumnText(s, 0));
    j.set_idempotency_key(ColumnText(s, 1));
    j.set_state(static_cast<JobState>(sqlite3_column_int(s, 2)));
    j.set_created_unix_seconds(sqlite3_column_double(s, 4));
    j.set_started_unix_seconds(sqlite3_column_double(s, 5));
    j.set_finished_unix_seconds(sqlite3_column_double(s, 6));
    j.set_attempt(sqlite3_column_int(s, 7));
    j.set_lease_epoch(sqlite3_column_int64(s, 8));
    j.set_worker_id(ColumnText(s, 9));
    j.set_retries_counted(sqlite3_column_int(s, 10));
    sj.uncounted_retries = sqlite3_column_int(s, 11);
    j.set_cancel_requested(sqlite3_column_int(s, 12) != 0);
    sj.low_memory = sqlite3_column_int(s, 13) != 0;
    sj.low_memory_retry_used = sqlite3_column_int(s, 14) != 0;
    sj.model_path = ColumnText(s, 15);
    j.set_estimated_memory_bytes(sqlite3_column_int64(s, 21));
    j.set_memory_estimate_note(ColumnText(s, 22));
    if (!j.mutable_spec()->ParseFromString(ColumnBlob(s, 17)) ||
        !j.mutable_progress()->ParseFromString(ColumnBlob(s, 18)) ||
        !j.mutable_error()->ParseFromString(ColumnBlob(s, 19)) ||
        !j.mutable_artifact()->ParseFromString(ColumnBlob(s, 20))) {
      return absl::DataLossError(absl::StrCat(
          "database ", path_, ": job ", j.job_id(), " has a corrupt row"));
    }
    out.push_back(std::move(sj));
  }
  if (rc != SQLITE_DONE) {
    return absl::InternalError(
        absl::StrCat("reading jobs from ", path_, ": ", sqlite3_errmsg(db_)));
  }
  return out;
}

absl::StatusOr<std::vector<StoredWorker>> JobStore::LoadWorkers() {
  Statement st(db_,
               "SELECT info, registered_unix_seconds FROM workers "
               "ORDER BY worker_id");
  RETURN_IF_ERROR(st.status());
  std::vector<StoredWorker> out;
  int rc;
  while ((rc = sqlite3_step(st.get())) == SQLITE_ROW) {
    StoredWorker w;
    if (!w.info.ParseFromString(ColumnBlob(st.get(), 0))) {
      return absl::DataLossError(
          absl::StrCat("database ", path_, ": corrupt worker row"));
    }
    w.registered_unix_seconds = sqlite3_column_double(st.get(), 1);
    out.push_back(std::move(w));
  }
  if (rc != SQLITE_DONE) {
    return absl::InternalError(absl::StrCat("reading workers from ", path_,
                                            ": ", sqlite3_errmsg(db_)));
  }
  return out;
}

std::shared_ptr<WriteTicket> JobStore::InsertJob(const StoredJob& job) {
  return Enqueue({Kind::kInsertJob, job, {}, nullptr});
}
std::shared_ptr<WriteTicket> JobStore::UpdateJob(const StoredJob& job) {
  return Enqueue({Kind::kUpdateJob, job, {}, nullptr});
}
std::shared_ptr<WriteTicket> JobStore::UpsertWorker(
    const StoredWorker& worker) {
  return Enqueue({Kind::kUpsertWorker, {}, worker, nullptr});
}

JobStore::Counters JobStore::GetCounters() const {
  absl::MutexLock lock(&mu_);
  return counters_;
}

std::shared_ptr<WriteTicket> JobStore::Enqueue(PendingWrite write) {
  auto ticket = std::make_shared<WriteTicket>();
  write.ticket = ticket;
  absl::MutexLock lock(&mu_);
  if (stopping_) {
    ticket->status_ = absl::UnavailableError("the job store is closing");
    ticket->done_.Notify();
    return ticket;
  }
  queue_.push_back(std::move(write));
  return ticket;
}

absl::Status JobStore::Exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : sqlite3_errmsg(db_);
    sqlite3_free(err);
    return absl::InternalError(absl::StrCat(sql, ": ", msg));
  }
  return absl::OkStatus();
}

absl::Status JobStore::Apply(const PendingWrite& w) {
  // Statements are prepared once and reused (writer thread only).
  sqlite3_stmt** slot = w.kind == Kind::kInsertJob   ? &insert_stmt_
                        : w.kind == Kind::kUpdateJob ? &update_stmt_
                                                     : &worker_stmt_;
  if (*slot == nullptr) {
    const char* sql = w.kind == Kind::kInsertJob   ? kInsertJob
                      : w.kind == Kind::kUpdateJob ? kUpdateJob
                                                   : kUpsertWorker;
    if (sqlite3_prepare_v2(db_, sql, -1, slot, nullptr) != SQLITE_OK) {
      *slot = nullptr;
      return absl::InternalError(
          absl::StrCat("sqlite prepare: ", sqlite3_errmsg(db_)));
    }
  }
  sqlite3_stmt* s = *slot;
  sqlite3_reset(s);
  sqlite3_clear_bindings(s);
  std::string what;
  if (w.kind == Kind::kUpsertWorker) {
    BindText(s, 1, w.worker.info.worker_id());
    BindBlob(s, 2, w.worker.info.SerializeAsString());
    sqlite3_bind_double(s, 3, w.worker.registered_unix_seconds);
    what = absl::StrCat("worker ", w.worker.info.worker_id());
  } else {
    BindJob(s, w.job);
    what = absl::StrCat("job ", w.job.job.job_id());
  }
  int rc = sqlite3_step(s);
  sqlite3_reset(s);
  if (rc != SQLITE_DONE) {
    std::string msg = sqlite3_errmsg(db_);
    if ((rc & 0xff) == SQLITE_CONSTRAINT) {
      return absl::AlreadyExistsError(
          absl::StrCat("storing ", what, ": ", msg));
    }
    return absl::InternalError(absl::StrCat("storing ", what, ": ", msg));
  }
  if (w.kind == Kind::kUpdateJob && sqlite3_changes(db_) != 1) {
    return absl::NotFoundError(absl::StrCat("storing ", what, ": no such row"));
  }
  return absl::OkStatus();
}

void JobStore::WriterLoop() {
  while (true) {
    std::deque<PendingWrite> batch;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(
          +[](JobStore* self) ABSL_NO_THREAD_SAFETY_ANALYSIS {
            return self->stopping_ || !self->queue_.empty();
          },
          this));
      if (queue_.empty() && stopping_) return;
      batch.swap(queue_);
    }
    // One transaction, one fsync, for everything queued so far.
    std::vector<absl::Status> results(batch.size());
    absl::Status batch_status = Exec("BEGIN IMMEDIATE");
    for (size_t i = 0; batch_status.ok() && i < batch.size(); ++i) {
      results[i] = Apply(batch[i]);
      if (!results[i].ok()) batch_status = results[i];
    }
    if (batch_status.ok()) batch_status = Exec("COMMIT");
    if (!batch_status.ok()) {
      // Isolate the failing write(s): redo each in its own transaction so
      // one bad write does not fail its neighbours.
      Exec("ROLLBACK").IgnoreError();
      for (size_t i = 0; i < batch.size(); ++i) {
        results[i] = Exec("BEGIN IMMEDIATE");
        if (results[i].ok()) results[i] = Apply(batch[i]);
        if (results[i].ok()) {
          results[i] = Exec("COMMIT");
        } else {
          Exec("ROLLBACK").IgnoreError();
        }
      }
    }
    {
      absl::MutexLock lock(&mu_);
      counters_.transactions += batch_status.ok() ? 1 : batch.size();
      counters_.writes += batch.size();
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      batch[i].ticket->status_ = results[i];
      batch[i].ticket->done_.Notify();
    }
  }
}

}  // namespace roundhouse::server
