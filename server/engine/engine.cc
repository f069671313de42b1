#include "server/engine/engine.h"

#include <ATen/ATen.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <random>
#include <set>
#include <thread>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernels/memory_kernel.h"
#include "model/generator.h"
#include "model/params.h"
#include "model/session_state.h"
#include "model/status_macros.h"
#include "model/titans_model.h"
#include "model/utf8.h"
#include "server/engine/directory_store.h"
#include "server/engine/rewind_history.h"
#include "server/engine/scheduler.h"
#include "server/engine/session_store.h"
#include "server/engine/wal.h"

namespace titans::engine {
namespace {

int64_t NowMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

using Clock = std::chrono::steady_clock;

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

enum class OpKind { kAppend, kGenerate, kScore, kClose, kFork, kExport, kRewind };

struct Op {
  OpKind kind;
  std::vector<int32_t> tokens;  // append tokens, generate prompt, score tokens
  size_t consumed = 0;
  CancelFlag cancel;
  Clock::time_point arrival = Clock::now();
  // Append: the state before the operation, restored on failure or cancellation (atomicity).
  std::unique_ptr<SessionState> backup;
  std::function<void(absl::StatusOr<AppendResult>)> append_done;
  // Generate.
  GenerateParams generate;
  SamplingParams sampling;
  std::optional<TokenGenerator> generator;
  std::function<void(const GenerateEvent&)> on_event;
  Engine::Done done;
  std::optional<Clock::time_point> first_token;
  // Score.
  bool commit = false;
  std::function<void(absl::StatusOr<ScoreResult>)> score_done;
  // Fork / export / rewind.
  std::string new_id;
  int64_t target_position = -1;  // fork / rewind: the position to go to (-1: the current one)
  std::function<void(absl::StatusOr<SessionInfo>)> fork_done;  // also rewind
  std::function<void(absl::StatusOr<std::string>)> export_done;

  bool finished = false;  // set by the engine thread; Update() then pops it
  bool started = false;   // has been scheduled at least once (queue-time metric)
  Clock::time_point last_token;
  // What the operation consumed, in the pieces it was consumed in (the write-ahead log record).
  int64_t position_before = -1;
  std::vector<int32_t> log_tokens, log_pieces;

  // Engine thread only (it changes `consumed` without holding mu_).
  int64_t remaining() const { return static_cast<int64_t>(tokens.size() - consumed); }
  // remaining() as of the end of the last step, for readers holding mu_ on other threads
  // (admission control). Written by the engine thread under mu_.
  int64_t queued_tokens = 0;
};

struct Session {
  Session(int64_t rewind_window, int64_t rewind_interval)
      : history(rewind_window, rewind_interval) {}
  SessionRecord record;
  std::optional<SamplingParams> sampling;
  std::unique_ptr<SessionState> state;  // null while spilled
  std::deque<std::unique_ptr<Op>> ops;
  bool busy = false;               // the engine thread is executing its head operation
  bool spilled = false;            // mirror of state == nullptr, kept under mu_ for readers
  int64_t persisted_position = 0;  // position of the last state written to disk
  std::chrono::steady_clock::time_point last_checkpoint = std::chrono::steady_clock::now();
  int64_t state_bytes = 0;
  // Engine thread only (loaded with the state, dropped when spilled).
  RewindHistory history;
  int64_t rewind_floor = 0;  // history.first_position(), kept under mu_ for readers
  // Shared store: another replica acquired the session; the resident copy is dropped between
  // operations (and the session acquired again if a request comes here).
  bool moved = false;
  // The session no longer exists in the (shared) store: closed or expired elsewhere.
  bool gone = false;
};

}  // namespace

class Engine::Impl {
 public:
  Impl(EngineOptions options, std::unique_ptr<TitansModel> model)
      : options_(std::move(options)), model_(std::move(model)) {
    const ModelConfig& c = model_->config();
    info_.name = c.name;
    info_.variant = std::string(VariantName(c.variant));
    info_.parameters = CountParameters(c);
    info_.vocab_size = c.vocab_size;
    info_.tokenizer = model_->tokenizer().type();
    info_.initialization = c.initialization;
    info_.fingerprint = model_->fingerprint();
    info_.description = c.description;
    info_.config_json = ModelConfigToJson(c);
  }

  absl::Status Start() {
    if (options_.rewind_window_tokens < 0 ||
        (options_.rewind_window_tokens > 0 && options_.rewind_interval_tokens < 1)) {
      return absl::InvalidArgumentError(
          "rewind_window_tokens must be >= 0 and rewind_interval_tokens >= 1");
    }
    std::string spec = options_.session_store;
    if (spec.empty() && !options_.state_dir.empty()) spec = options_.state_dir + "/sessions";
    if (!spec.empty()) {
      TITANS_ASSIGN_OR_RETURN(files_, OpenSessionStore(spec));
      shared_ = files_->shared();
      std::vector<std::string> errors;
      for (SessionRecord& r : files_->List(&errors)) Register(std::move(r));
      for (const std::string& e : errors) std::fprintf(stderr, "engine: skipped %s\n", e.c_str());
    }
    if (options_.durability != Durability::kNone && !files_) {
      return absl::InvalidArgumentError(
          "periodic and sync durability need a state directory or a session store");
    }
    if (options_.durability == Durability::kSync && !shared_) {
      if (options_.state_dir.empty()) {
        return absl::InvalidArgumentError("sync durability needs a state directory for its log");
      }
      TITANS_RETURN_IF_ERROR(Recover());  // a shared store's log is replayed per session on load
    }
    thread_ = std::thread([this] { Loop(); });
    return absl::OkStatus();
  }

  // Replays the write-ahead log onto the latest checkpoints, checkpoints the result and starts a
  // fresh log. A session whose records do not continue its checkpoint (a gap) keeps its last
  // consistent state and is counted as unrecoverable.
  absl::Status Recover() {
    const auto start = Clock::now();
    const std::string dir = options_.state_dir + "/wal";
    std::vector<std::string> warnings;
    std::vector<WalRecord> records = Wal::ReadAll(dir, &warnings);
    for (const std::string& w : warnings) std::fprintf(stderr, "engine: log: %s\n", w.c_str());
    std::set<Session*> touched;
    std::set<Session*> broken;
    at::NoGradGuard no_grad;
    for (const WalRecord& r : records) {
      auto it = sessions_.find(r.session_id);
      if (it == sessions_.end()) continue;  // closed after it was logged
      Session* s = it->second.get();
      if (broken.count(s)) continue;
      if (!EnsureResident(s).ok()) {
        broken.insert(s);
        continue;
      }
      absl::StatusOr<bool> applied = ReplayRecord(s, r);
      if (!applied.ok()) {
        std::fprintf(stderr, "engine: %s\n", applied.status().ToString().c_str());
        broken.insert(s);
      } else if (*applied) {
        touched.insert(s);
        ++recovered_records_;
      }
    }
    for (Session* s : touched) {
      absl::Status st = Persist(s);
      if (!st.ok()) return st;
    }
    for (size_t i = 0; i < broken.size(); ++i) observer().OnRestore(0, 0, false);
    unrecoverable_sessions_ = static_cast<int64_t>(broken.size());
    TITANS_ASSIGN_OR_RETURN(wal_, Wal::Open(dir));
    TITANS_RETURN_IF_ERROR(wal_->DropOldSegments());
    recovery_seconds_ = std::chrono::duration<double>(Clock::now() - start).count();
    std::fprintf(stderr, "engine: recovered %lld log records into %zu sessions in %.3f s\n",
                 static_cast<long long>(recovered_records_), touched.size(), recovery_seconds_);
    return absl::OkStatus();
  }

  ~Impl() { Shutdown(0); }

  // Registers a stored session (not resident). Requires mu_ once the engine thread runs.
  void Register(SessionRecord r) {
    auto s = NewSession();
    s->state_bytes = r.state_bytes;
    s->spilled = true;
    s->persisted_position = r.position;
    s->record = std::move(r);
    s->rewind_floor = s->record.position;
    sessions_.emplace(s->record.id, std::move(s));
  }

  // Shared stores: a session this replica has not seen may have been created by another one;
  // register it so that it can be acquired. No-op otherwise.
  void Discover(const std::string& id) {
    if (!shared_) return;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (sessions_.count(id)) return;
    }
    auto record = files_->ReadRecord(id);
    if (!record.ok()) return;
    std::lock_guard<std::mutex> lock(mu_);
    if (!sessions_.count(id)) Register(std::move(*record));
  }

  std::unique_ptr<Session> NewSession() const {
    return std::make_unique<Session>(options_.rewind_window_tokens,
                                     options_.rewind_interval_tokens);
  }

  const ModelInfo& info() const { return info_; }

  EngineObserver& observer() { return options_.observer ? *options_.observer : null_observer_; }

  // ---- Admission (caller threads) -----------------------------------------------------------

  absl::Status CheckOpen() const {
    if (draining_) return absl::UnavailableError("server is shutting down");
    return absl::OkStatus();
  }

  absl::StatusOr<Session*> Find(const std::string& principal, const std::string& id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = sessions_.find(id);
    if (it == sessions_.end() || it->second->record.principal != principal) {
      return absl::NotFoundError(absl::StrCat("session '", id, "' not found"));
    }
    return it->second.get();
  }

  SessionInfo InfoOf(const Session& s) const {
    SessionInfo info;
    info.id = s.record.id;
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

  absl::StatusOr<int64_t> ResolveTtl(int64_t ttl) const {
    if (ttl < 0 || ttl > options_.max_idle_ttl_seconds) {
      return absl::InvalidArgumentError(
          absl::StrCat("idle_ttl_seconds must be at most ", options_.max_idle_ttl_seconds));
    }
    return ttl == 0 ? options_.default_idle_ttl_seconds : ttl;
  }

  // Registers a new session holding `state`. Its rewind history starts at `state`, or is
  // `history` (a fork's: stored points are those of session `history_owner`). Requires mu_.
  absl::StatusOr<SessionInfo> AddSession(const CreateParams& p, std::unique_ptr<SessionState> state,
                                         const RewindHistory* history = nullptr,
                                         const std::string& history_owner = "")
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    TITANS_RETURN_IF_ERROR(CheckOpen());
    std::string id = p.id;
    if (id.empty()) {
      do id = NewSessionId();
      while (sessions_.count(id));
    } else {
      TITANS_RETURN_IF_ERROR(ValidateName(id, "session_id"));
      if (sessions_.count(id)) {
        return absl::AlreadyExistsError(absl::StrCat("session '", id, "' already exists"));
      }
    }
    TITANS_RETURN_IF_ERROR(ValidateLabels(p.labels));
    TITANS_ASSIGN_OR_RETURN(int64_t ttl, ResolveTtl(p.idle_ttl_seconds));
    if (static_cast<int64_t>(sessions_.size()) >= options_.max_sessions) {
      return absl::ResourceExhaustedError(
          absl::StrCat("session limit reached (", options_.max_sessions, ")"));
    }
    if (p.sampling) {
      TITANS_RETURN_IF_ERROR(ValidateSamplingParams(*p.sampling, model_->config().vocab_size));
    }
    auto s = NewSession();
    s->record.id = id;
    s->record.principal = p.principal;
    s->record.labels = p.labels;
    s->record.idle_ttl_seconds = ttl;
    s->record.created_unix_ms = s->record.last_used_unix_ms = NowMs();
    s->record.position = state->position;
    s->sampling = p.sampling;
    s->state_bytes = StateBytes(*state);
    if (history) {
      s->history = *history;
      if (files_) {  // the fork gets its own copies of the stored points
        for (const RewindPoint& point : s->history.points()) {
          if (!point.state) (void)files_->CopyRewindPoint(history_owner, id, point.position);
        }
      }
    } else {
      s->history.Reset(RewindPoint{state->position, std::make_shared<SessionState>(*state)});
    }
    s->rewind_floor = s->history.first_position();
    s->state = std::move(state);
    Session* added = s.get();
    SessionInfo info = InfoOf(*s);
    sessions_.emplace(id, std::move(s));
    if (options_.durability == Durability::kSync || shared_) {
      // The session must exist after a crash before any of its operations is acknowledged; in a
      // shared store, also so that other replicas can find it (and the id stays unique).
      absl::Status st = Persist(added, /*create=*/true);
      if (!st.ok()) {
        sessions_.erase(id);
        return st;
      }
    }
    observer().OnSessionOpened();
    return info;
  }

  absl::StatusOr<SessionInfo> CreateSession(const CreateParams& p) {
    auto state = std::make_unique<SessionState>(model_->NewState());
    std::lock_guard<std::mutex> lock(mu_);
    return AddSession(p, std::move(state));
  }

  absl::StatusOr<SessionInfo> GetSession(const std::string& principal, const std::string& id) {
    Discover(id);
    if (shared_) Refresh(id);
    std::lock_guard<std::mutex> lock(mu_);
    TITANS_ASSIGN_OR_RETURN(Session * s, Find(principal, id));
    return InfoOf(*s);
  }

  // Shared stores: updates the registry's view of a session that another replica may be serving
  // (not resident here, or resident but taken over): its record from the store.
  void Refresh(const std::string& id) {
    bool resident;
    int64_t seen_use;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = sessions_.find(id);
      if (it == sessions_.end() || it->second->busy || !it->second->ops.empty()) return;
      resident = !it->second->spilled;
      seen_use = it->second->record.last_used_unix_ms;
    }
    if (resident && files_->Moved({id}).empty()) return;  // held here: the local view is current
    auto record = files_->ReadRecord(id);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = sessions_.find(id);
    if (it == sessions_.end() || it->second->busy || !it->second->ops.empty()) return;
    // Loaded (or reloaded) by the engine thread meanwhile: its record is newer than the one read
    // above (a rewind may even have advanced the epoch), so leave it.
    if (it->second->spilled == resident || it->second->record.last_used_unix_ms != seen_use) return;
    if (!record.ok()) {
      if (record.status().code() == absl::StatusCode::kNotFound) sessions_.erase(it);
      return;
    }
    Session* s = it->second.get();
    if (resident) DropResident(s);
    const int64_t last_used = s->record.last_used_unix_ms;
    s->record = std::move(*record);
    s->record.last_used_unix_ms = std::max(last_used, s->record.last_used_unix_ms);
    s->rewind_floor = std::min(s->rewind_floor, s->record.position);
  }

  std::vector<SessionInfo> List(const std::string& principal,
                                const std::map<std::string, std::string>& filter,
                                const std::string& after, int limit, bool* more) {
    if (shared_) {  // sessions created by other replicas too
      std::vector<SessionRecord> stored = files_->List(nullptr);
      std::lock_guard<std::mutex> lock(mu_);
      for (SessionRecord& r : stored) {
        if (!sessions_.count(r.id)) Register(std::move(r));
      }
    }
    std::lock_guard<std::mutex> lock(mu_);
    std::vector<const Session*> matching;
    for (const auto& [id, s] : sessions_) {
      if (s->record.principal != principal || id <= after) continue;
      bool ok = true;
      for (const auto& [k, v] : filter) {
        auto it = s->record.labels.find(k);
        ok = ok && it != s->record.labels.end() && it->second == v;
      }
      if (ok) matching.push_back(s.get());
    }
    std::sort(matching.begin(), matching.end(),
              [](const Session* a, const Session* b) { return a->record.id < b->record.id; });
    *more = static_cast<int>(matching.size()) > limit;
    std::vector<SessionInfo> out;
    for (int i = 0; i < std::min<int>(limit, matching.size()); ++i)
      out.push_back(InfoOf(*matching[i]));
    return out;
  }

  absl::StatusOr<std::vector<int32_t>> Tokenize(const Input& input, bool allow_empty) {
    std::vector<int32_t> tokens;
    if (input.has_tokens) {
      for (int32_t id : input.tokens) {
        if (id < 0 || id >= model_->config().vocab_size) {
          return absl::InvalidArgumentError(absl::StrCat("token id ", id,
                                                         " is outside the vocabulary [0, ",
                                                         model_->config().vocab_size, ")"));
        }
      }
      tokens = input.tokens;
    } else {
      if (!IsValidUtf8(input.text)) return absl::InvalidArgumentError("text is not valid UTF-8");
      TITANS_ASSIGN_OR_RETURN(tokens, model_->tokenizer().Encode(input.text, false));
    }
    if (tokens.empty() && !allow_empty) return absl::InvalidArgumentError("input is empty");
    if (static_cast<int64_t>(tokens.size()) > options_.max_tokens_per_request) {
      return absl::InvalidArgumentError(
          absl::StrCat("input has ", tokens.size(), " tokens; at most ",
                       options_.max_tokens_per_request, " per request (split it)"));
    }
    return tokens;
  }

  // Queues `op` on the session; on failure the op is returned to the caller to report.
  absl::Status Enqueue(const std::string& principal, const std::string& id,
                       std::unique_ptr<Op>& op) {
    Discover(id);
    std::lock_guard<std::mutex> lock(mu_);
    TITANS_RETURN_IF_ERROR(CheckOpen());
    TITANS_ASSIGN_OR_RETURN(Session * s, Find(principal, id));
    if (static_cast<int32_t>(s->ops.size()) >= options_.max_ops_per_session) {
      return absl::ResourceExhaustedError(absl::StrCat("session '", id, "' has ", s->ops.size(),
                                                       " operations queued (limit reached)"));
    }
    op->queued_tokens = op->remaining();  // not yet visible to the engine thread
    if (QueuedTokens() + op->queued_tokens > options_.max_queued_tokens) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "server queue is full (", options_.max_queued_tokens, " tokens); retry later"));
    }
    s->ops.push_back(std::move(op));
    cv_.notify_all();
    return absl::OkStatus();
  }

  // ---- Engine thread ---------------------------------------------------------------------------

  void Loop() {
    std::unique_lock<std::mutex> lock(mu_);
    auto last_sweep = Clock::now();
    while (!stop_) {
      if (!HasRunnable()) {
        cv_.wait_for(lock, std::chrono::milliseconds(500));
      }
      if (stop_) break;
      if (Clock::now() - last_sweep > std::chrono::seconds(1)) {
        Sweep();
        last_sweep = Clock::now();
      }
      if (!HasRunnable()) continue;
      // Schedule (plain data), execute (no lock held), update.
      std::vector<Session*> order;
      std::vector<Candidate> candidates;
      for (auto& [id, s] : sessions_) {
        if (s->ops.empty()) continue;
        order.push_back(s.get());
      }
      std::rotate(order.begin(), order.begin() + (rr_cursor_++ % order.size()), order.end());
      for (size_t i = 0; i < order.size(); ++i) {
        const Op& op = *order[i]->ops.front();
        Candidate c{static_cast<int64_t>(i), 0, false};
        switch (op.kind) {
          case OpKind::kAppend:
            c.wanted_tokens = std::max<int64_t>(op.remaining(), 2);
            break;
          case OpKind::kGenerate:
            c.wanted_tokens = op.remaining() > 0 ? std::max<int64_t>(op.remaining(), 2) : 1;
            break;
          case OpKind::kScore:
            c.wanted_tokens = std::max<int64_t>(op.remaining(), 2);
            c.indivisible = true;
            break;
          default:
            c.wanted_tokens = 0;
        }
        candidates.push_back(c);
      }
      std::vector<Assignment> plan = PlanStep(candidates, options_.step_token_budget);
      for (const Assignment& a : plan) order[a.session]->busy = true;
      ++steps_;
      lock.unlock();
      if (shared_) DropMoved(order, plan);
      std::vector<std::function<void()>> callbacks;
      std::vector<Forwarding> batch;
      const auto step_start = Clock::now();
      const int64_t kernel_start = kernels::MemoryKernelNanos();
      for (const Assignment& a : plan) Prepare(order[a.session], a.tokens, &batch, &callbacks);
      RunBatch(batch, &callbacks);
      CommitDurable(&callbacks);
      int64_t step_tokens = 0;
      for (const Forwarding& f : batch) step_tokens += static_cast<int64_t>(f.tokens.size());
      observer().OnStep(static_cast<int>(plan.size()), step_tokens,
                        std::chrono::duration<double>(Clock::now() - step_start).count(),
                        (kernels::MemoryKernelNanos() - kernel_start) * 1e-9);
      lock.lock();
      Update(order, plan, &callbacks);
      lock.unlock();
      for (auto& cb : callbacks) cb();
      lock.lock();
    }
  }

  // Shared stores, before a step: a session this replica holds in RAM may have been taken over
  // by another replica since; such copies are dropped so that the step acquires and loads the
  // current state (one round trip to the store per step).
  void DropMoved(const std::vector<Session*>& order, const std::vector<Assignment>& plan) {
    std::vector<std::string> ids;
    std::map<std::string, Session*> by_id;
    for (const Assignment& a : plan) {
      Session* s = order[a.session];
      if (!s->state || s->ops.front()->position_before >= 0) continue;  // not loaded / mid-op
      ids.push_back(s->record.id);
      by_id[s->record.id] = s;
    }
    if (ids.empty()) return;
    std::vector<std::string> moved = files_->Moved(ids);
    if (moved.empty()) return;
    std::lock_guard<std::mutex> lock(mu_);
    for (const std::string& id : moved) DropResident(by_id[id]);
  }

  // Tokens accepted but not yet consumed, over all sessions.
  int64_t QueuedTokens() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int64_t total = 0;
    for (auto& [id, s] : sessions_) {
      for (auto& op : s->ops) total += op->queued_tokens;
    }
    return total;
  }

  bool HasRunnable() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (auto& [id, s] : sessions_) {
      if (!s->ops.empty()) return true;
    }
    return false;
  }

  // Runs on the engine thread without mu_: only it touches states and head operations.
  // With a shared store the session is first acquired (fencing off any replica that held it),
  // its record re-read (another replica may have changed it) and its log since the checkpoint
  // replayed. NOT_FOUND when the session no longer exists in the store.
  absl::Status EnsureResident(Session* s) {
    if (s->state) return absl::OkStatus();
    const std::string id = s->record.id;
    if (shared_) {
      TITANS_ASSIGN_OR_RETURN(const bool migrated, files_->Acquire(id));
      if (migrated) observer().OnSessionAcquired();
      TITANS_ASSIGN_OR_RETURN(SessionRecord record, files_->ReadRecord(id));
      std::lock_guard<std::mutex> lock(mu_);
      record.last_used_unix_ms = s->record.last_used_unix_ms;
      s->record = std::move(record);
      s->persisted_position = s->record.position;
    }
    TITANS_ASSIGN_OR_RETURN(std::string blob, files_->ReadState(id));
    TITANS_ASSIGN_OR_RETURN(SessionState state,
                            DeserializeSessionState(blob, model_->config(), model_->fingerprint()));
    s->state = std::make_unique<SessionState>(std::move(state));
    LoadHistory(s);
    if (shared_ && options_.durability == Durability::kSync) {
      TITANS_ASSIGN_OR_RETURN(std::vector<WalRecord> log, files_->ReadLog(id));
      int64_t replayed = 0;
      for (const WalRecord& r : log) {
        absl::StatusOr<bool> applied = ReplayRecord(s, r);
        if (!applied.ok()) {  // keeps the last consistent state, reported like Recover()
          std::fprintf(stderr, "engine: %s\n", applied.status().ToString().c_str());
          observer().OnRestore(0, 0, false);
          std::lock_guard<std::mutex> lock(mu_);
          ++unrecoverable_sessions_;
          break;
        }
        replayed += *applied;
      }
      if (replayed > 0) {
        std::lock_guard<std::mutex> lock(mu_);
        recovered_records_ += replayed;
        TITANS_RETURN_IF_ERROR(Persist(s));  // the checkpoint clears the log
      }
    }
    return absl::OkStatus();
  }

  // Applies one log record to the session's state. False if the state already contains it (or
  // it belongs to an abandoned epoch); DATA_LOSS if it does not continue the state (a gap).
  absl::StatusOr<bool> ReplayRecord(Session* s, const WalRecord& r) {
    SessionState& state = *s->state;
    const int64_t end = r.position_before + static_cast<int64_t>(r.tokens.size());
    if (r.epoch < s->record.epoch) return false;  // logged before a rewind the checkpoint holds
    if (end <= state.position && r.epoch == s->record.epoch) return false;  // in the checkpoint
    if (r.position_before != state.position || r.epoch != s->record.epoch) {
      return absl::DataLossError(absl::StrCat(
          "session ", s->record.id, ": log resumes at ", r.position_before, " (epoch ", r.epoch,
          "), state is at ", state.position, " (epoch ", s->record.epoch, ")"));
    }
    at::NoGradGuard no_grad;
    size_t at = 0;
    for (int32_t piece : r.pieces) {
      std::vector<int64_t> ids(r.tokens.begin() + at, r.tokens.begin() + at + piece);
      TITANS_RETURN_IF_ERROR(model_->ForwardMany({&state}, {ids}));
      at += piece;
    }
    if (r.has_rng) state.rng_state = r.rng;
    s->history.Record(r.tokens);
    s->record.position = state.position;
    s->state_bytes = StateBytes(state);
    return true;
  }

  // ---- Rewind history (engine thread) ---------------------------------------------------------

  // Restores the session's rewind history from the store. Whatever cannot be restored
  // consistently (missing or damaged tokens file, no point at its start, a different end) is
  // dropped and the history restarts at the current state: rewinding less far, never wrongly.
  void LoadHistory(Session* s) {
    const SessionState& state = *s->state;
    const std::string& id = s->record.id;
    bool restored = false;
    if (s->history.enabled()) {
      auto tokens = files_->ReadRewindTokens(id);
      std::vector<int64_t> stored = files_->ListRewindPoints(id);
      if (tokens.ok()) {
        std::vector<RewindPoint> points;
        for (int64_t p : stored) points.push_back(RewindPoint{p, nullptr});
        const int64_t end = tokens->first_position + static_cast<int64_t>(tokens->tokens.size());
        restored = end == state.position &&
                   s->history.Restore(tokens->first_position, std::move(tokens->tokens),
                                      std::move(points));
      }
      // Points past the restored end belong to a timeline that was not persisted.
      for (int64_t p : stored) {
        if (!restored || p > s->history.end() || p < s->history.first_position()) {
          files_->RemoveRewindPoint(id, p);
        }
      }
      if (!restored && tokens.status().code() != absl::StatusCode::kNotFound) {
        std::fprintf(stderr,
                     "engine: session %s: rewind history not restored; it restarts at %lld\n",
                     id.c_str(), static_cast<long long>(state.position));
      }
    }
    if (!restored) ResetHistory(s);
  }

  void ResetHistory(Session* s) {
    s->history.Reset(RewindPoint{s->state->position, std::make_shared<SessionState>(*s->state)});
  }

  // Between operations: takes a rewind point if one is due, and writes new points to the store
  // (then only their positions stay in memory).
  void MaybeTakePoint(Session* s) {
    if (!s->history.enabled()) return;
    if (s->history.end() != s->state->position) ResetHistory(s);  // never out of step
    if (s->history.PointDue()) {
      std::vector<int64_t> dropped = s->history.AddPoint(
          RewindPoint{s->state->position, std::make_shared<SessionState>(*s->state)});
      if (files_) {
        for (int64_t p : dropped) files_->RemoveRewindPoint(s->record.id, p);
      }
    }
    StorePoints(s);
  }

  void StorePoints(Session* s) {
    if (!files_) return;
    for (const RewindPoint& point : s->history.points()) {
      if (!point.state) continue;
      auto blob = SerializeSessionState(model_->config(), *point.state, model_->fingerprint());
      if (blob.ok() && files_->WriteRewindPoint(s->record.id, point.position, *blob).ok()) {
        s->history.MarkStored(point.position);
      }
    }
  }

  // The session's state at `position` <= its position: the nearest rewind point at or before
  // it with the tokens up to `position` replayed (in pieces; the result equals the original
  // state at that position up to float rounding). OUT_OF_RANGE outside the history,
  // FAILED_PRECONDITION when rewinding is disabled, DATA_LOSS when a stored point is damaged.
  absl::StatusOr<std::unique_ptr<SessionState>> StateAt(Session* s, int64_t position) {
    SessionState& live = *s->state;
    if (position < 0 || position == live.position) return std::make_unique<SessionState>(live);
    if (position > live.position) {
      return absl::OutOfRangeError(
          absl::StrCat("position ", position, " is beyond the session's position ", live.position));
    }
    if (!s->history.enabled()) {
      return absl::FailedPreconditionError(
          "rewinding is disabled on this server (--rewind_window_tokens=0)");
    }
    if (s->history.end() != live.position) ResetHistory(s);
    TITANS_ASSIGN_OR_RETURN(RewindHistory::Plan plan, s->history.PlanRewind(position));
    std::unique_ptr<SessionState> work;
    if (plan.start.state) {
      work = std::make_unique<SessionState>(*plan.start.state);
    } else {
      auto blob = files_->ReadRewindPoint(s->record.id, plan.start.position);
      absl::StatusOr<SessionState> state =
          blob.ok() ? DeserializeSessionState(*blob, model_->config(), model_->fingerprint())
                    : absl::StatusOr<SessionState>(blob.status());
      if (!state.ok() || state->position != plan.start.position) {
        return absl::DataLossError(absl::StrCat(
            "the rewind point at position ", plan.start.position,
            " could not be read: ", state.ok() ? "wrong position" : state.status().message()));
      }
      work = std::make_unique<SessionState>(std::move(*state));
    }
    constexpr size_t kReplayPiece = 4096;
    for (size_t at = 0; at < plan.replay.size(); at += kReplayPiece) {
      const size_t n = std::min(kReplayPiece, plan.replay.size() - at);
      std::vector<int64_t> ids(plan.replay.begin() + at, plan.replay.begin() + at + n);
      TITANS_RETURN_IF_ERROR(model_->ForwardMany({work.get()}, {ids}));
    }
    return work;
  }

  // Rewind op: the session goes back to op.target_position. Persisted at once (with a new epoch,
  // so that log records of the abandoned tokens are never replayed onto it); in sync mode a
  // failed write leaves the session as it was and fails the operation.
  void ExecuteRewind(Session* s, Op& op, std::vector<std::function<void()>>* callbacks) {
    auto done = std::move(op.fork_done);
    auto target = StateAt(s, op.target_position);
    if (!target.ok()) {
      callbacks->push_back([done, st = target.status()] { done(st); });
      MarkDone(op);
      return;
    }
    SessionState before = *s->state;
    RewindHistory history_before = s->history;
    const int64_t position_before = s->history.end();
    std::vector<int64_t> dropped;
    for (const RewindPoint& p : s->history.points()) {
      if (p.position > op.target_position) dropped.push_back(p.position);
    }
    *s->state = std::move(**target);
    s->history.TruncateTo(s->state->position);
    std::lock_guard<std::mutex> lock(mu_);
    ++s->record.epoch;
    absl::Status st = files_ ? Persist(s) : absl::OkStatus();
    if (st.code() == absl::StatusCode::kAborted) st = MovedError(s->record.id);
    if (!st.ok() && (options_.durability == Durability::kSync || s->moved)) {
      *s->state = std::move(before);
      s->history = std::move(history_before);
      --s->record.epoch;
      s->record.position = position_before;
      s->state_bytes = StateBytes(*s->state);
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
    s->record.position = s->state->position;
    s->state_bytes = StateBytes(*s->state);
    s->rewind_floor = s->history.first_position();
    s->ops.front()->finished = true;
    SessionInfo info = InfoOf(*s);
    info.queued_operations -= 1;  // this operation is done
    observer().OnTokens("rewound", position_before - s->state->position);
    callbacks->push_back([done, info] { done(info); });
  }

  // Tokens of one session to feed in this step's batched forward pass.
  struct Forwarding {
    Session* session;
    Op* op;
    std::vector<int64_t> tokens;
    bool decode = false;  // a sampled token of a generation (else a piece of an append / prompt)
  };

  // Engine thread, without mu_ (only this thread touches states and head operations). Runs
  // control operations, scores and failures directly; queues token work into *batch.
  void Prepare(Session* s, int64_t tokens, std::vector<Forwarding>* batch,
               std::vector<std::function<void()>>* callbacks) {
    Op& op = *s->ops.front();
    if (!op.started) {
      op.started = true;
      observer().OnQueueTime(std::chrono::duration<double>(Clock::now() - op.arrival).count());
    }
    at::NoGradGuard no_grad;
    absl::Status resident = EnsureResident(s);
    if (!resident.ok()) {
      if (resident.code() == absl::StatusCode::kNotFound && shared_) {
        s->gone = true;  // closed or expired on another replica
        Fail(op, absl::NotFoundError(absl::StrCat("session '", s->record.id, "' not found")),
             callbacks);
      } else if (resident.code() == absl::StatusCode::kUnavailable) {
        Fail(op, resident, callbacks);
      } else {
        Fail(op,
             absl::DataLossError(
                 absl::StrCat("session state could not be restored: ", resident.message())),
             callbacks);
      }
      return;
    }
    SessionState& state = *s->state;
    if (op.position_before < 0) op.position_before = state.position;
    const bool cancelled = op.cancel && op.cancel->load();
    switch (op.kind) {
      case OpKind::kAppend: {
        if (!op.backup) op.backup = std::make_unique<SessionState>(state);
        if (cancelled || draining_deadline_passed_) {
          state = *op.backup;
          Fail(op,
               cancelled ? absl::CancelledError("append cancelled; the session is unchanged")
                         : absl::UnavailableError("server is shutting down"),
               callbacks);
          return;
        }
        batch->push_back(Forwarding{s, &op, NextPiece(op, tokens), false});
        return;
      }
      case OpKind::kGenerate:
        PrepareGenerate(s, &op, tokens, cancelled, batch, callbacks);
        return;
      case OpKind::kScore:
        ExecuteScore(s, &op, callbacks);
        return;
      case OpKind::kExport: {
        auto blob = SerializeSessionState(model_->config(), state, model_->fingerprint());
        auto done = std::move(op.export_done);
        callbacks->push_back([done, blob] { done(blob); });
        MarkDone(op);
        return;
      }
      case OpKind::kRewind:
        ExecuteRewind(s, op, callbacks);
        return;
      case OpKind::kFork: {
        auto forked = StateAt(s, op.target_position);
        if (!forked.ok()) {
          Fail(op, forked.status(), callbacks);
          return;
        }
        if (s->history.end() != state.position) ResetHistory(s);
        RewindHistory history = s->history.CopyUpTo((*forked)->position);
        CreateParams p;
        p.principal = s->record.principal;
        p.id = op.new_id;
        p.idle_ttl_seconds = s->record.idle_ttl_seconds;
        p.labels = s->record.labels;
        p.sampling = s->sampling;
        absl::StatusOr<SessionInfo> info;
        {
          std::lock_guard<std::mutex> lock(mu_);
          // Tensors are never written in place, so sharing them is a copy-on-write fork.
          info = AddSession(p, std::move(*forked), &history, s->record.id);
        }
        auto done = std::move(op.fork_done);
        callbacks->push_back([done, info] { done(info); });
        MarkDone(op);
        return;
      }
      case OpKind::kClose:
        MarkDone(op);  // Update() erases the session and answers the queued operations
        return;
    }
  }

  // The next up-to-`tokens` tokens of an append or prompt.
  static std::vector<int64_t> NextPiece(const Op& op, int64_t tokens) {
    const int64_t n = std::max<int64_t>(1, std::min<int64_t>(tokens, op.remaining()));
    return std::vector<int64_t>(op.tokens.begin() + op.consumed,
                                op.tokens.begin() + op.consumed + n);
  }

  // Finishes an operation that changed the session. Without a log its callback runs now; in sync
  // mode it waits for this step's group commit, and if that fails the session is rolled back to
  // its state before the operation and the operation fails.
  void Complete(Session* s, Op& op, std::function<void()> on_done,
                std::function<void(absl::Status)> on_error,
                std::vector<std::function<void()>>* callbacks) {
    MarkDone(op);
    s->history.Record(op.log_tokens);
    if (options_.durability != Durability::kSync || op.log_tokens.empty()) {
      callbacks->push_back(std::move(on_done));
      return;
    }
    WalRecord record;
    record.session_id = s->record.id;
    record.position_before = op.position_before;
    record.epoch = s->record.epoch;
    record.tokens = std::move(op.log_tokens);
    record.pieces = std::move(op.log_pieces);
    record.has_rng = op.kind == OpKind::kGenerate;
    record.rng = s->state->rng_state;
    std::shared_ptr<SessionState> before =
        op.backup ? std::make_shared<SessionState>(*op.backup) : nullptr;
    pending_durable_.push_back(
        PendingDurable{s, std::move(record), std::move(on_done),
                       [this, s, before, on_error, callbacks](absl::Status st) {
                         if (before) {
                           *s->state = *before;
                           s->history.TruncateTo(before->position);
                         }
                         callbacks->push_back([on_error, st] { on_error(st); });
                       }});
  }

  // The step's group commit: every completed operation's record, one write and one fdatasync.
  void CommitDurable(std::vector<std::function<void()>>* callbacks) {
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
    log_bytes_ += bytes;
    const bool all_ok = std::all_of(statuses.begin(), statuses.end(),
                                    [](const absl::Status& st) { return st.ok(); });
    observer().OnLogCommit(bytes, std::chrono::duration<double>(Clock::now() - start).count(),
                           all_ok);
    for (size_t i = 0; i < pending_durable_.size(); ++i) {
      PendingDurable& d = pending_durable_[i];
      const absl::Status& st = statuses[i];
      if (st.ok()) {
        callbacks->push_back(std::move(d.on_durable));
      } else if (st.code() == absl::StatusCode::kAborted) {
        d.on_failure(MovedError(d.record.session_id));
        d.session->moved = true;
      } else {
        d.on_failure(absl::Status(st.code(), absl::StrCat("the operation could not be made durable "
                                                          "(the session is unchanged): ",
                                                          st.message())));
      }
    }
    pending_durable_.clear();
  }

  // One forward pass for every session's tokens of this step (continuous batching), then each
  // operation's bookkeeping. If the pass fails, every operation in it fails (appends are rolled
  // back to their state before the operation).
  void RunBatch(std::vector<Forwarding>& batch, std::vector<std::function<void()>>* callbacks) {
    if (batch.empty()) return;
    std::vector<SessionState*> states;
    std::vector<std::vector<int64_t>> tokens;
    for (Forwarding& f : batch) {
      states.push_back(f.session->state.get());
      tokens.push_back(f.tokens);
    }
    absl::Status st;
    std::vector<absl::Status> per_session;
    {
      at::NoGradGuard no_grad;
      st = model_->ForwardMany(states, tokens, &per_session);
    }
    for (size_t i = 0; i < batch.size(); ++i) {
      Forwarding& f = batch[i];
      Op& op = *f.op;
      if (st.ok() && !per_session[i].ok()) st = per_session[i];  // this session only
      if (!st.ok()) {
        if (op.backup) *f.session->state = *op.backup;
        Fail(op, st, callbacks);
        st = per_session.empty() ? st : absl::OkStatus();
        continue;
      }
      op.log_tokens.insert(op.log_tokens.end(), f.tokens.begin(), f.tokens.end());
      op.log_pieces.push_back(static_cast<int32_t>(f.tokens.size()));
      if (f.decode) {
        observer().OnTokens("generated", 1);
        FinishDecode(f.session, &op, f.tokens[0], callbacks);
        continue;
      }
      observer().OnTokens(op.kind == OpKind::kAppend ? "appended" : "prompt",
                          static_cast<int64_t>(f.tokens.size()));
      op.consumed += f.tokens.size();
      if (op.kind == OpKind::kAppend && op.remaining() == 0) {
        AppendResult r{static_cast<int64_t>(op.tokens.size()), f.session->state->position};
        auto done = std::move(op.append_done);
        Complete(
            f.session, op, [done, r] { done(r); }, [done](absl::Status st) { done(st); },
            callbacks);
        op.tokens.clear();
        op.consumed = 0;
      }
    }
  }

  SamplingParams Resolve(const Session& s, const GenerateParams& g) const {
    SamplingParams p =
        ApplySamplingOverrides(s.sampling.value_or(options_.default_sampling), g.sampling);
    p.has_seed = g.sampling.seed.has_value();
    p.seed = g.sampling.seed.value_or(0);
    p.max_tokens = g.max_tokens;
    p.stop = g.stop;
    p.stop_at_eos = g.stop_at_eos;
    return p;
  }

  GenerateEvent Event(const SessionState& state, const Op& op, Finish f,
                      std::vector<int32_t> tokens, std::string text) const {
    GenerateEvent e;
    e.tokens = std::move(tokens);
    e.text = std::move(text);
    e.finish = f;
    e.position = state.position;
    e.prompt_tokens = static_cast<int32_t>(op.tokens.size());
    e.generated_tokens = op.generator ? op.generator->generated() : 0;
    e.total_seconds = std::chrono::duration<double>(Clock::now() - op.arrival).count();
    if (op.first_token) {
      e.time_to_first_token_seconds =
          std::chrono::duration<double>(*op.first_token - op.arrival).count();
    }
    return e;
  }

  void PrepareGenerate(Session* s, Op* op, int64_t tokens, bool cancelled,
                       std::vector<Forwarding>* batch,
                       std::vector<std::function<void()>>* callbacks) {
    SessionState& state = *s->state;
    if (cancelled || draining_deadline_passed_) {
      // The session keeps what was consumed so far; in sync mode that part is logged like a
      // finished operation (otherwise recovery would find a gap in the session's log).
      std::string rest = op->generator ? op->generator->Flush() : "";
      GenerateEvent e = Event(state, *op, Finish::kCancelled, {}, rest);
      auto on_event = op->on_event;
      auto done = std::move(op->done);
      const absl::Status st = cancelled ? absl::CancelledError("generation cancelled")
                                        : absl::UnavailableError("server is shutting down");
      op->backup.reset();  // keep, do not roll back, if the log commit fails: report its error
      Complete(
          s, *op,
          [on_event, done, e, st] {
            on_event(e);
            done(st);
          },
          [done](absl::Status failed) { done(failed); }, callbacks);
      return;
    }
    if (!op->backup) op->backup = std::make_unique<SessionState>(state);
    if (op->remaining() > 0) {  // the prompt first, in pieces like an append
      batch->push_back(Forwarding{s, op, NextPiece(*op, tokens), false});
      return;
    }
    if (!op->generator) {
      const int64_t position = state.position;
      auto g = TokenGenerator::Start(*model_, &state, op->sampling);
      if (!g.ok()) {
        state = *op->backup;  // Start() may have fed the BOS token
        Fail(*op, g.status(), callbacks);
        return;
      }
      if (state.position > position) {  // Start() fed the beginning-of-sequence token
        op->log_tokens.push_back(model_->tokenizer().bos_id());
        op->log_pieces.push_back(1);
      }
      op->generator.emplace(std::move(*g));
    }
    const int32_t token = op->generator->Sample(&state);
    batch->push_back(Forwarding{s, op, {token}, true});
  }

  void FinishDecode(Session* s, Op* op, int64_t token,
                    std::vector<std::function<void()>>* callbacks) {
    TokenGenerator::StepResult step = op->generator->Commit(static_cast<int32_t>(token));
    const auto now = Clock::now();
    if (!op->first_token) {
      op->first_token = now;
      observer().OnTimeToFirstToken(std::chrono::duration<double>(now - op->arrival).count());
    } else {
      observer().OnInterTokenLatency(std::chrono::duration<double>(now - op->last_token).count());
    }
    op->last_token = now;
    Finish f = Finish::kNone;
    if (step.finished) {
      switch (step.finish_reason) {
        case FinishReason::kLength:
          f = Finish::kLength;
          break;
        case FinishReason::kStop:
          f = Finish::kStop;
          break;
        case FinishReason::kEndOfSequence:
          f = Finish::kEndOfSequence;
          break;
        case FinishReason::kCancelled:
          f = Finish::kCancelled;
          break;
      }
    }
    GenerateEvent e = Event(*s->state, *op, f, {step.token}, step.text_delta);
    auto on_event = op->on_event;
    if (f == Finish::kNone) {
      callbacks->push_back([on_event, e] { on_event(e); });
      return;
    }
    auto done = std::move(op->done);
    Complete(
        s, *op,
        [on_event, done, e] {
          on_event(e);
          done(absl::OkStatus());
        },
        [done](absl::Status st) { done(st); }, callbacks);
  }

  void ExecuteScore(Session* s, Op* op, std::vector<std::function<void()>>* callbacks) {
    SessionState& live = *s->state;
    SessionState work = live;  // shallow; committed only if asked
    if (op->commit) op->backup = std::make_unique<SessionState>(live);
    auto result = [&]() -> absl::StatusOr<ScoreResult> {
      if (work.position == 0) {
        at::Tensor bos = at::full({1, 1}, int64_t{model_->tokenizer().bos_id()}, at::kLong);
        TITANS_RETURN_IF_ERROR(model_->Forward(&work, bos).status());
        op->log_tokens.push_back(model_->tokenizer().bos_id());
        op->log_pieces.push_back(1);
      }
      at::Tensor first = work.last_logits;  // [1, V]
      std::vector<int64_t> ids(op->tokens.begin(), op->tokens.end());
      at::Tensor t = at::tensor(ids).unsqueeze(0);
      TITANS_ASSIGN_OR_RETURN(at::Tensor logits, model_->Forward(&work, t, LogitsMode::kAll));
      // Logits predicting token i: after the context for i = 0, after token i-1 otherwise.
      at::Tensor pred = at::cat({first.unsqueeze(1), logits.slice(1, 0, logits.size(1) - 1)}, 1);
      at::Tensor lp = at::log_softmax(pred.to(at::kCPU).to(at::kFloat), -1)
                          .gather(2, t.unsqueeze(2))
                          .reshape({-1})
                          .contiguous();
      ScoreResult r;
      r.logprobs.assign(lp.data_ptr<float>(), lp.data_ptr<float>() + lp.numel());
      if (op->commit) live = work;
      observer().OnTokens("scored", static_cast<int64_t>(op->tokens.size()));
      r.position = live.position;
      return r;
    }();
    auto done = std::move(op->score_done);
    if (result.ok() && op->commit) {
      op->log_tokens.insert(op->log_tokens.end(), op->tokens.begin(), op->tokens.end());
      op->log_pieces.push_back(static_cast<int32_t>(op->tokens.size()));
      Complete(
          s, *op, [done, result] { done(result); }, [done](absl::Status st) { done(st); },
          callbacks);
    } else {
      callbacks->push_back([done, result] { done(result); });
      MarkDone(*op);
    }
    op->tokens.clear();
  }

  void Fail(Op& op, absl::Status status, std::vector<std::function<void()>>* callbacks) {
    switch (op.kind) {
      case OpKind::kAppend:
        callbacks->push_back([done = std::move(op.append_done), status] { done(status); });
        break;
      case OpKind::kGenerate:
        callbacks->push_back([done = std::move(op.done), status] { done(status); });
        break;
      case OpKind::kScore:
        callbacks->push_back([done = std::move(op.score_done), status] { done(status); });
        break;
      case OpKind::kFork:
      case OpKind::kRewind:
        callbacks->push_back([done = std::move(op.fork_done), status] { done(status); });
        break;
      case OpKind::kExport:
        callbacks->push_back([done = std::move(op.export_done), status] { done(status); });
        break;
      case OpKind::kClose:
        callbacks->push_back([done = std::move(op.done), status] { done(status); });
        break;
    }
    MarkDone(op);
  }

  void MarkDone(Op& op) { op.finished = true; }

  // With mu_: pops finished operations, refreshes session metadata, erases closed sessions.
  void Update(const std::vector<Session*>& order, const std::vector<Assignment>& plan,
              std::vector<std::function<void()>>* callbacks) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int64_t now = NowMs();
    for (const Assignment& a : plan) {
      Session* s = order[a.session];
      s->busy = false;
      Op& op = *s->ops.front();
      op.queued_tokens = op.remaining();
      s->record.last_used_unix_ms = now;
      if (s->state) {
        s->record.position = s->state->position;
        s->state_bytes = StateBytes(*s->state);
        s->spilled = false;
      }
      if (!op.finished) continue;
      if (s->state && op.kind != OpKind::kClose && !s->moved) MaybeTakePoint(s);
      s->rewind_floor = s->history.first_position();
      if (s->moved) DropResident(s);
      const bool close = op.kind == OpKind::kClose || s->gone;
      Done close_done = close ? std::move(op.done) : nullptr;
      s->ops.pop_front();
      if (close) {
        std::vector<std::unique_ptr<Op>> rest;
        for (auto& o : s->ops) rest.push_back(std::move(o));
        const std::string id = s->record.id;
        const bool gone = s->gone;
        if (files_ && !gone) files_->Remove(id);
        sessions_.erase(id);
        if (!gone) {
          observer().OnSessionClosed("closed");
          callbacks->push_back([close_done] { close_done(absl::OkStatus()); });
        }
        for (auto& o : rest) {
          Fail(*o, absl::NotFoundError("session '" + id + "' was closed"), callbacks);
        }
      }
    }
    CheckpointIfDue();
    SpillIfNeeded(callbacks);
  }

  // Forgets the resident state (another replica holds the session now); a later operation here
  // acquires the session again and loads it from the store.
  void DropResident(Session* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    s->state.reset();
    s->history = RewindHistory(options_.rewind_window_tokens, options_.rewind_interval_tokens);
    s->spilled = true;
    s->moved = false;
  }

  static absl::Status MovedError(const std::string& id) {
    return absl::UnavailableError(
        absl::StrCat("session '", id,
                     "' was taken over by another replica; the operation was not applied "
                     "(retry)"));
  }

  // No operation of the session has started changing its state.
  static bool Quiescent(const Session& s) {
    return s.ops.empty() || s.ops.front()->position_before < 0;
  }

  // With mu_: periodic checkpoints (kPeriodic, kSync) of sessions with unpersisted tokens, and in
  // sync mode, once the log is large, a checkpoint of every session so the old log can go.
  void CheckpointIfDue() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (options_.durability == Durability::kNone) return;
    const auto now = Clock::now();
    for (auto& [id, s] : sessions_) {
      // Only between operations: a started operation may have partly changed the state (an
      // unfinished append must never reach a checkpoint).
      if (!s->state || s->busy || !Quiescent(*s)) continue;
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
        if (s->state && s->record.position > s->persisted_position) {
          all = Quiescent(*s) && Persist(s.get()).ok() && all;
        }
      }
      if (all) (void)wal_->DropOldSegments();
    }
  }

  // With mu_: keeps at most max_resident_sessions states in RAM by spilling the least recently
  // used idle ones to state_dir (without a state_dir nothing is spilled).
  void SpillIfNeeded(std::vector<std::function<void()>>* callbacks)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    (void)callbacks;
    if (!files_) return;
    std::vector<Session*> resident;
    for (auto& [id, s] : sessions_) {
      if (s->state) resident.push_back(s.get());
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
        s->state.reset();
        s->history = RewindHistory(options_.rewind_window_tokens, options_.rewind_interval_tokens);
        s->spilled = true;
        ++spilled;
      }
    }
  }

  // Checkpoints the session (with `create`: stores a new session). In a shared store an ABORTED
  // result means another replica acquired the session: this replica's copy must be dropped.
  absl::Status Persist(Session* s, bool create = false) {
    const auto start = Clock::now();
    TITANS_ASSIGN_OR_RETURN(std::string blob, SerializeSessionState(model_->config(), *s->state,
                                                                    model_->fingerprint()));
    s->record.position = s->state->position;
    s->record.state_bytes = s->state_bytes;
    absl::Status st = create ? files_->Create(s->record, blob) : files_->Write(s->record, blob);
    if (st.code() == absl::StatusCode::kAborted) s->moved = true;
    if (st.ok() && s->history.enabled() && s->history.end() == s->state->position) {
      // The tokens file pairs with this checkpoint (LoadHistory checks that they meet).
      StorePoints(s);
      st = files_->WriteRewindTokens(
          s->record.id, RewindTokens{s->history.first_position(), s->history.tokens()});
    }
    if (st.ok()) {
      s->persisted_position = s->record.position;
      s->last_checkpoint = Clock::now();
    }
    observer().OnCheckpoint(static_cast<int64_t>(blob.size()),
                            std::chrono::duration<double>(Clock::now() - start).count(), st.ok());
    return st;
  }

  // With mu_: expires idle sessions past their TTL (never ones with queued work). With a
  // state_dir, the state is persisted to <state_dir>/expired first.
  void Sweep() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int64_t now = NowMs();
    std::vector<std::string> expired;
    for (auto& [id, s] : sessions_) {
      if (!s->ops.empty() || s->busy) continue;
      if (now - s->record.last_used_unix_ms > s->record.idle_ttl_seconds * 1000) {
        expired.push_back(id);
      }
    }
    for (const std::string& id : expired) {
      Session* s = sessions_[id].get();
      if (shared_) {
        // Another replica may be using it: only the local copy goes (Redis expires the keys of
        // sessions that nobody uses).
        sessions_.erase(id);
        continue;
      }
      if (files_) {
        DirectoryStore graveyard(options_.state_dir + "/expired");
        if (!options_.state_dir.empty() && graveyard.Init().ok() && EnsureResident(s).ok()) {
          auto blob = SerializeSessionState(model_->config(), *s->state, model_->fingerprint());
          if (blob.ok()) (void)graveyard.Write(s->record, *blob);
        }
        files_->Remove(id);
      }
      sessions_.erase(id);
      ++expired_total_;
      observer().OnSessionClosed("expired");
    }
  }

  void Shutdown(int64_t deadline_ms) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (stopped_) return;
      draining_ = true;
      const auto deadline = Clock::now() + std::chrono::milliseconds(deadline_ms);
      while (HasRunnable() && Clock::now() < deadline) {
        lock.unlock();
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        lock.lock();
      }
      draining_deadline_passed_ = true;  // the engine thread now fails what is left
      while (HasRunnable()) {
        lock.unlock();
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        lock.lock();
      }
      stop_ = true;
      stopped_ = true;
      cv_.notify_all();
    }
    if (thread_.joinable()) thread_.join();
    std::lock_guard<std::mutex> lock(mu_);
    if (files_) {
      for (auto& [id, s] : sessions_) {
        if (s->state) {
          absl::Status st = Persist(s.get());
          if (!st.ok()) {
            std::fprintf(stderr, "engine: could not persist %s: %s\n", id.c_str(),
                         st.ToString().c_str());
          }
        }
      }
    }
  }

  Engine::Stats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    Engine::Stats st;
    st.sessions = static_cast<int64_t>(sessions_.size());
    for (auto& [id, s] : sessions_) {
      (s->spilled ? st.spilled : st.resident) += 1;
      (s->spilled ? st.spilled_state_bytes : st.resident_state_bytes) += s->state_bytes;
      st.queued_operations += static_cast<int64_t>(s->ops.size());
      st.unpersisted_tokens += s->record.position - s->persisted_position;
    }
    st.queued_tokens = QueuedTokens();
    st.log_bytes = log_bytes_;
    st.recovery_seconds = recovery_seconds_;
    st.recovered_records = recovered_records_;
    st.unrecoverable_sessions = unrecoverable_sessions_;
    st.steps = steps_;
    return st;
  }

  // ---- Operations (caller threads) -----------------------------------------------------------

  void Append(const std::string& principal, const std::string& id, Input input, CancelFlag cancel,
              std::function<void(absl::StatusOr<AppendResult>)> done) {
    auto tokens = Tokenize(input, false);
    if (!tokens.ok()) return done(tokens.status());
    auto op = std::make_unique<Op>();
    op->kind = OpKind::kAppend;
    op->tokens = std::move(*tokens);
    op->cancel = std::move(cancel);
    op->append_done = done;
    absl::Status st = Enqueue(principal, id, op);
    if (!st.ok()) done(st);
  }

  void Generate(const std::string& principal, const std::string& id, GenerateParams params,
                CancelFlag cancel, std::function<void(const GenerateEvent&)> on_event, Done done) {
    auto prompt = Tokenize(params.prompt, true);
    if (!prompt.ok()) return done(prompt.status());
    if (params.max_tokens == 0) params.max_tokens = 256;
    if (params.max_tokens < 0 || params.max_tokens > options_.max_generate_tokens) {
      return done(absl::InvalidArgumentError(
          absl::StrCat("max_tokens must be in [1, ", options_.max_generate_tokens, "]")));
    }
    auto op = std::make_unique<Op>();
    op->kind = OpKind::kGenerate;
    op->tokens = std::move(*prompt);
    op->cancel = std::move(cancel);
    op->on_event = std::move(on_event);
    op->done = done;
    Discover(id);
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto s = Find(principal, id);
      if (!s.ok()) return done(s.status());
      op->sampling = Resolve(**s, params);
    }
    op->generate = std::move(params);
    absl::Status valid = ValidateSamplingParams(op->sampling, model_->config().vocab_size);
    if (!valid.ok()) return done(valid);
    absl::Status st = Enqueue(principal, id, op);
    if (!st.ok()) done(st);
  }

  void Score(const std::string& principal, const std::string& id, std::vector<int32_t> tokens,
             bool commit, std::function<void(absl::StatusOr<ScoreResult>)> done) {
    Input in;
    in.tokens = std::move(tokens);
    in.has_tokens = true;
    auto checked = Tokenize(in, false);
    if (!checked.ok()) return done(checked.status());
    auto op = std::make_unique<Op>();
    op->kind = OpKind::kScore;
    op->tokens = std::move(*checked);
    op->commit = commit;
    op->score_done = done;
    if (id.empty()) {  // stateless: a temporary session of its own
      auto tmp = CreateSession(CreateParams{principal, "", 0, {}, std::nullopt});
      if (!tmp.ok()) return done(tmp.status());
      const std::string tmp_id = tmp->id;
      op->commit = false;
      op->score_done = [this, principal, tmp_id, done](absl::StatusOr<ScoreResult> r) {
        if (r.ok()) r->position = 0;
        done(std::move(r));
        Close(principal, tmp_id, [](absl::Status) {});
      };
      absl::Status st = Enqueue(principal, tmp_id, op);
      if (!st.ok()) op->score_done(st);
      return;
    }
    absl::Status st = Enqueue(principal, id, op);
    if (!st.ok()) done(st);
  }

  void Close(const std::string& principal, const std::string& id, Done done) {
    auto op = std::make_unique<Op>();
    op->kind = OpKind::kClose;
    op->done = done;
    absl::Status st = Enqueue(principal, id, op);
    if (!st.ok()) done(st);
  }

  void Fork(const std::string& principal, const std::string& id, const std::string& new_id,
            int64_t position, std::function<void(absl::StatusOr<SessionInfo>)> done) {
    if (position < -1) {
      return done(absl::InvalidArgumentError("position must not be negative"));
    }
    auto op = std::make_unique<Op>();
    op->kind = OpKind::kFork;
    op->new_id = new_id;
    op->target_position = position;
    op->fork_done = done;
    absl::Status st = Enqueue(principal, id, op);
    if (!st.ok()) done(st);
  }

  void Rewind(const std::string& principal, const std::string& id, int64_t position,
              std::function<void(absl::StatusOr<SessionInfo>)> done) {
    if (position < 0) return done(absl::InvalidArgumentError("position must not be negative"));
    auto op = std::make_unique<Op>();
    op->kind = OpKind::kRewind;
    op->target_position = position;
    op->fork_done = done;
    absl::Status st = Enqueue(principal, id, op);
    if (!st.ok()) done(st);
  }

  void Export(const std::string& principal, const std::string& id,
              std::function<void(absl::StatusOr<std::string>)> done) {
    auto op = std::make_unique<Op>();
    op->kind = OpKind::kExport;
    op->export_done = done;
    absl::Status st = Enqueue(principal, id, op);
    if (!st.ok()) done(st);
  }

  absl::StatusOr<SessionInfo> Import(const CreateParams& p, const std::string& snapshot) {
    TITANS_ASSIGN_OR_RETURN(SessionState state, DeserializeSessionState(snapshot, model_->config(),
                                                                        model_->fingerprint()));
    std::lock_guard<std::mutex> lock(mu_);
    return AddSession(p, std::make_unique<SessionState>(std::move(state)));
  }

 private:
  EngineOptions options_;
  EngineObserver null_observer_;
  std::unique_ptr<TitansModel> model_;
  ModelInfo info_;
  std::unique_ptr<SessionStore> files_;

  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::unique_ptr<Session>> sessions_ ABSL_GUARDED_BY(mu_);
  int64_t steps_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t expired_total_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t rr_cursor_ = 0;
  std::unique_ptr<Wal> wal_;
  // Operations complete only after their log record is durable (sync mode): the step's records
  // are committed together, then these callbacks run (or, if the commit failed, the failures).
  struct PendingDurable {
    Session* session;
    WalRecord record;
    std::function<void()> on_durable;
    std::function<void(absl::Status)> on_failure;
  };
  std::vector<PendingDurable> pending_durable_;
  int64_t recovered_records_ = 0;
  int64_t log_bytes_ = 0;
  bool shared_ = false;  // files_ is shared with other replicas
  int64_t unrecoverable_sessions_ = 0;
  double recovery_seconds_ = 0;
  std::atomic<bool> draining_{false};
  std::atomic<bool> draining_deadline_passed_{false};
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  bool stopped_ = false;
  std::thread thread_;
};

// ---- Free functions --------------------------------------------------------------------------

SamplingParams ApplySamplingOverrides(SamplingParams p, const SamplingOverrides& o) {
  if (o.temperature) p.temperature = *o.temperature;
  if (o.top_k) p.top_k = *o.top_k;
  if (o.top_p) p.top_p = *o.top_p;
  if (o.min_p) p.min_p = *o.min_p;
  if (o.repetition_penalty) p.repetition_penalty = *o.repetition_penalty;
  return p;
}

// ---- Engine -------------------------------------------------------------------------------------

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() { impl_->Shutdown(0); }

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  LoadOptions load;
  load.device = options.device;
  TITANS_ASSIGN_OR_RETURN(std::unique_ptr<TitansModel> model,
                          TitansModel::Load(options.model_dir, load));
  auto impl = std::make_unique<Impl>(options, std::move(model));
  TITANS_RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

const ModelInfo& Engine::model_info() const { return impl_->info(); }

absl::StatusOr<SessionInfo> Engine::CreateSession(const CreateParams& params) {
  return impl_->CreateSession(params);
}

absl::StatusOr<SessionInfo> Engine::GetSession(const std::string& principal,
                                               const std::string& id) {
  return impl_->GetSession(principal, id);
}

std::vector<SessionInfo> Engine::ListSessions(const std::string& principal,
                                              const std::map<std::string, std::string>& filter,
                                              const std::string& after_id, int limit, bool* more) {
  return impl_->List(principal, filter, after_id, limit, more);
}

void Engine::CloseSession(const std::string& principal, const std::string& id, Done done) {
  impl_->Close(principal, id, std::move(done));
}

void Engine::ForkSession(const std::string& principal, const std::string& id,
                         const std::string& new_id, int64_t position,
                         std::function<void(absl::StatusOr<SessionInfo>)> done) {
  impl_->Fork(principal, id, new_id, position, std::move(done));
}

void Engine::Rewind(const std::string& principal, const std::string& id, int64_t position,
                    std::function<void(absl::StatusOr<SessionInfo>)> done) {
  impl_->Rewind(principal, id, position, std::move(done));
}

void Engine::Append(const std::string& principal, const std::string& id, Input input,
                    CancelFlag cancel, std::function<void(absl::StatusOr<AppendResult>)> done) {
  impl_->Append(principal, id, std::move(input), std::move(cancel), std::move(done));
}

void Engine::Generate(const std::string& principal, const std::string& id, GenerateParams params,
                      CancelFlag cancel, std::function<void(const GenerateEvent&)> on_event,
                      Done done) {
  impl_->Generate(principal, id, std::move(params), std::move(cancel), std::move(on_event),
                  std::move(done));
}

void Engine::Score(const std::string& principal, const std::string& id, std::vector<int32_t> tokens,
                   bool commit, std::function<void(absl::StatusOr<ScoreResult>)> done) {
  impl_->Score(principal, id, std::move(tokens), commit, std::move(done));
}

void Engine::Export(const std::string& principal, const std::string& id,
                    std::function<void(absl::StatusOr<std::string>)> done) {
  impl_->Export(principal, id, std::move(done));
}

absl::StatusOr<SessionInfo> Engine::Import(const CreateParams& params,
                                           const std::string& snapshot) {
  return impl_->Import(params, snapshot);
}

void Engine::Shutdown(int64_t deadline_ms) { impl_->Shutdown(deadline_ms); }

Engine::Stats Engine::stats() const { return impl_->stats(); }

}  // namespace titans::engine
