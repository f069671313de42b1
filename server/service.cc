#include "server/service.h"

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <future>
#include <mutex>

#include "absl/strings/str_cat.h"
#include "model/file_util.h"
#include "model/utf8.h"
#include "proto/request_traits.h"
#include "server/generate_events.h"
#include "titans/v1/titans.grpc.pb.h"

namespace titans::server {
namespace {

namespace pb = ::titans::v1;
using engine::CancelFlag;
using engine::Engine;
using grpc::ServerContext;
using grpc::Status;

Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return Status::OK;
  return Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

void ToProto(const engine::SessionInfo& in, pb::Session* out) {
  out->set_session_id(in.id);
  out->set_model(in.model);
  out->set_position(in.position);
  out->set_state_bytes(in.state_bytes);
  out->set_created_unix_ms(in.created_unix_ms);
  out->set_last_used_unix_ms(in.last_used_unix_ms);
  out->set_idle_ttl_seconds(in.idle_ttl_seconds);
  for (const auto& [k, v] : in.labels) (*out->mutable_labels())[k] = v;
  out->set_spilled(in.spilled);
  out->set_queued_operations(in.queued_operations);
  out->set_rewind_floor(in.rewind_floor);
}

engine::SamplingOverrides FromProto(const pb::SamplingParams& p) {
  engine::SamplingOverrides o;
  if (p.has_temperature()) o.temperature = p.temperature();
  if (p.has_top_k()) o.top_k = p.top_k();
  if (p.has_top_p()) o.top_p = p.top_p();
  if (p.has_min_p()) o.min_p = p.min_p();
  if (p.has_repetition_penalty()) o.repetition_penalty = p.repetition_penalty();
  if (p.has_seed()) o.seed = p.seed();
  return o;
}

pb::FinishReason ToProto(engine::Finish f) {
  switch (f) {
    case engine::Finish::kLength:
      return pb::FINISH_REASON_LENGTH;
    case engine::Finish::kStop:
      return pb::FINISH_REASON_STOP;
    case engine::Finish::kEndOfSequence:
      return pb::FINISH_REASON_END_OF_SEQUENCE;
    case engine::Finish::kCancelled:
      return pb::FINISH_REASON_CANCELLED;
    case engine::Finish::kNone:
      break;
  }
  return pb::FINISH_REASON_UNSPECIFIED;
}

void ToProto(const engine::GenerateEvent& e, pb::GenerateResponse* out) {
  for (int32_t t : e.tokens) out->add_token_ids(t);
  out->set_text(ToValidUtf8(e.text));  // proto3 strings must be UTF-8
  out->set_position(e.position);
  if (e.finish != engine::Finish::kNone) {
    out->set_finish_reason(ToProto(e.finish));
    pb::Timings* t = out->mutable_timings();
    t->set_time_to_first_token_seconds(e.time_to_first_token_seconds);
    t->set_total_seconds(e.total_seconds);
    t->set_prompt_tokens(e.prompt_tokens);
    t->set_generated_tokens(e.generated_tokens);
  }
}

// Waits for an engine result while watching the client: a cancelled call or a passed deadline
// raises the operation's cancel flag, and the engine answers between steps.
template <typename T>
T Await(ServerContext* ctx, const CancelFlag& cancel, std::future<T>& result) {
  while (result.wait_for(std::chrono::milliseconds(20)) != std::future_status::ready) {
    if (ctx->IsCancelled()) cancel->store(true);
  }
  return result.get();
}

absl::StatusOr<engine::Input> InputOf(const pb::AppendRequest& r) {
  engine::Input in;
  switch (r.input_case()) {
    case pb::AppendRequest::kText:
      in.text = r.text();
      break;
    case pb::AppendRequest::kTokens:
      in.tokens.assign(r.tokens().ids().begin(), r.tokens().ids().end());
      in.has_tokens = true;
      break;
    default:
      return absl::InvalidArgumentError("append needs text or tokens");
  }
  return in;
}

// The bytes of request input held by calls in flight (ServiceOptions::max_inflight_request_bytes).
// A Reservation holds some of them until it is destroyed. Thread-safe (one atomic counter).
class InflightBudget {
 public:
  // `used` (may be null: the budget's own) counts the bytes held.
  InflightBudget(int64_t limit, std::atomic<int64_t>* used)
      : limit_(limit), used_(used ? used : &own_) {}

  class Reservation {
   public:
    explicit Reservation(InflightBudget* budget) : budget_(budget) {}
    Reservation(const Reservation&) = delete;
    Reservation& operator=(const Reservation&) = delete;
    ~Reservation() { budget_->used_->fetch_sub(held_); }
    // Takes `bytes` more; false (and nothing taken) if that would pass the limit.
    bool Add(int64_t bytes) {
      const int64_t after = budget_->used_->fetch_add(bytes) + bytes;
      if (budget_->limit_ > 0 && after > budget_->limit_) {
        budget_->used_->fetch_sub(bytes);
        return false;
      }
      held_ += bytes;
      return true;
    }

   private:
    InflightBudget* budget_;
    int64_t held_ = 0;
  };

 private:
  const int64_t limit_;
  std::atomic<int64_t> own_{0};
  std::atomic<int64_t>* used_;
};

Status InflightExhausted(int64_t limit) {
  return Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                absl::StrCat("the server holds its limit of in-flight request input (", limit,
                             " bytes, --max_inflight_request_bytes); retry later"));
}

// Bytes an input holds in memory.
int64_t InputBytes(const engine::Input& in) {
  return static_cast<int64_t>(in.text.size() + sizeof(int32_t) * in.tokens.size());
}

class TitansService final : public pb::Titans::Service {
 public:
  TitansService(Engine* engine, const Authenticator* auth, ServiceOptions options)
      : engine_(engine),
        auth_(auth),
        options_(options),
        inflight_(options.max_inflight_request_bytes, options.inflight_request_bytes) {}

  Status CreateSession(ServerContext* ctx, const pb::CreateSessionRequest* req,
                       pb::Session* resp) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) return ToGrpc(principal.status());
    if (!req->model().empty() && req->model() != engine_->model_info().name) {
      return Status(grpc::StatusCode::NOT_FOUND,
                    absl::StrCat("unknown model '", engine::ShowValue(req->model()),
                                 "'; this server hosts '", engine_->model_info().name, "'"));
    }
    engine::CreateParams p;
    p.principal = *principal;
    p.id = req->session_id();
    p.idle_ttl_seconds = static_cast<int64_t>(req->idle_ttl_seconds());
    p.labels.insert(req->labels().begin(), req->labels().end());
    if (req->has_sampling()) {
      p.sampling = engine::ApplySamplingOverrides(SamplingParams{}, FromProto(req->sampling()));
    }
    auto info = engine_->CreateSession(p);
    if (!info.ok()) return ToGrpc(info.status());
    ToProto(*info, resp);
    return Status::OK;
  }

  Status GetSession(ServerContext* ctx, const pb::GetSessionRequest* req,
                    pb::Session* resp) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) return ToGrpc(principal.status());
    auto info = engine_->GetSession(*principal, req->session_id());
    if (!info.ok()) return ToGrpc(info.status());
    ToProto(*info, resp);
    return Status::OK;
  }

  Status ListSessions(ServerContext* ctx, const pb::ListSessionsRequest* req,
                      pb::ListSessionsResponse* resp) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) return ToGrpc(principal.status());
    if (req->page_size() > 1000) {
      return Status(grpc::StatusCode::INVALID_ARGUMENT, "page_size must be at most 1000");
    }
    const int limit = req->page_size() == 0 ? 100 : static_cast<int>(req->page_size());
    std::map<std::string, std::string> filter(req->label_filter().begin(),
                                              req->label_filter().end());
    bool more = false;
    auto sessions = engine_->ListSessions(*principal, filter, req->page_token(), limit, &more);
    for (const auto& s : sessions) ToProto(s, resp->add_sessions());
    if (more && !sessions.empty()) resp->set_next_page_token(sessions.back().id);
    return Status::OK;
  }

  Status CloseSession(ServerContext* ctx, const pb::CloseSessionRequest* req,
                      pb::CloseSessionResponse*) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) return ToGrpc(principal.status());
    std::promise<absl::Status> done;
    auto result = done.get_future();
    engine_->CloseSession(*principal, req->session_id(),
                          [&done](absl::Status s) { done.set_value(std::move(s)); });
    return ToGrpc(result.get());
  }

  Status ForkSession(ServerContext* ctx, const pb::ForkSessionRequest* req,
                     pb::Session* resp) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) return ToGrpc(principal.status());
    std::promise<absl::StatusOr<engine::SessionInfo>> done;
    auto result = done.get_future();
    if (req->has_position() && req->position() > uint64_t{INT64_MAX}) {
      return Status(grpc::StatusCode::OUT_OF_RANGE, "position is beyond the session's position");
    }
    const int64_t position = req->has_position() ? static_cast<int64_t>(req->position()) : -1;
    engine_->ForkSession(*principal, req->session_id(), req->new_session_id(), position,
                         [&done](absl::StatusOr<engine::SessionInfo> s) { done.set_value(s); });
    auto info = result.get();
    if (!info.ok()) return ToGrpc(info.status());
    ToProto(*info, resp);
    return Status::OK;
  }

  Status RewindSession(ServerContext* ctx, const pb::RewindSessionRequest* req,
                       pb::Session* resp) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) return ToGrpc(principal.status());
    if (req->position() > uint64_t{INT64_MAX}) {
      return Status(grpc::StatusCode::OUT_OF_RANGE, "position is beyond the session's position");
    }
    std::promise<absl::StatusOr<engine::SessionInfo>> done;
    auto result = done.get_future();
    engine_->Rewind(*principal, req->session_id(), static_cast<int64_t>(req->position()),
                    [&done](absl::StatusOr<engine::SessionInfo> s) { done.set_value(s); });
    auto info = result.get();
    if (!info.ok()) return ToGrpc(info.status());
    ToProto(*info, resp);
    return Status::OK;
  }

  Status Append(ServerContext* ctx, const pb::AppendRequest* req,
                pb::AppendResponse* resp) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) return ToGrpc(principal.status());
    auto input = InputOf(*req);
    if (!input.ok()) return ToGrpc(input.status());
    InflightBudget::Reservation held(&inflight_);
    if (!held.Add(InputBytes(*input)))
      return InflightExhausted(options_.max_inflight_request_bytes);
    return RunAppend(ctx, *principal, req->session_id(), std::move(*input), resp);
  }

  Status AppendStream(ServerContext* ctx, grpc::ServerReader<pb::AppendRequest>* reader,
                      pb::AppendResponse* resp) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) return ToGrpc(principal.status());
    pb::AppendRequest msg;
    std::string session_id;
    engine::Input all;
    bool first = true;
    InflightBudget::Reservation held(&inflight_);
    titans::proto::TakeParseError();  // this thread's earlier calls are not this call's
    // Limits are checked as messages arrive, so a stream that will be refused is refused before
    // it has been buffered: token ids count exactly, and with the byte tokenizer so do bytes.
    const int64_t max_tokens = engine_->max_tokens_per_request();
    const bool byte_tokens = engine_->model_info().tokenizer == "byte";
    while (reader->Read(&msg)) {
      if (first) {
        session_id = msg.session_id();
      } else if (!msg.session_id().empty() && msg.session_id() != session_id) {
        return Status(grpc::StatusCode::INVALID_ARGUMENT,
                      "every AppendStream message must name the same session");
      }
      auto input = InputOf(msg);
      if (!input.ok()) return ToGrpc(input.status());
      if (!first && input->has_tokens != all.has_tokens) {
        return Status(grpc::StatusCode::INVALID_ARGUMENT,
                      "an AppendStream carries either text or tokens, not both");
      }
      all.has_tokens = input->has_tokens;
      if (!held.Add(InputBytes(*input)))
        return InflightExhausted(options_.max_inflight_request_bytes);
      const int64_t counted =
          all.has_tokens ? static_cast<int64_t>(all.tokens.size() + input->tokens.size())
          : byte_tokens  ? static_cast<int64_t>(all.text.size() + input->text.size())
                         : 0;
      if (counted > max_tokens) {
        return Status(grpc::StatusCode::INVALID_ARGUMENT,
                      absl::StrCat("input has more than ", max_tokens,
                                   " tokens; at most that many per request (split it)"));
      }
      all.text += input->text;
      all.tokens.insert(all.tokens.end(), input->tokens.begin(), input->tokens.end());
      if (static_cast<int64_t>(all.text.size() + 4 * all.tokens.size()) >
          options_.max_stream_bytes) {
        return Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      absl::StrCat("AppendStream exceeds ", options_.max_stream_bytes, " bytes"));
      }
      first = false;
    }
    if (ctx->IsCancelled()) return Status(grpc::StatusCode::CANCELLED, "client cancelled");
    // A message that did not parse ends the loop like the end of the stream: fail the call.
    if (Status bad = titans::proto::TakeParseError(); !bad.ok()) return bad;
    if (first) return Status(grpc::StatusCode::INVALID_ARGUMENT, "empty AppendStream");
    return RunAppend(ctx, *principal, session_id, std::move(all), resp);
  }

  Status Generate(ServerContext* ctx, const pb::GenerateRequest* req,
                  grpc::ServerWriter<pb::GenerateResponse>* writer) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) return ToGrpc(principal.status());
    return RunGenerate(ctx, *principal, *req,
                       [writer](const pb::GenerateResponse& r) { return writer->Write(r); });
  }

  Status Stream(ServerContext* ctx,
                grpc::ServerReaderWriter<pb::StreamResponse, pb::StreamRequest>* stream) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) return ToGrpc(principal.status());
    pb::StreamRequest cmd;
    titans::proto::TakeParseError();  // this thread's earlier calls are not this call's
    while (stream->Read(&cmd)) {
      pb::StreamResponse out;
      out.set_request_id(cmd.request_id());
      Status st;
      if (cmd.has_append()) {
        auto input = InputOf(cmd.append());
        st = input.ok() ? RunAppend(ctx, *principal, cmd.append().session_id(), std::move(*input),
                                    out.mutable_append())
                        : ToGrpc(input.status());
        if (st.ok() && !stream->Write(out)) break;
      } else if (cmd.has_generate()) {
        st = RunGenerate(ctx, *principal, cmd.generate(), [&](const pb::GenerateResponse& r) {
          pb::StreamResponse part;
          part.set_request_id(cmd.request_id());
          *part.mutable_generate() = r;
          return stream->Write(part);
        });
      } else {
        st = Status(grpc::StatusCode::INVALID_ARGUMENT, "command needs append or generate");
      }
      if (!st.ok()) {
        if (ctx->IsCancelled()) break;
        pb::StreamResponse err;
        err.set_request_id(cmd.request_id());
        err.mutable_error()->set_code(st.error_code());
        err.mutable_error()->set_message(st.error_message());
        if (!stream->Write(err)) break;
      }
    }
    if (ctx->IsCancelled()) return Status(grpc::StatusCode::CANCELLED, "client cancelled");
    return titans::proto::TakeParseError();  // OK, or the message that did not parse
  }

  Status Score(ServerContext* ctx, const pb::ScoreRequest* req, pb::ScoreResponse* resp) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) return ToGrpc(principal.status());
    std::promise<absl::StatusOr<engine::ScoreResult>> done;
    auto result = done.get_future();
    engine_->Score(*principal, req->session_id(),
                   std::vector<int32_t>(req->tokens().ids().begin(), req->tokens().ids().end()),
                   req->commit(),
                   [&done](absl::StatusOr<engine::ScoreResult> r) { done.set_value(r); });
    auto r = result.get();
    if (!r.ok()) return ToGrpc(r.status());
    for (float lp : r->logprobs) resp->add_logprobs(lp);
    resp->set_position(r->position);
    return Status::OK;
  }

  Status ExportSession(ServerContext* ctx, const pb::ExportSessionRequest* req,
                       pb::ExportSessionResponse* resp) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) return ToGrpc(principal.status());
    std::promise<absl::StatusOr<std::string>> done;
    auto result = done.get_future();
    engine_->Export(*principal, req->session_id(),
                    [&done](absl::StatusOr<std::string> r) { done.set_value(std::move(r)); });
    auto blob = result.get();
    if (!blob.ok()) return ToGrpc(blob.status());
    if (!req->file_name().empty()) {
      auto path = SnapshotPath(*principal, req->file_name());
      if (!path.ok()) return ToGrpc(path.status());
      absl::Status st = WriteFileAtomic(*path, *blob);
      if (!st.ok()) return ToGrpc(st);
    } else {
      resp->set_snapshot(std::move(*blob));
    }
    resp->set_model_fingerprint(engine_->model_info().fingerprint);
    auto info = engine_->GetSession(*principal, req->session_id());
    if (info.ok()) resp->set_position(info->position);
    return Status::OK;
  }

  Status ImportSession(ServerContext* ctx, const pb::ImportSessionRequest* req,
                       pb::Session* resp) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) return ToGrpc(principal.status());
    engine::CreateParams p;
    p.principal = *principal;
    p.id = req->session_id();
    p.idle_ttl_seconds = static_cast<int64_t>(req->idle_ttl_seconds());
    p.labels.insert(req->labels().begin(), req->labels().end());
    std::string from_file;
    if (!req->file_name().empty()) {
      auto path = SnapshotPath(*principal, req->file_name());
      if (!path.ok()) return ToGrpc(path.status());
      auto blob = ReadFileToString(*path);
      if (!blob.ok()) return ToGrpc(blob.status());
      from_file = std::move(*blob);
    }
    auto info = engine_->Import(p, req->file_name().empty() ? req->snapshot() : from_file);
    if (!info.ok()) return ToGrpc(info.status());
    ToProto(*info, resp);
    return Status::OK;
  }

  Status ListModels(ServerContext* ctx, const pb::ListModelsRequest*,
                    pb::ListModelsResponse* resp) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) return ToGrpc(principal.status());
    FillModel(resp->add_models());
    return Status::OK;
  }

  Status GetModel(ServerContext* ctx, const pb::GetModelRequest* req,
                  pb::ModelInfo* resp) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) return ToGrpc(principal.status());
    if (!req->model().empty() && req->model() != engine_->model_info().name) {
      return Status(grpc::StatusCode::NOT_FOUND,
                    absl::StrCat("unknown model '", engine::ShowValue(req->model()), "'"));
    }
    FillModel(resp);
    return Status::OK;
  }

 private:
  absl::StatusOr<std::string> Principal(ServerContext* ctx) const {
    const auto& md = ctx->client_metadata();
    auto it = md.find("authorization");
    std::string value;
    if (it != md.end()) value.assign(it->second.data(), it->second.size());
    return auth_->Authenticate(it == md.end() ? nullptr : &value);
  }

  // Snapshot file names are scoped per principal like session ids (one principal can neither
  // read nor overwrite another's files): "<principal>+<name>" for a named principal.
  absl::StatusOr<std::string> SnapshotPath(const std::string& principal,
                                           const std::string& name) const {
    if (options_.snapshot_dir.empty()) {
      return absl::FailedPreconditionError("this server has no --snapshot_dir");
    }
    if (absl::Status st = engine::ValidateName(name, "file_name"); !st.ok()) return st;
    return options_.snapshot_dir + "/" + engine::StorageName(principal, name);
  }

  void FillModel(pb::ModelInfo* m) const {
    const engine::ModelInfo& i = engine_->model_info();
    m->set_name(i.name);
    m->set_variant(i.variant);
    m->set_parameters(i.parameters);
    m->set_vocab_size(i.vocab_size);
    m->set_tokenizer(i.tokenizer);
    m->set_initialization(i.initialization);
    m->set_fingerprint(i.fingerprint);
    m->set_description(i.description);
    m->set_config_json(i.config_json);
  }

  Status RunAppend(ServerContext* ctx, const std::string& principal, const std::string& id,
                   engine::Input input, pb::AppendResponse* resp) {
    auto cancel = std::make_shared<std::atomic<bool>>(false);
    std::promise<absl::StatusOr<engine::AppendResult>> done;
    auto result = done.get_future();
    engine_->Append(principal, id, std::move(input), cancel,
                    [&done](absl::StatusOr<engine::AppendResult> r) { done.set_value(r); });
    auto r = Await(ctx, cancel, result);
    if (!r.ok()) return ToGrpc(r.status());
    resp->set_tokens_consumed(r->tokens_consumed);
    resp->set_position(r->position);
    return Status::OK;
  }

  template <typename WriteFn>
  Status RunGenerate(ServerContext* ctx, const std::string& principal,
                     const pb::GenerateRequest& req, WriteFn write) {
    engine::GenerateParams p;
    switch (req.prompt_case()) {
      case pb::GenerateRequest::kPromptText:
        p.prompt.text = req.prompt_text();
        break;
      case pb::GenerateRequest::kPromptTokens:
        p.prompt.tokens.assign(req.prompt_tokens().ids().begin(), req.prompt_tokens().ids().end());
        p.prompt.has_tokens = true;
        break;
      default:
        break;
    }
    if (req.has_sampling()) p.sampling = FromProto(req.sampling());
    p.max_tokens = static_cast<int32_t>(std::min<uint32_t>(req.max_tokens(), 1u << 30));
    p.stop.assign(req.stop().begin(), req.stop().end());
    p.stop_at_eos = req.has_stop_at_eos() ? req.stop_at_eos() : true;
    auto cancel = std::make_shared<std::atomic<bool>>(false);
    auto queue = std::make_shared<GenerateEventQueue>();
    engine_->Generate(
        principal, req.session_id(), std::move(p), cancel,
        [queue](const engine::GenerateEvent& e) { queue->Push(e); },
        [queue](absl::Status s) { queue->Finish(std::move(s)); });
    engine::GenerateEvent event;
    bool client_gone = false;
    // Events queued while the last write was under way leave as one message.
    while (queue->Next(&event, std::chrono::milliseconds(20), [ctx, &cancel] {
      if (ctx->IsCancelled()) cancel->store(true);
    })) {
      if (client_gone) continue;  // drain until the engine stops
      pb::GenerateResponse out;
      ToProto(event, &out);
      if (!write(out)) {
        client_gone = true;
        cancel->store(true);
      }
    }
    return ToGrpc(queue->status());
  }

  Engine* engine_;
  const Authenticator* auth_;
  ServiceOptions options_;
  InflightBudget inflight_;
};

}  // namespace

std::unique_ptr<grpc::Service> MakeTitansService(engine::Engine* engine, const Authenticator* auth,
                                                 ServiceOptions options) {
  return std::make_unique<TitansService>(engine, auth, options);
}

}  // namespace titans::server
