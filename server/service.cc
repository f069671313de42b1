#include "server/service.h"

#include <map>
#include <memory>
#include <utility>

#include "absl/strings/str_cat.h"
#include "model/file_util.h"
#include "model/version.h"
#include "proto/request_traits.h"
#include "server/blocking_pool.h"
#include "server/proto_convert.h"
#include "server/stream_reactors.h"
#include "titans/v1/titans.grpc.pb.h"

namespace titans::server {
namespace {

namespace pb = ::titans::v1;
using engine::Engine;
using grpc::CallbackServerContext;
using grpc::ServerUnaryReactor;
using grpc::Status;

// Every handler returns at once: quick answers finish inline, engine operations finish from the
// engine's completion callback, and the engine's synchronous calls (which may read or write the
// session store) and snapshot files run on the blocking pool.
class TitansService final : public pb::Titans::CallbackService {
 public:
  TitansService(Engine* engine, const Authenticator* auth, ServiceOptions options)
      : engine_(engine),
        auth_(auth),
        options_(std::move(options)),
        inflight_(options_.max_inflight_request_bytes, options_.inflight_request_bytes),
        blocking_(options_.blocking_threads),
        reactors_{engine, &inflight_, options_.max_stream_bytes} {}

  ServerUnaryReactor* CreateSession(CallbackServerContext* ctx, const pb::CreateSessionRequest* req,
                                    pb::Session* resp) override {
    return Unary(ctx, *req, [=](const std::string& principal, ServerUnaryReactor* reactor) {
      if (!req->model().empty() && req->model() != engine_->model_info().name) {
        return reactor->Finish(
            Status(grpc::StatusCode::NOT_FOUND,
                   absl::StrCat("unknown model '", engine::ShowValue(req->model()),
                                "'; this server hosts '", engine_->model_info().name, "'")));
      }
      engine::CreateParams p = CreateParamsOf(principal, *req);
      if (req->has_sampling()) {
        p.sampling = engine::ApplySamplingOverrides(SamplingParams{}, FromProto(req->sampling()));
      }
      blocking_.Run([this, p = std::move(p), resp, reactor] {
        FinishWithSession(engine_->CreateSession(p), resp, reactor);
      });
    });
  }

  ServerUnaryReactor* GetSession(CallbackServerContext* ctx, const pb::GetSessionRequest* req,
                                 pb::Session* resp) override {
    return Unary(ctx, *req, [=](const std::string& principal, ServerUnaryReactor* reactor) {
      blocking_.Run([this, principal, id = req->session_id(), resp, reactor] {
        FinishWithSession(engine_->GetSession(principal, id), resp, reactor);
      });
    });
  }

  ServerUnaryReactor* ListSessions(CallbackServerContext* ctx, const pb::ListSessionsRequest* req,
                                   pb::ListSessionsResponse* resp) override {
    return Unary(ctx, *req, [=](const std::string& principal, ServerUnaryReactor* reactor) {
      if (req->page_size() > 1000) {
        return reactor->Finish(
            Status(grpc::StatusCode::INVALID_ARGUMENT, "page_size must be at most 1000"));
      }
      blocking_.Run([this, principal, req, resp, reactor] {
        const int limit = req->page_size() == 0 ? 100 : static_cast<int>(req->page_size());
        std::map<std::string, std::string> filter(req->label_filter().begin(),
                                                  req->label_filter().end());
        bool more = false;
        auto sessions = engine_->ListSessions(principal, filter, req->page_token(), limit, &more);
        for (const auto& s : sessions) ToProto(s, resp->add_sessions());
        if (more && !sessions.empty()) resp->set_next_page_token(sessions.back().id);
        reactor->Finish(Status::OK);
      });
    });
  }

  ServerUnaryReactor* CloseSession(CallbackServerContext* ctx, const pb::CloseSessionRequest* req,
                                   pb::CloseSessionResponse*) override {
    return Unary(ctx, *req, [=](const std::string& principal, ServerUnaryReactor* reactor) {
      engine_->CloseSession(principal, req->session_id(),
                            [reactor](absl::Status s) { reactor->Finish(ToGrpc(s)); });
    });
  }

  ServerUnaryReactor* ForkSession(CallbackServerContext* ctx, const pb::ForkSessionRequest* req,
                                  pb::Session* resp) override {
    return Unary(ctx, *req, [=](const std::string& principal, ServerUnaryReactor* reactor) {
      if (req->has_position() && req->position() > uint64_t{INT64_MAX}) {
        return reactor->Finish(
            Status(grpc::StatusCode::OUT_OF_RANGE, "position is beyond the session's position"));
      }
      const int64_t position = req->has_position() ? static_cast<int64_t>(req->position()) : -1;
      engine_->ForkSession(principal, req->session_id(), req->new_session_id(), position,
                           [resp, reactor](absl::StatusOr<engine::SessionInfo> info) {
                             FinishWithSession(info, resp, reactor);
                           });
    });
  }

  ServerUnaryReactor* RewindSession(CallbackServerContext* ctx, const pb::RewindSessionRequest* req,
                                    pb::Session* resp) override {
    return Unary(ctx, *req, [=](const std::string& principal, ServerUnaryReactor* reactor) {
      if (req->position() > uint64_t{INT64_MAX}) {
        return reactor->Finish(
            Status(grpc::StatusCode::OUT_OF_RANGE, "position is beyond the session's position"));
      }
      engine_->Rewind(principal, req->session_id(), static_cast<int64_t>(req->position()),
                      [resp, reactor](absl::StatusOr<engine::SessionInfo> info) {
                        FinishWithSession(info, resp, reactor);
                      });
    });
  }

  ServerUnaryReactor* Append(CallbackServerContext* ctx, const pb::AppendRequest* req,
                             pb::AppendResponse* resp) override {
    if (Status bad = titans::proto::RequestError(*req); !bad.ok()) return Refused(ctx, bad);
    auto principal = Principal(ctx);
    if (!principal.ok()) return Refused(ctx, ToGrpc(principal.status()));
    auto input = InputOf(*req);
    if (!input.ok()) return Refused(ctx, ToGrpc(input.status()));
    return StartAppend(reactors_, *principal, req->session_id(), std::move(*input), resp);
  }

  grpc::ServerReadReactor<pb::AppendRequest>* AppendStream(CallbackServerContext* ctx,
                                                           pb::AppendResponse* resp) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) {
      return new RefusedCall<grpc::ServerReadReactor<pb::AppendRequest>>(
          ToGrpc(principal.status()));
    }
    return StartAppendStream(ctx, reactors_, *principal, resp);
  }

  grpc::ServerWriteReactor<pb::GenerateResponse>* Generate(
      CallbackServerContext* ctx, const pb::GenerateRequest* req) override {
    using Refusal = RefusedCall<grpc::ServerWriteReactor<pb::GenerateResponse>>;
    if (Status bad = titans::proto::RequestError(*req); !bad.ok()) return new Refusal(bad);
    auto principal = Principal(ctx);
    if (!principal.ok()) return new Refusal(ToGrpc(principal.status()));
    return StartGenerate(reactors_, *principal, *req);
  }

  grpc::ServerBidiReactor<pb::StreamRequest, pb::StreamResponse>* Stream(
      CallbackServerContext* ctx) override {
    auto principal = Principal(ctx);
    if (!principal.ok()) {
      return new RefusedCall<grpc::ServerBidiReactor<pb::StreamRequest, pb::StreamResponse>>(
          ToGrpc(principal.status()));
    }
    return StartStream(reactors_, *principal);
  }

  ServerUnaryReactor* Score(CallbackServerContext* ctx, const pb::ScoreRequest* req,
                            pb::ScoreResponse* resp) override {
    return Unary(ctx, *req, [=](const std::string& principal, ServerUnaryReactor* reactor) {
      engine_->Score(principal, req->session_id(),
                     std::vector<int32_t>(req->tokens().ids().begin(), req->tokens().ids().end()),
                     req->commit(), [resp, reactor](absl::StatusOr<engine::ScoreResult> r) {
                       if (r.ok()) {
                         for (float lp : r->logprobs) resp->add_logprobs(lp);
                         resp->set_position(r->position);
                       }
                       reactor->Finish(ToGrpc(r.status()));
                     });
    });
  }

  ServerUnaryReactor* ExportSession(CallbackServerContext* ctx, const pb::ExportSessionRequest* req,
                                    pb::ExportSessionResponse* resp) override {
    return Unary(ctx, *req, [=](const std::string& principal, ServerUnaryReactor* reactor) {
      engine_->Export(principal, req->session_id(), [=](absl::StatusOr<std::string> blob) {
        if (!blob.ok()) return reactor->Finish(ToGrpc(blob.status()));
        // Off the engine thread: the file write, and the copy into the answer.
        auto held = std::make_shared<std::string>(std::move(*blob));
        blocking_.Run([=] { FinishExport(principal, *req, held.get(), resp, reactor); });
      });
    });
  }

  ServerUnaryReactor* ImportSession(CallbackServerContext* ctx, const pb::ImportSessionRequest* req,
                                    pb::Session* resp) override {
    return Unary(ctx, *req, [=](const std::string& principal, ServerUnaryReactor* reactor) {
      blocking_.Run([this, principal, req, resp, reactor] {
        engine::CreateParams p = CreateParamsOf(principal, *req);
        if (req->file_name().empty()) {
          return FinishWithSession(engine_->Import(p, req->snapshot()), resp, reactor);
        }
        auto path = SnapshotPath(principal, req->file_name());
        if (!path.ok()) return reactor->Finish(ToGrpc(path.status()));
        auto blob = ReadFileToString(*path);
        if (!blob.ok()) return reactor->Finish(ToGrpc(blob.status()));
        FinishWithSession(engine_->Import(p, *blob), resp, reactor);
      });
    });
  }

  ServerUnaryReactor* ListModels(CallbackServerContext* ctx, const pb::ListModelsRequest* req,
                                 pb::ListModelsResponse* resp) override {
    return Unary(ctx, *req, [=](const std::string&, ServerUnaryReactor* reactor) {
      FillModel(resp->add_models());
      reactor->Finish(Status::OK);
    });
  }

  ServerUnaryReactor* GetModel(CallbackServerContext* ctx, const pb::GetModelRequest* req,
                               pb::ModelInfo* resp) override {
    return Unary(ctx, *req, [=](const std::string&, ServerUnaryReactor* reactor) {
      if (!req->model().empty() && req->model() != engine_->model_info().name) {
        return reactor->Finish(
            Status(grpc::StatusCode::NOT_FOUND,
                   absl::StrCat("unknown model '", engine::ShowValue(req->model()), "'")));
      }
      FillModel(resp);
      reactor->Finish(Status::OK);
    });
  }

 private:
  // The steps every unary call shares: the request parsed, the caller authenticated; then
  // `body(principal, reactor)` runs and must finish the reactor, now or later.
  template <typename Request, typename Body>
  ServerUnaryReactor* Unary(CallbackServerContext* ctx, const Request& req, Body body) {
    if (Status bad = titans::proto::RequestError(req); !bad.ok()) return Refused(ctx, bad);
    auto principal = Principal(ctx);
    if (!principal.ok()) return Refused(ctx, ToGrpc(principal.status()));
    ServerUnaryReactor* reactor = ctx->DefaultReactor();
    body(*principal, reactor);
    return reactor;
  }

  static ServerUnaryReactor* Refused(CallbackServerContext* ctx, const Status& status) {
    ServerUnaryReactor* reactor = ctx->DefaultReactor();
    reactor->Finish(status);
    return reactor;
  }

  static void FinishWithSession(const absl::StatusOr<engine::SessionInfo>& info, pb::Session* resp,
                                ServerUnaryReactor* reactor) {
    if (info.ok()) ToProto(*info, resp);
    reactor->Finish(ToGrpc(info.status()));
  }

  template <typename Request>
  static engine::CreateParams CreateParamsOf(const std::string& principal, const Request& req) {
    engine::CreateParams p;
    p.principal = principal;
    p.id = req.session_id();
    p.idle_ttl_seconds = static_cast<int64_t>(req.idle_ttl_seconds());
    p.labels.insert(req.labels().begin(), req.labels().end());
    return p;
  }

  // On the blocking pool: the snapshot into its file or into the answer, and the position.
  void FinishExport(const std::string& principal, const pb::ExportSessionRequest& req,
                    std::string* blob, pb::ExportSessionResponse* resp,
                    ServerUnaryReactor* reactor) {
    if (!req.file_name().empty()) {
      auto path = SnapshotPath(principal, req.file_name());
      if (!path.ok()) return reactor->Finish(ToGrpc(path.status()));
      absl::Status st = WriteFileAtomic(*path, *blob);
      if (!st.ok()) return reactor->Finish(ToGrpc(st));
    } else {
      resp->set_snapshot(std::move(*blob));
    }
    resp->set_model_fingerprint(engine_->model_info().fingerprint);
    auto info = engine_->GetSession(principal, req.session_id());
    if (info.ok()) resp->set_position(info->position);
    reactor->Finish(Status::OK);
  }

  absl::StatusOr<std::string> Principal(CallbackServerContext* ctx) const {
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
    m->set_server_version(ProjectVersion());
  }

  Engine* engine_;
  const Authenticator* auth_;
  const ServiceOptions options_;
  InflightBudget inflight_;
  BlockingPool blocking_;
  const ReactorContext reactors_;
};

}  // namespace

std::unique_ptr<grpc::Service> MakeTitansService(engine::Engine* engine, const Authenticator* auth,
                                                 ServiceOptions options) {
  return std::make_unique<TitansService>(engine, auth, std::move(options));
}

}  // namespace titans::server
