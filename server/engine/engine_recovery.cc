// Recovery and loading: the write-ahead log replayed onto checkpoints at start-up, sessions
// registered and discovered, a stored session made resident (acquired and replayed from a shared
// store).

#include "absl/strings/str_format.h"
#include "server/engine/engine_impl.h"
#include "server/log.h"

namespace titans::engine {

absl::Status Engine::Impl::Recover() {
  const auto start = Clock::now();
  const std::string dir = options_.state_dir + "/wal";
  std::vector<std::string> warnings;
  std::vector<WalRecord> records = Wal::ReadAll(dir, &warnings, env_);
  for (const std::string& w : warnings) {
    server::Log(server::LogLevel::kWarning, "wal_read_warning", {{"detail", w}});
  }
  // Per session with records: loading its checkpoint and replaying them is one restore, timed
  // and reported once (titans_restore_duration_seconds), failed if any part failed.
  struct Replay {
    int64_t bytes = 0;
    Clock::duration time{};
    int64_t applied = 0;
    bool ok = true;
  };
  std::map<Session*, Replay> replays;
  for (const WalRecord& r : records) {
    Session* s = nullptr;
    {
      MutexLock lock(table_.mu());
      s = table_.Get(r.session_id);
    }
    if (s == nullptr) continue;  // closed after it was logged
    Replay& replay = replays[s];
    if (!replay.ok) continue;
    const auto replay_start = Clock::now();
    if (!s->slot) {
      bool complete = true;
      replay.ok = Restore(s, &replay.bytes, &complete).ok() && complete;
    }
    if (replay.ok) {
      absl::StatusOr<bool> applied = ReplayRecord(s, r);
      if (!applied.ok()) {
        server::Log(server::LogLevel::kError, "wal_replay_failed",
                    {{"session", s->record.id}, {"error", applied.status().ToString()}});
        replay.ok = false;
      } else {
        replay.applied += *applied;
      }
    }
    replay.time += Clock::now() - replay_start;
  }
  int64_t recovered = 0, broken = 0, touched = 0;
  for (const auto& [s, replay] : replays) {
    observer().OnRestore(replay.bytes, std::chrono::duration<double>(replay.time).count(),
                         replay.ok);
    recovered += replay.applied;
    broken += !replay.ok;
    if (replay.applied > 0) {
      ++touched;
      PublishReplayed(s, 0);  // counted below
      TITANS_RETURN_IF_ERROR(Persist(s));
    }
  }
  TITANS_ASSIGN_OR_RETURN(wal_, Wal::Open(dir, env_));
  TITANS_RETURN_IF_ERROR(wal_->DropOldSegments());
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  {
    MutexLock lock(table_.mu());
    recovered_records_ = recovered;
    unrecoverable_sessions_ = broken;
    recovery_seconds_ = seconds;
  }
  server::Log(server::LogLevel::kInfo, "wal_recovered",
              {{"records", std::to_string(recovered)},
               {"sessions", std::to_string(touched)},
               {"seconds", absl::StrFormat("%.3f", seconds)}});
  return absl::OkStatus();
}

void Engine::Impl::Register(SessionRecord r) {
  auto s = NewSession();
  s->state_bytes = r.state_bytes;
  s->spilled = true;
  s->persisted_position = r.position;
  s->record = std::move(r);
  s->rewind_floor = s->record.position;
  s->held = !shared_;  // a shared store's session is held only once acquired
  table_.Insert(std::move(s));
}

void Engine::Impl::Discover(const std::string& principal, const std::string& id) {
  if (!shared_) return;
  {
    MutexLock lock(table_.mu());
    if (table_.Find(principal, id).ok()) return;
  }
  if (!ValidateName(id, "id").ok() || !ValidatePrincipal(principal).ok()) return;
  for (const std::string& name : StorageNames(principal, id)) {
    auto record = files_->ReadRecord(name);
    if (record.ok() && record->id == name) {
      MutexLock lock(table_.mu());
      if (!table_.Contains(name)) Register(std::move(*record));
      return;
    }
  }
}

std::unique_ptr<Session> Engine::Impl::NewSession() const {
  return std::make_unique<Session>(options_.rewind_window_tokens, options_.rewind_interval_tokens);
}

absl::Status Engine::Impl::EnsureResident(Session* s) {
  if (s->slot) return absl::OkStatus();
  const auto start = Clock::now();
  int64_t bytes = 0;
  bool complete = true;
  absl::Status st = Restore(s, &bytes, &complete);
  observer().OnRestore(bytes, std::chrono::duration<double>(Clock::now() - start).count(),
                       st.ok() && complete);
  return st;
}

absl::Status Engine::Impl::Restore(Session* s, int64_t* bytes, bool* complete) {
  const std::string id = s->record.id;
  if (shared_) {
    TITANS_ASSIGN_OR_RETURN(const bool migrated, files_->Acquire(id));
    if (migrated) observer().OnSessionAcquired();
    s->held = true;
    TITANS_ASSIGN_OR_RETURN(SessionRecord record, files_->ReadRecord(id));
    MutexLock lock(table_.mu());
    record.last_used_unix_ms = s->record.last_used_unix_ms;
    s->record = std::move(record);
    s->persisted_position = s->record.position;
  }
  TITANS_ASSIGN_OR_RETURN(std::string blob, files_->ReadState(id));
  *bytes += static_cast<int64_t>(blob.size());
  TITANS_ASSIGN_OR_RETURN(SlotId slot, runner_->Import(blob));
  s->slot = slot;
  LoadHistory(s);
  if (shared_ && options_.durability == Durability::kSync) {
    TITANS_ASSIGN_OR_RETURN(std::vector<WalRecord> log, files_->ReadLog(id));
    int64_t replayed = 0;
    for (const WalRecord& r : log) {
      absl::StatusOr<bool> applied = ReplayRecord(s, r);
      if (!applied.ok()) {  // keeps the last consistent state, reported like Recover()
        server::Log(server::LogLevel::kError, "wal_replay_failed",
                    {{"session", id}, {"error", applied.status().ToString()}});
        *complete = false;
        MutexLock lock(table_.mu());
        ++unrecoverable_sessions_;
        break;
      }
      replayed += *applied;
    }
    if (replayed > 0) {
      PublishReplayed(s, replayed);
      TITANS_RETURN_IF_ERROR(Persist(s));  // the checkpoint clears the log
    }
  }
  return absl::OkStatus();
}

void Engine::Impl::PublishReplayed(Session* s, int64_t records) {
  const SlotId slot = *s->slot;
  const int64_t position = runner_->position(slot), state_bytes = runner_->state_bytes(slot);
  MutexLock lock(table_.mu());
  s->record.position = position;
  s->state_bytes = state_bytes;
  recovered_records_ += records;
}

absl::StatusOr<bool> Engine::Impl::ReplayRecord(Session* s, const WalRecord& r) {
  const SlotId slot = *s->slot;
  const int64_t position = runner_->position(slot);
  const int64_t end = r.position_before + static_cast<int64_t>(r.tokens.size());
  if (r.epoch < s->record.epoch) return false;  // logged before a rewind the checkpoint holds
  if (end <= position && r.epoch == s->record.epoch) return false;  // in the checkpoint
  if (r.position_before != position || r.epoch != s->record.epoch) {
    return absl::DataLossError(
        absl::StrCat("session ", s->record.id, ": log resumes at ", r.position_before, " (epoch ",
                     r.epoch, "), state is at ", position, " (epoch ", s->record.epoch, ")"));
  }
  // In the pieces the operation consumed them in, so the state is the one it produced.
  size_t at = 0;
  for (int32_t piece : r.pieces) {
    TITANS_RETURN_IF_ERROR(
        Feed(slot, std::vector<int32_t>(r.tokens.begin() + at, r.tokens.begin() + at + piece)));
    at += piece;
  }
  if (r.has_rng) runner_->set_rng_state(slot, r.rng);
  s->history.Record(r.tokens);
  return true;
}

}  // namespace titans::engine
