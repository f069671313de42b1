#include <random>

#include "server/engine/engine_impl.h"

namespace titans::engine {

namespace {

std::string NewSessionId() {
  static thread_local std::random_device device;
  return absl::StrFormat("s-%08x%08x%08x%08x", device(), device(), device(), device());
}

absl::Status ValidateLabels(const std::map<std::string, std::string>& labels) {
  if (labels.size() > 16) return absl::InvalidArgumentError("at most 16 labels");
  for (const auto& [k, v] : labels) {
    if (k.empty() || k.size() > 64 || v.size() > 64) {
      return absl::InvalidArgumentError("label keys must be 1..64 bytes and values at most 64");
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status Engine::Impl::CheckOpen() const {
  if (draining_) return absl::UnavailableError("server is shutting down");
  return absl::OkStatus();
}

SessionInfo Engine::Impl::InfoOf(const Session& s) const {
  SessionInfo info;
  info.id = ClientId(s.record);
  info.model = info_.name;
  info.position = s.record.position;
  info.state_bytes = s.state_bytes;
  info.created_unix_ms = s.record.created_unix_ms;
  info.last_used_unix_ms = s.record.last_used_unix_ms;
  info.idle_ttl_seconds = s.record.idle_ttl_seconds;
  info.labels = s.record.labels;
  info.spilled = s.spilled;
  info.queued_operations = static_cast<int32_t>(s.ops.size());
  info.rewind_floor = s.rewind_floor;
  return info;
}

absl::StatusOr<int64_t> Engine::Impl::ResolveTtl(int64_t ttl) const {
  if (ttl < 0 || ttl > options_.max_idle_ttl_seconds) {
    return absl::InvalidArgumentError(
        absl::StrCat("idle_ttl_seconds must be at most ", options_.max_idle_ttl_seconds));
  }
  return ttl == 0 ? options_.default_idle_ttl_seconds : ttl;
}

absl::StatusOr<SessionInfo> Engine::Impl::AddSession(const CreateParams& p, SlotId slot,
                                                     const RewindHistory* history,
                                                     const std::string& history_owner) {
  ScopedSlot taken(runner_.get(), slot);  // freed on every error below
  TITANS_RETURN_IF_ERROR(CheckOpen());
  TITANS_RETURN_IF_ERROR(ValidatePrincipal(p.principal));
  std::string client_id = p.id;
  if (client_id.empty()) {
    do client_id = NewSessionId();
    while (table_.FindAnyPhase(p.principal, client_id) != nullptr);
  } else {
    TITANS_RETURN_IF_ERROR(ValidateName(client_id, "session_id"));
    // Only this principal's sessions count: another's with the same id is neither revealed nor
    // in the way (the storage names differ).
    if (table_.FindAnyPhase(p.principal, client_id) != nullptr) {
      return absl::AlreadyExistsError(
          absl::StrCat("session '", ShowValue(client_id), "' already exists"));
    }
  }
  const std::string id = StorageName(p.principal, client_id);
  TITANS_RETURN_IF_ERROR(ValidateLabels(p.labels));
  TITANS_ASSIGN_OR_RETURN(int64_t ttl, ResolveTtl(p.idle_ttl_seconds));
  // Only sessions this replica holds count (with a shared store it also knows other replicas').
  int64_t held = 0;
  table_.ForEach([&held](Session* other) { held += other->held ? 1 : 0; });
  if (held >= options_.max_sessions) {
    return absl::ResourceExhaustedError(
        absl::StrCat("session limit reached (", options_.max_sessions, ")"));
  }
  if (p.sampling) {
    TITANS_RETURN_IF_ERROR(ValidateSamplingParams(*p.sampling, runner_->config().vocab_size));
  }
  auto s = NewSession();
  s->record.id = id;
  s->record.principal = p.principal;
  s->record.labels = p.labels;
  s->record.idle_ttl_seconds = ttl;
  s->record.created_unix_ms = s->record.last_used_unix_ms = env_->NowUnixMs();
  s->record.position = runner_->position(slot);
  s->sampling = p.sampling;
  s->state_bytes = runner_->state_bytes(slot);
  std::vector<int64_t> stored_points;  // a fork's points kept in the store, to copy
  if (history) {
    s->history = *history;
    for (const RewindPoint& point : s->history.points()) {
      if (!point.state) stored_points.push_back(point.position);
    }
  } else {
    s->history.Reset(RewindPoint{s->record.position, runner_->Snapshot(slot)});
  }
  s->rewind_floor = s->history.first_position();
  s->slot = slot;
  Session* session = s.get();
  SessionInfo info = InfoOf(*s);
  const bool write =
      files_ && (!stored_points.empty() || options_.durability == Durability::kSync || shared_);
  if (write) session->phase = SessionPhase::kCreating;  // holds the id, found by no request
  table_.Insert(std::move(s));
  if (write) {
    // The files are written without table_.mu()-> Nothing else touches a creating session: requests
    // do not find it, and the engine thread's sweeps, spills and checkpoints pass it by.
    SessionRecord record = session->record;
    table_.mu()->Unlock();
    absl::Status st = CreateFiles(session, &record, stored_points, history_owner);
    table_.mu()->Lock();
    if (!st.ok()) {
      session->slot.reset();  // the scope frees it
      Erase(id);
      return st;
    }
    if (options_.durability == Durability::kSync || shared_) CommitCheckpoint(session, record, st);
    session->phase = SessionPhase::kOpen;
  }
  taken.Release();
  observer().OnSessionOpened();
  return info;
}

absl::Status Engine::Impl::CreateFiles(Session* s, SessionRecord* record,
                                       const std::vector<int64_t>& stored_points,
                                       const std::string& history_owner) {
  for (int64_t position : stored_points) {  // the fork gets its own copies of the stored points
    (void)files_->CopyRewindPoint(history_owner, record->id, position);
  }
  if (options_.durability != Durability::kSync && !shared_) return absl::OkStatus();
  // The session must exist after a crash before any of its operations is acknowledged; in a
  // shared store, also so that other replicas can find it (and the id stays unique).
  return WriteCheckpoint(s, record, /*create=*/true);
}

absl::StatusOr<SessionInfo> Engine::Impl::CreateSession(const CreateParams& p) {
  // The slot is taken before the engine lock (the runner's own lock may wait for a step).
  TITANS_ASSIGN_OR_RETURN(SlotId slot, runner_->NewSlot());
  MutexLock lock(table_.mu());
  return AddSession(p, slot);
}

absl::StatusOr<SessionInfo> Engine::Impl::GetSession(const std::string& principal,
                                                     const std::string& id) {
  Discover(principal, id);
  if (shared_) {
    std::string name;
    {
      MutexLock lock(table_.mu());
      auto s = table_.Find(principal, id);
      if (s.ok()) name = (*s)->record.id;
    }
    if (!name.empty()) Refresh(name);
  }
  MutexLock lock(table_.mu());
  TITANS_ASSIGN_OR_RETURN(Session * s, table_.Find(principal, id));
  return InfoOf(*s);
}

void Engine::Impl::Refresh(const std::string& id) {
  bool resident;
  int64_t seen_use;
  {
    MutexLock lock(table_.mu());
    const Session* s = table_.Get(id);
    if (s == nullptr || s->busy || !s->ops.empty() || s->phase != SessionPhase::kOpen) return;
    resident = !s->spilled;
    seen_use = s->record.last_used_unix_ms;
  }
  if (resident && files_->Moved({id}).empty()) return;  // held here: the local view is current
  auto record = files_->ReadRecord(id);
  MutexLock lock(table_.mu());
  Session* s = table_.Get(id);
  if (s == nullptr || s->busy || !s->ops.empty() || s->phase != SessionPhase::kOpen) return;
  // Loaded (or reloaded) by the engine thread meanwhile: its record is newer than the one read
  // above (a rewind may even have advanced the epoch), so leave it.
  if (s->spilled == resident || s->record.last_used_unix_ms != seen_use) return;
  if (!record.ok()) {
    if (record.status().code() == absl::StatusCode::kNotFound) Erase(id);
    return;
  }
  if (resident) DropResident(s);
  const int64_t last_used = s->record.last_used_unix_ms;
  s->record = std::move(*record);
  s->record.last_used_unix_ms = std::max(last_used, s->record.last_used_unix_ms);
  s->rewind_floor = std::min(s->rewind_floor, s->record.position);
}

std::vector<SessionInfo> Engine::Impl::List(const std::string& principal,
                                            const std::map<std::string, std::string>& filter,
                                            const std::string& after, int limit, bool* more) {
  if (shared_) {  // sessions created by other replicas too
    std::vector<SessionRecord> stored = files_->List(nullptr);
    MutexLock lock(table_.mu());
    for (SessionRecord& r : stored) {
      if (!table_.Contains(r.id)) Register(std::move(r));
    }
  }
  MutexLock lock(table_.mu());
  std::vector<const Session*> matching;
  table_.ForEach([&](const Session* s) {
    if (s->record.principal != principal || ClientId(s->record) <= after ||
        s->phase != SessionPhase::kOpen) {
      return;
    }
    bool ok = true;
    for (const auto& [k, v] : filter) {
      auto it = s->record.labels.find(k);
      ok = ok && it != s->record.labels.end() && it->second == v;
    }
    if (ok) matching.push_back(s);
  });
  std::sort(matching.begin(), matching.end(), [](const Session* a, const Session* b) {
    return ClientId(a->record) < ClientId(b->record);
  });
  *more = static_cast<int>(matching.size()) > limit;
  std::vector<SessionInfo> out;
  for (int i = 0; i < std::min<int>(limit, matching.size()); ++i)
    out.push_back(InfoOf(*matching[i]));
  return out;
}

absl::StatusOr<std::vector<int32_t>> Engine::Impl::Tokenize(const Input& input, bool allow_empty) {
  std::vector<int32_t> tokens;
  if (input.has_tokens) {
    for (int32_t id : input.tokens) {
      if (id < 0 || id >= runner_->config().vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            "token id ", id, " is outside the vocabulary [0, ", runner_->config().vocab_size, ")"));
      }
    }
    tokens = input.tokens;
  } else {
    if (!IsValidUtf8(input.text)) return absl::InvalidArgumentError("text is not valid UTF-8");
    TITANS_ASSIGN_OR_RETURN(tokens, runner_->tokenizer().Encode(input.text, false));
  }
  if (tokens.empty() && !allow_empty) return absl::InvalidArgumentError("input is empty");
  if (static_cast<int64_t>(tokens.size()) > options_.max_tokens_per_request) {
    return absl::InvalidArgumentError(absl::StrCat("input has ", tokens.size(), " tokens; at most ",
                                                   options_.max_tokens_per_request,
                                                   " per request (split it)"));
  }
  return tokens;
}

absl::Status Engine::Impl::Enqueue(const std::string& principal, const std::string& id,
                                   std::unique_ptr<Op>& op) {
  Discover(principal, id);
  MutexLock lock(table_.mu());
  TITANS_RETURN_IF_ERROR(CheckOpen());
  TITANS_ASSIGN_OR_RETURN(Session * s, table_.Find(principal, id));
  if (static_cast<int32_t>(s->ops.size()) >= options_.max_ops_per_session) {
    return absl::ResourceExhaustedError(absl::StrCat("session '", id, "' has ", s->ops.size(),
                                                     " operations queued (limit reached)"));
  }
  if (table_.QueuedTokens() + op->remaining() > options_.max_queued_tokens) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "server queue is full (", options_.max_queued_tokens, " tokens); retry later"));
  }
  table_.PushOp(s, std::move(op));
  cv_.SignalAll();
  return absl::OkStatus();
}

void Engine::Impl::Append(const std::string& principal, const std::string& id, Input input,
                          CancelFlag cancel,
                          std::function<void(absl::StatusOr<AppendResult>)> done) {
  auto tokens = Tokenize(input, false);
  if (!tokens.ok()) return done(tokens.status());
  auto op = std::make_unique<Op>(AppendOp{done}, std::move(*tokens));
  op->cancel = std::move(cancel);
  absl::Status st = Enqueue(principal, id, op);
  if (!st.ok()) done(st);
}

void Engine::Impl::Generate(const std::string& principal, const std::string& id,
                            GenerateParams params, CancelFlag cancel,
                            std::function<void(const GenerateEvent&)> on_event, Done done) {
  auto prompt = Tokenize(params.prompt, true);
  if (!prompt.ok()) return done(prompt.status());
  if (params.max_tokens == 0) params.max_tokens = 256;
  if (params.max_tokens < 0 || params.max_tokens > options_.max_generate_tokens) {
    return done(absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be in [1, ", options_.max_generate_tokens, "]")));
  }
  GenerateOp generate;
  generate.on_event = std::move(on_event);
  generate.done = done;
  Discover(principal, id);
  {
    MutexLock lock(table_.mu());
    auto s = table_.Find(principal, id);
    if (!s.ok()) return done(s.status());
    generate.sampling = Resolve(**s, params);
  }
  generate.params = std::move(params);
  absl::Status valid = ValidateSamplingParams(generate.sampling, runner_->config().vocab_size);
  if (!valid.ok()) return done(valid);
  auto op = std::make_unique<Op>(std::move(generate), std::move(*prompt));
  op->cancel = std::move(cancel);
  absl::Status st = Enqueue(principal, id, op);
  if (!st.ok()) done(st);
}

void Engine::Impl::Score(const std::string& principal, const std::string& id,
                         std::vector<int32_t> tokens, bool commit,
                         std::function<void(absl::StatusOr<ScoreResult>)> done) {
  Input in;
  in.tokens = std::move(tokens);
  in.has_tokens = true;
  auto checked = Tokenize(in, false);
  if (!checked.ok()) return done(checked.status());
  auto op = std::make_unique<Op>(ScoreOp{commit, done}, std::move(*checked));
  if (id.empty()) {  // stateless: a temporary session of its own
    auto tmp = CreateSession(CreateParams{principal, "", 0, {}, std::nullopt});
    if (!tmp.ok()) return done(tmp.status());
    const std::string tmp_id = tmp->id;
    op->kind = ScoreOp{false, [this, principal, tmp_id, done](absl::StatusOr<ScoreResult> r) {
                         if (r.ok()) r->position = 0;
                         done(std::move(r));
                         Close(principal, tmp_id, [](absl::Status) {});
                       }};
    absl::Status st = Enqueue(principal, tmp_id, op);
    if (!st.ok()) op->TakeFailure(st)();
    return;
  }
  absl::Status st = Enqueue(principal, id, op);
  if (!st.ok()) done(st);
}

void Engine::Impl::Close(const std::string& principal, const std::string& id, Done done) {
  auto op = std::make_unique<Op>(CloseOp{done});
  absl::Status st = Enqueue(principal, id, op);
  if (!st.ok()) done(st);
}

void Engine::Impl::Fork(const std::string& principal, const std::string& id,
                        const std::string& new_id, int64_t position,
                        std::function<void(absl::StatusOr<SessionInfo>)> done) {
  if (position < -1) {
    return done(absl::InvalidArgumentError("position must not be negative"));
  }
  auto op = std::make_unique<Op>(ForkOp{new_id, position, done});
  absl::Status st = Enqueue(principal, id, op);
  if (!st.ok()) done(st);
}

void Engine::Impl::Rewind(const std::string& principal, const std::string& id, int64_t position,
                          std::function<void(absl::StatusOr<SessionInfo>)> done) {
  if (position < 0) return done(absl::InvalidArgumentError("position must not be negative"));
  auto op = std::make_unique<Op>(RewindOp{position, done});
  absl::Status st = Enqueue(principal, id, op);
  if (!st.ok()) done(st);
}

void Engine::Impl::Export(const std::string& principal, const std::string& id,
                          std::function<void(absl::StatusOr<std::string>)> done) {
  auto op = std::make_unique<Op>(ExportOp{done});
  absl::Status st = Enqueue(principal, id, op);
  if (!st.ok()) done(st);
}

absl::StatusOr<SessionInfo> Engine::Impl::Import(const CreateParams& p,
                                                 const std::string& snapshot) {
  TITANS_ASSIGN_OR_RETURN(SlotId slot, runner_->Import(snapshot));
  MutexLock lock(table_.mu());
  return AddSession(p, slot);
}

}  // namespace titans::engine
