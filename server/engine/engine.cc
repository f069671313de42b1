#include "server/engine/engine_impl.h"
#include "server/log.h"

namespace titans::engine {

Engine::Impl::Impl(EngineOptions options, std::unique_ptr<ModelRunner> runner)
    : options_(std::move(options)),
      env_(options_.env ? options_.env : Env::Default()),
      runner_(std::move(runner)) {
  const ModelConfig& c = runner_->config();
  info_.name = c.name;
  info_.variant = std::string(VariantName(c.variant));
  info_.parameters = runner_->parameter_count();
  info_.vocab_size = c.vocab_size;
  info_.tokenizer = runner_->tokenizer().type();
  info_.initialization = c.initialization;
  info_.fingerprint = runner_->fingerprint();
  info_.description = c.description;
  info_.config_json = ModelConfigToJson(c);
}

absl::Status Engine::Impl::Start() {
  if (options_.rewind_window_tokens < 0 ||
      (options_.rewind_window_tokens > 0 && options_.rewind_interval_tokens < 1)) {
    return absl::InvalidArgumentError(
        "rewind_window_tokens must be >= 0 and rewind_interval_tokens >= 1");
  }
  std::string spec = options_.session_store;
  if (spec.empty() && !options_.state_dir.empty()) spec = options_.state_dir + "/sessions";
  if (!spec.empty()) {
    TITANS_ASSIGN_OR_RETURN(files_, OpenSessionStore(spec, env_));
    shared_ = files_->shared();
    std::vector<std::string> errors;
    std::vector<SessionRecord> records = files_->List(&errors);
    MutexLock lock(table_.mu());
    for (SessionRecord& r : records) Register(std::move(r));
    for (const std::string& e : errors) {
      server::Log(server::LogLevel::kWarning, "session_record_skipped", {{"error", e}});
    }
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

void Engine::Impl::Shutdown(int64_t deadline_ms) {
  {
    MutexLock lock(table_.mu());
    if (stopped_) return;
    draining_ = true;
    const auto deadline = Clock::now() + std::chrono::milliseconds(deadline_ms);
    // Polls every 5 ms while the engine thread drains (the waits release the engine lock).
    constexpr auto kPoll = std::chrono::milliseconds(5);
    while (table_.HasRunnable() && Clock::now() < deadline) cv_.WaitWithTimeout(table_.mu(), kPoll);
    draining_deadline_passed_ = true;  // the engine thread now fails what is left
    while (table_.HasRunnable()) cv_.WaitWithTimeout(table_.mu(), kPoll);
    stop_ = true;
    stopped_ = true;
    cv_.SignalAll();
  }
  if (thread_.joinable()) thread_.join();
  completions_.Flush();  // every answer the engine thread produced is delivered
  // The engine thread has stopped: nothing erases sessions or changes states any more, so the
  // checkpoints are written without the engine lock (GetSession and stats() are not held up
  // meanwhile).
  std::vector<Session*> resident;
  {
    MutexLock lock(table_.mu());
    table_.ForEach([&](Session* s) {
      // A session still being created is its creator's to write.
      if (s->slot && s->phase == SessionPhase::kOpen) resident.push_back(s);
    });
  }
  if (files_) {
    for (Session* s : resident) {
      absl::Status st = Persist(s);
      if (!st.ok()) {
        server::Log(server::LogLevel::kError, "session_persist_failed",
                    {{"session", s->record.id}, {"error", st.ToString()}});
      }
    }
  }
}

Engine::Stats Engine::Impl::stats() {
  MutexLock lock(table_.mu());
  Engine::Stats st;
  table_.ForEach([&st](Session* s) {
    if (!s->held) return;  // another replica's (shared store): its gauges count it
    ++st.sessions;
    (s->spilled ? st.spilled : st.resident) += 1;
    (s->spilled ? st.spilled_state_bytes : st.resident_state_bytes) += s->state_bytes;
    st.queued_operations += static_cast<int64_t>(s->ops.size());
    st.unpersisted_tokens += s->record.position - s->persisted_position;
  });
  st.queued_tokens = table_.QueuedTokens();
  st.log_bytes = log_bytes_;
  st.recovery_seconds = recovery_seconds_;
  st.recovered_records = recovered_records_;
  st.unrecoverable_sessions = unrecoverable_sessions_;
  st.steps = steps_;
  return st;
}

// ---- Free functions --------------------------------------------------------------------------

SamplingParams ApplySamplingOverrides(SamplingParams p, const SamplingOverrides& o) {
  if (o.temperature) p.temperature = *o.temperature;
  if (o.top_k) p.top_k = *o.top_k;
  if (o.top_p) p.top_p = *o.top_p;
  if (o.min_p) p.min_p = *o.min_p;
  if (o.repetition_penalty) p.repetition_penalty = *o.repetition_penalty;
  return p;
}

// Runner slots: every session can be resident at once (without a state directory nothing is
// spilled, and residency may briefly pass max_resident_sessions until the step's spill), plus
// room for forks made at the limit and the scratch slots of rewinds and replays. Slots are
// allocated in blocks as they are used (model/model_runner.h), so a large bound costs nothing.
namespace {
int32_t RunnerCapacity(const EngineOptions& options) {
  constexpr int64_t kLimit = int64_t{1} << 30;
  return static_cast<int32_t>(std::clamp<int64_t>(2 * options.max_sessions + 64, 64, kLimit));
}
}  // namespace

// ---- Engine -------------------------------------------------------------------------------------

Engine::Engine(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Engine::~Engine() { impl_->Shutdown(0); }

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(const EngineOptions& options) {
  TITANS_ASSIGN_OR_RETURN(
      std::unique_ptr<ModelRunner> runner,
      ModelRunner::Load(options.model_dir, options.device, RunnerCapacity(options)));
  auto impl = std::make_unique<Impl>(options, std::move(runner));
  TITANS_RETURN_IF_ERROR(impl->Start());
  return std::unique_ptr<Engine>(new Engine(std::move(impl)));
}

const ModelInfo& Engine::model_info() const { return impl_->info(); }
int64_t Engine::max_tokens_per_request() const { return impl_->max_tokens_per_request(); }

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
