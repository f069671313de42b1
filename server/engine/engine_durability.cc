#include <algorithm>
#include <limits>

#include "absl/strings/str_format.h"
#include "server/engine/engine_impl.h"
#include "server/log.h"

namespace titans::engine {

absl::Status Engine::Impl::Recover() {
  const auto start = Clock::now();
  const std::string dir = options_.state_dir + "/wal";
  std::vector<std::string> warnings;
  std::vector<WalRecord> records = Wal::ReadAll(dir, &warnings);
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
      MutexLock lock(&mu_);
      auto it = sessions_.find(r.session_id);
      if (it != sessions_.end()) s = it->second.get();
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
  TITANS_ASSIGN_OR_RETURN(wal_, Wal::Open(dir));
  TITANS_RETURN_IF_ERROR(wal_->DropOldSegments());
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  {
    MutexLock lock(&mu_);
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
  sessions_.emplace(s->record.id, std::move(s));
}

void Engine::Impl::Discover(const std::string& principal, const std::string& id) {
  if (!shared_) return;
  {
    MutexLock lock(&mu_);
    if (Find(principal, id).ok()) return;
  }
  if (!ValidateName(id, "id").ok() || !ValidatePrincipal(principal).ok()) return;
  for (const std::string& name : StorageNames(principal, id)) {
    auto record = files_->ReadRecord(name);
    if (record.ok() && record->id == name) {
      MutexLock lock(&mu_);
      if (!sessions_.count(name)) Register(std::move(*record));
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
    MutexLock lock(&mu_);
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
        MutexLock lock(&mu_);
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
  MutexLock lock(&mu_);
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

void Engine::Impl::LoadHistory(Session* s) {
  const int64_t position = PositionOf(*s);
  const std::string& id = s->record.id;
  bool restored = false;
  if (s->history.enabled()) {
    auto tokens = files_->ReadRewindTokens(id);
    std::vector<int64_t> stored = files_->ListRewindPoints(id);
    if (tokens.ok()) {
      std::vector<RewindPoint> points;
      for (int64_t p : stored) points.push_back(RewindPoint{p, nullptr});
      // Tokens of this epoch may reach past the checkpoint (Persist writes them first): the
      // part up to the checkpoint is its history. Tokens of unknown epoch must meet it exactly.
      const int64_t end = tokens->first_position + static_cast<int64_t>(tokens->tokens.size());
      const bool same_timeline = tokens->epoch == s->record.epoch
                                     ? tokens->first_position <= position && position <= end
                                     : tokens->epoch < 0 && end == position;
      // The oldest point may be gone (points the window dropped are removed as they go, before
      // the next tokens are written): the history then starts at the oldest point still there.
      auto first = std::lower_bound(stored.begin(), stored.end(), tokens->first_position);
      if (same_timeline && first != stored.end() && *first <= position) {
        std::vector<int32_t>& kept = tokens->tokens;
        kept.resize(static_cast<size_t>(position - tokens->first_position));
        kept.erase(kept.begin(), kept.begin() + (*first - tokens->first_position));
        restored = s->history.Restore(*first, std::move(kept), std::move(points));
      }
    }
    // Points past the restored end belong to a timeline that was not persisted.
    for (int64_t p : stored) {
      if (!restored || p > s->history.end() || p < s->history.first_position()) {
        files_->RemoveRewindPoint(id, p);
      }
    }
    if (!restored && tokens.status().code() != absl::StatusCode::kNotFound) {
      server::Log(server::LogLevel::kWarning, "rewind_history_not_restored",
                  {{"session", id}, {"restarts_at", std::to_string(position)}});
    }
  }
  if (!restored) ResetHistory(s);
}

void Engine::Impl::ResetHistory(Session* s) {
  s->history.Reset(RewindPoint{PositionOf(*s), runner_->Snapshot(*s->slot)});
}

void Engine::Impl::MaybeTakePoint(Session* s) {
  if (!s->history.enabled()) return;
  if (s->history.end() != PositionOf(*s)) ResetHistory(s);  // never out of step
  if (s->history.PointDue()) {
    std::vector<int64_t> dropped =
        s->history.AddPoint(RewindPoint{PositionOf(*s), runner_->Snapshot(*s->slot)});
    if (files_) {
      for (int64_t p : dropped) files_->RemoveRewindPoint(s->record.id, p);
    }
  }
  StorePoints(s);
}

// The newest rewind point of the session, counting the append's own (-1 if none).
int64_t Engine::Impl::LastPointPosition(const Session& s, const Op& op) {
  if (!op.inner_points.empty()) return op.inner_points.back().position;
  return s.history.points().empty() ? -1 : s.history.points().back().position;
}

int64_t Engine::Impl::TokensToNextPoint(const Session& s, const Op& op) const {
  if (!s.history.enabled() || !s.slot) return std::numeric_limits<int64_t>::max();
  const int64_t last = LastPointPosition(s, op);
  if (last < 0) return std::numeric_limits<int64_t>::max();  // MaybeTakePoint starts the history
  return std::max<int64_t>(1, last + options_.rewind_interval_tokens - PositionOf(s));
}

void Engine::Impl::MaybeTakeInnerPoint(const Session& s, Op* op) {
  if (!s.history.enabled() || !s.slot || op->remaining() == 0) return;
  const int64_t position = PositionOf(s);
  const int64_t last = LastPointPosition(s, *op);
  if (last < 0 || position - last < options_.rewind_interval_tokens) return;
  op->inner_points.push_back(RewindPoint{position, runner_->Snapshot(*s.slot)});
  // As RewindHistory::AddPoint: keep the newest point at or before position - window.
  const int64_t floor = position - options_.rewind_window_tokens;
  size_t drop = 0;
  while (drop + 1 < op->inner_points.size() && op->inner_points[drop + 1].position <= floor) ++drop;
  op->inner_points.erase(op->inner_points.begin(), op->inner_points.begin() + drop);
}

void Engine::Impl::RecordWithInnerPoints(Session* s, Op* op) {
  if (op->inner_points.empty() || s->history.end() != op->position_before) {
    s->history.Record(op->log_tokens);
    op->inner_points.clear();
    return;
  }
  size_t at = 0;
  for (RewindPoint& point : op->inner_points) {
    const size_t upto = static_cast<size_t>(point.position - op->position_before);
    s->history.Record(
        std::vector<int32_t>(op->log_tokens.begin() + at, op->log_tokens.begin() + upto));
    at = upto;
    std::vector<int64_t> dropped = s->history.AddPoint(std::move(point));
    if (files_) {
      for (int64_t p : dropped) files_->RemoveRewindPoint(s->record.id, p);
    }
  }
  s->history.Record(std::vector<int32_t>(op->log_tokens.begin() + at, op->log_tokens.end()));
  op->inner_points.clear();
}

void Engine::Impl::StorePoints(Session* s) {
  if (!files_) return;
  for (const RewindPoint& point : s->history.points()) {
    if (!point.state) continue;
    auto blob = runner_->ExportSnapshot(*point.state);
    if (blob.ok() && files_->WriteRewindPoint(s->record.id, point.position, *blob).ok()) {
      s->history.MarkStored(point.position);
    }
  }
}

absl::StatusOr<std::shared_ptr<const SlotSnapshot>> Engine::Impl::StateAt(Session* s,
                                                                          int64_t position) {
  const SlotId live = *s->slot;
  const int64_t live_position = runner_->position(live);
  if (position < 0 || position == live_position) return runner_->Snapshot(live);
  if (position > live_position) {
    return absl::OutOfRangeError(
        absl::StrCat("position ", position, " is beyond the session's position ", live_position));
  }
  if (!s->history.enabled()) {
    return absl::FailedPreconditionError(
        "rewinding is disabled on this server (--rewind_window_tokens=0)");
  }
  if (s->history.end() != live_position) ResetHistory(s);
  TITANS_ASSIGN_OR_RETURN(RewindHistory::Plan plan, s->history.PlanRewind(position));
  // The replay runs in a scratch slot.
  absl::StatusOr<SlotId> scratch;
  if (plan.start.state) {
    scratch = runner_->FromSnapshot(*plan.start.state);
  } else {
    auto blob = files_->ReadRewindPoint(s->record.id, plan.start.position);
    scratch = blob.ok() ? runner_->Import(*blob) : absl::StatusOr<SlotId>(blob.status());
    if (scratch.ok() && runner_->position(*scratch) != plan.start.position) {
      runner_->Free(*scratch);
      scratch = absl::DataLossError("wrong position");
    }
    if (!scratch.ok() && scratch.status().code() != absl::StatusCode::kResourceExhausted) {
      return absl::DataLossError(absl::StrCat("the rewind point at position ", plan.start.position,
                                              " could not be read: ", scratch.status().message()));
    }
  }
  if (!scratch.ok()) return scratch.status();
  ScopedSlot replay(runner_.get(), *scratch);  // freed on every path out
  constexpr size_t kReplayPiece = 4096;
  for (size_t at = 0; at < plan.replay.size(); at += kReplayPiece) {
    const size_t n = std::min(kReplayPiece, plan.replay.size() - at);
    TITANS_RETURN_IF_ERROR(Feed(
        *scratch, std::vector<int32_t>(plan.replay.begin() + at, plan.replay.begin() + at + n)));
  }
  return runner_->Snapshot(*scratch);
}

void Engine::Impl::ExecuteRewind(Session* s, Op& op,
                                 std::vector<std::function<void()>>* callbacks) {
  auto done = std::move(op.fork_done);
  auto target = StateAt(s, op.target_position);
  if (!target.ok()) {
    callbacks->push_back([done, st = target.status()] { done(st); });
    MarkDone(op);
    return;
  }
  const SlotId slot = *s->slot;
  std::shared_ptr<const SlotSnapshot> before = runner_->Snapshot(slot);
  RewindHistory history_before = s->history;
  const int64_t position_before = s->history.end();
  std::vector<int64_t> dropped;
  for (const RewindPoint& p : s->history.points()) {
    if (p.position > op.target_position) dropped.push_back(p.position);
  }
  (void)runner_->Restore(slot, **target);
  s->history.TruncateTo(runner_->position(slot));
  MutexLock lock(&mu_);
  ++s->record.epoch;
  absl::Status st = files_ ? Persist(s) : absl::OkStatus();
  if (st.code() == absl::StatusCode::kAborted) st = MovedError(ClientId(s->record));
  if (!st.ok() && (options_.durability == Durability::kSync || s->moved)) {
    (void)runner_->Restore(slot, *before);
    s->history = std::move(history_before);
    --s->record.epoch;
    s->record.position = position_before;
    s->state_bytes = runner_->state_bytes(slot);
    callbacks->push_back([done, st] {
      done(absl::Status(st.code(), absl::StrCat("the rewind could not be made durable (the "
                                                "session is unchanged): ",
                                                st.message())));
    });
    MarkDone(op);
    return;
  }
  if (files_) {
    for (int64_t p : dropped) files_->RemoveRewindPoint(s->record.id, p);
  }
  s->record.position = runner_->position(slot);
  s->state_bytes = runner_->state_bytes(slot);
  s->rewind_floor = s->history.first_position();
  s->ops.front()->finished = true;
  SessionInfo info = InfoOf(*s);
  info.queued_operations -= 1;  // this operation is done
  observer().OnTokens("rewound", position_before - s->record.position);
  callbacks->push_back([done, info] { done(info); });
}

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
    MutexLock lock(&mu_);
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

void Engine::Impl::DropResident(Session* s) {
  if (s->slot) runner_->Free(*s->slot);
  s->slot.reset();
  s->history = RewindHistory(options_.rewind_window_tokens, options_.rewind_interval_tokens);
  s->spilled = true;
  s->moved = false;
  s->held = !shared_;
}

absl::Status Engine::Impl::MovedError(const std::string& id) {
  return absl::UnavailableError(
      absl::StrCat("session '", id,
                   "' was taken over by another replica; the operation was not applied "
                   "(retry)"));
}

bool Engine::Impl::Quiescent(const Session& s) {
  return s.ops.empty() || s.ops.front()->position_before < 0;
}

void Engine::Impl::CheckpointIfDue() {
  if (options_.durability == Durability::kNone) return;
  const auto now = Clock::now();
  for (auto& [id, s] : sessions_) {
    // Only between operations: a started operation may have partly changed the state (an
    // unfinished append must never reach a checkpoint).
    if (!s->slot || s->busy || !Quiescent(*s)) continue;
    const int64_t lag = s->record.position - s->persisted_position;
    if (lag <= 0) continue;
    const bool due = lag >= options_.checkpoint_interval_tokens ||
                     std::chrono::duration<double>(now - s->last_checkpoint).count() >=
                         options_.checkpoint_interval_seconds;
    if (due) (void)Persist(s.get());
  }
  if (wal_ && wal_->bytes_since_drop() > options_.wal_max_bytes) {
    bool all = true;
    for (auto& [id, s] : sessions_) {
      if (s->slot && s->record.position > s->persisted_position) {
        all = Quiescent(*s) && Persist(s.get()).ok() && all;
      }
    }
    if (all) (void)wal_->DropOldSegments();
  }
}

void Engine::Impl::SpillIfNeeded(std::vector<std::function<void()>>* callbacks) {
  (void)callbacks;
  if (!files_) return;
  std::vector<Session*> resident;
  for (auto& [id, s] : sessions_) {
    if (s->slot) resident.push_back(s.get());
  }
  const int64_t excess = static_cast<int64_t>(resident.size()) - options_.max_resident_sessions;
  if (excess <= 0) return;
  std::sort(resident.begin(), resident.end(), [](const Session* a, const Session* b) {
    return a->record.last_used_unix_ms < b->record.last_used_unix_ms;
  });
  int64_t spilled = 0;
  for (Session* s : resident) {
    if (spilled >= excess) break;
    if (!s->ops.empty() || s->busy) continue;
    if (Persist(s).ok()) {
      runner_->Free(*s->slot);
      s->slot.reset();
      s->history = RewindHistory(options_.rewind_window_tokens, options_.rewind_interval_tokens);
      s->spilled = true;
      ++spilled;
    }
  }
}

absl::Status Engine::Impl::Persist(Session* s, bool create) {
  const auto start = Clock::now();
  TITANS_ASSIGN_OR_RETURN(std::string blob, runner_->Export(*s->slot));
  s->record.position = runner_->position(*s->slot);
  s->record.state_bytes = s->state_bytes;
  // The rewind points and tokens go first, the checkpoint last: whatever stops us between the
  // writes (a crash, another replica taking the session over), the stored tokens reach at least
  // as far as the stored checkpoint, and LoadHistory cuts them back to it. (The other order lost
  // the history of a session taken over between the writes.) A new session has no fence to
  // write under until Create, and a history of one point to lose.
  const bool pair_tokens = s->history.enabled() && s->history.end() == s->record.position;
  auto write_tokens = [&] {
    StorePoints(s);
    return files_->WriteRewindTokens(
        s->record.id,
        RewindTokens{s->history.first_position(), s->history.tokens(), s->record.epoch});
  };
  absl::Status st = pair_tokens && !create ? write_tokens() : absl::OkStatus();
  if (st.ok()) st = create ? files_->Create(s->record, blob) : files_->Write(s->record, blob);
  if (st.ok() && pair_tokens && create) st = write_tokens();
  if (st.code() == absl::StatusCode::kAborted) s->moved = true;
  if (st.ok()) {
    s->persisted_position = s->record.position;
    s->last_checkpoint = Clock::now();
  }
  observer().OnCheckpoint(static_cast<int64_t>(blob.size()),
                          std::chrono::duration<double>(Clock::now() - start).count(), st.ok());
  return st;
}

void Engine::Impl::Sweep(std::vector<std::function<void()>>* callbacks) {
  const int64_t now = NowMs();
  std::vector<Session*> expired;
  for (auto& [id, s] : sessions_) {
    if (!s->ops.empty() || s->busy) continue;
    if (now - s->record.last_used_unix_ms > s->record.idle_ttl_seconds * 1000) {
      expired.push_back(s.get());
    }
  }
  if (expired.empty()) return;
  if (shared_) {
    // Another replica may be using them: only the local copies go (Redis expires the keys of
    // sessions that nobody uses).
    for (Session* s : expired) Erase(s->record.id);
    return;
  }
  if (files_) {
    // The states go to <state_dir>/expired and the files away without mu_ (no I/O under the
    // lock). Only this thread steps, sweeps or erases sessions, so they stay; an operation
    // queued on one meanwhile is answered below.
    mu_.Unlock();
    DirectoryStore graveyard(options_.state_dir + "/expired");
    const bool keep = !options_.state_dir.empty() && graveyard.Init().ok();
    for (Session* s : expired) {
      if (keep && EnsureResident(s).ok()) {
        auto blob = runner_->Export(*s->slot);
        if (blob.ok()) (void)graveyard.Write(s->record, *blob);
      }
      files_->Remove(s->record.id);
    }
    mu_.Lock();
  }
  for (Session* s : expired) {
    const std::string id = s->record.id;
    for (auto& op : s->ops) {
      Fail(*op, absl::NotFoundError(absl::StrCat("session '", ShowValue(id), "' expired")),
           callbacks);
    }
    Erase(id);
    ++expired_total_;
    observer().OnSessionClosed("expired");
  }
}

}  // namespace titans::engine
