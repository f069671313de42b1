// Residency: which states stay in RAM. Spilling idle sessions past max_resident_sessions, the
// TTL sweep, and (shared stores) dropping copies another replica has taken over.

#include <algorithm>

#include "server/engine/engine_impl.h"

namespace titans::engine {

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
  return s.ops.empty() || s.ops.front()->status == OpStatus::kWaiting;
}

void Engine::Impl::SpillIfNeeded() {
  if (!files_) return;
  std::vector<Session*> victims;
  {
    MutexLock lock(table_.mu());
    std::vector<Session*> resident;
    table_.ForEach([&resident](Session* s) {
      if (s->slot && s->phase == SessionPhase::kOpen) resident.push_back(s);
    });
    const int64_t excess = static_cast<int64_t>(resident.size()) - options_.max_resident_sessions;
    if (excess <= 0) return;
    std::sort(resident.begin(), resident.end(), [](const Session* a, const Session* b) {
      return a->record.last_used_unix_ms < b->record.last_used_unix_ms;
    });
    for (Session* s : resident) {
      if (static_cast<int64_t>(victims.size()) >= excess) break;
      if (s->ops.empty() && !s->busy) victims.push_back(s);
    }
  }
  for (Session* s : victims) {
    if (!Persist(s).ok()) continue;
    MutexLock lock(table_.mu());
    if (!s->ops.empty()) continue;  // wanted again meanwhile: stays (its checkpoint is current)
    runner_->Free(*s->slot);
    s->slot.reset();
    s->history = RewindHistory(options_.rewind_window_tokens, options_.rewind_interval_tokens);
    s->spilled = true;
  }
}

void Engine::Impl::Sweep(std::vector<std::function<void()>>* callbacks) {
  const int64_t now = env_->NowUnixMs();
  std::vector<Session*> expired;
  table_.ForEach([&](Session* s) {
    if (!s->ops.empty() || s->busy || s->phase != SessionPhase::kOpen) return;
    if (now - s->record.last_used_unix_ms > s->record.idle_ttl_seconds * 1000) {
      expired.push_back(s);
    }
  });
  if (expired.empty()) return;
  if (shared_) {
    // Another replica may be using them: only the local copies go (Redis expires the keys of
    // sessions that nobody uses).
    for (Session* s : expired) Erase(s->record.id);
    return;
  }
  if (files_) {
    // The states go to <state_dir>/expired and the files away without the engine lock (no I/O under
    // the lock). Only this thread steps, sweeps or erases sessions, so they stay; an operation
    // queued on one meanwhile is answered below.
    table_.mu()->Unlock();
    DirectoryStore graveyard(options_.state_dir + "/expired", env_);
    const bool keep = !options_.state_dir.empty() && graveyard.Init().ok();
    for (Session* s : expired) {
      if (keep && EnsureResident(s).ok()) {
        auto blob = runner_->Export(*s->slot);
        if (blob.ok()) (void)graveyard.Write(s->record, *blob);
      }
      files_->Remove(s->record.id);
    }
    table_.mu()->Lock();
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

void Engine::Impl::DropMoved(const std::vector<Session*>& order,
                             const std::vector<Assignment>& plan) {
  std::vector<std::string> ids;
  std::map<std::string, Session*> by_id;
  for (const Assignment& a : plan) {
    Session* s = order[a.session];
    if (!s->slot || s->ops.front()->status != OpStatus::kWaiting) continue;  // not loaded / mid-op
    ids.push_back(s->record.id);
    by_id[s->record.id] = s;
  }
  if (ids.empty()) return;
  std::vector<std::string> moved = files_->Moved(ids);
  if (moved.empty()) return;
  MutexLock lock(table_.mu());
  for (const std::string& id : moved) DropResident(by_id[id]);
}

void Engine::Impl::DropLostSessions() {
  std::vector<std::string> names;
  table_.ForEach([&names](Session* s) {
    if (s->held && !s->busy && s->ops.empty() && s->phase == SessionPhase::kOpen) {
      names.push_back(s->record.id);
    }
  });
  if (names.empty()) return;
  table_.mu()->Unlock();
  const std::vector<std::string> moved = files_->Moved(names);
  table_.mu()->Lock();
  for (const std::string& name : moved) {
    Session* s = table_.Get(name);
    // A session with work queued meanwhile is the next step's (DropMoved, then acquire).
    if (s == nullptr || s->busy || !s->ops.empty() || s->phase != SessionPhase::kOpen) continue;
    DropResident(s);
  }
}

}  // namespace titans::engine
