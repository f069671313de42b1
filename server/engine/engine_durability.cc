// Durability: the step's group commit to the write-ahead log, periodic checkpoints, and Persist.

#include <algorithm>

#include "server/engine/engine_impl.h"

namespace titans::engine {

void Engine::Impl::CommitDurable(std::vector<std::function<void()>>* callbacks) {
  if (pending_durable_.empty()) return;
  const auto start = Clock::now();
  int64_t bytes = 0;
  std::vector<absl::Status> statuses;
  if (shared_) {
    std::vector<WalRecord> records;
    for (const PendingDurable& d : pending_durable_) {
      records.push_back(d.record);
      bytes += static_cast<int64_t>(EncodeWalRecord(d.record).size());
    }
    statuses = files_->AppendLog(records);
  } else {
    const int64_t before = wal_->bytes_total();
    for (const PendingDurable& d : pending_durable_) (void)wal_->Append(d.record);
    statuses.assign(pending_durable_.size(), wal_->Sync());
    bytes = wal_->bytes_total() - before;
  }
  {
    MutexLock lock(table_.mu());
    log_bytes_ += bytes;
  }
  const bool all_ok =
      std::all_of(statuses.begin(), statuses.end(), [](const absl::Status& st) { return st.ok(); });
  observer().OnLogCommit(bytes, std::chrono::duration<double>(Clock::now() - start).count(),
                         all_ok);
  for (size_t i = 0; i < pending_durable_.size(); ++i) {
    PendingDurable& d = pending_durable_[i];
    const absl::Status& st = statuses[i];
    if (st.ok()) {
      callbacks->push_back(std::move(d.on_durable));
    } else if (st.code() == absl::StatusCode::kAborted) {
      d.on_failure(MovedError(ClientId(d.session->record)));
      d.session->moved = true;
    } else {
      d.on_failure(absl::Status(st.code(), absl::StrCat("the operation could not be made durable "
                                                        "(the session is unchanged): ",
                                                        st.message())));
    }
  }
  pending_durable_.clear();
}

void Engine::Impl::CheckpointIfDue() {
  if (options_.durability == Durability::kNone) return;
  // Past wal_max_bytes every session with unpersisted tokens is checkpointed, so that the old log
  // can go; only if all of them are between operations (an unfinished append must never reach a
  // checkpoint).
  const bool drop_log = wal_ && wal_->bytes_since_drop() > options_.wal_max_bytes;
  bool all_quiescent = true;
  std::vector<Session*> due;
  {
    MutexLock lock(table_.mu());
    const auto now = Clock::now();
    table_.ForEach([&](Session* s) {
      const int64_t lag = s->record.position - s->persisted_position;
      if (!s->slot || lag <= 0 || s->phase != SessionPhase::kOpen) return;
      if (!Quiescent(*s)) {
        all_quiescent = false;
        return;
      }
      if (drop_log || lag >= options_.checkpoint_interval_tokens ||
          std::chrono::duration<double>(now - s->last_checkpoint).count() >=
              options_.checkpoint_interval_seconds) {
        due.push_back(s);
      }
    });
  }
  bool all_written = true;
  for (Session* s : due) all_written = Persist(s).ok() && all_written;
  if (drop_log && all_quiescent && all_written) (void)wal_->DropOldSegments();
}

absl::Status Engine::Impl::Persist(Session* s) {
  SessionRecord record;
  {
    MutexLock lock(table_.mu());
    record = s->record;
  }
  const absl::Status st = WriteCheckpoint(s, &record, /*create=*/false);
  MutexLock lock(table_.mu());
  CommitCheckpoint(s, record, st);
  return st;
}

absl::Status Engine::Impl::WriteCheckpoint(Session* s, SessionRecord* record, bool create) {
  const auto start = Clock::now();
  TITANS_ASSIGN_OR_RETURN(std::string blob, runner_->Export(*s->slot));
  record->position = runner_->position(*s->slot);
  record->state_bytes = runner_->state_bytes(*s->slot);
  // The rewind points and tokens go first, the checkpoint last: whatever stops us between the
  // writes (a crash, another replica taking the session over), the stored tokens reach at least
  // as far as the stored checkpoint, and LoadHistory cuts them back to it. (The other order lost
  // the history of a session taken over between the writes.) A new session has no fence to
  // write under until Create, and a history of one point to lose.
  const bool pair_tokens = s->history.enabled() && s->history.end() == record->position;
  auto write_tokens = [&] {
    StorePoints(s);
    return files_->WriteRewindTokens(
        record->id, RewindTokens{s->history.first_position(), s->history.tokens(), record->epoch});
  };
  absl::Status st = pair_tokens && !create ? write_tokens() : absl::OkStatus();
  if (st.ok()) st = create ? files_->Create(*record, blob) : files_->Write(*record, blob);
  if (st.ok() && pair_tokens && create) st = write_tokens();
  observer().OnCheckpoint(static_cast<int64_t>(blob.size()),
                          std::chrono::duration<double>(Clock::now() - start).count(), st.ok());
  return st;
}

void Engine::Impl::CommitCheckpoint(Session* s, const SessionRecord& written,
                                    const absl::Status& st) {
  if (st.code() == absl::StatusCode::kAborted) s->moved = true;
  if (!st.ok()) return;
  s->record.position = written.position;
  s->record.state_bytes = written.state_bytes;
  s->state_bytes = written.state_bytes;
  s->persisted_position = written.position;
  s->last_checkpoint = Clock::now();
}

}  // namespace titans::engine
