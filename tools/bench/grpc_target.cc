// LoadTarget over gRPC: the generated titans.v1 stubs on one shared channel.
#include <grpcpp/grpcpp.h>

#include <chrono>

#include "titans/v1/titans.grpc.pb.h"
#include "tools/bench/load_target.h"

namespace titans::bench {
namespace {

namespace pb = ::titans::v1;

absl::Status FromGrpc(const grpc::Status& st) {
  if (st.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
}

class GrpcTarget : public LoadTarget {
 public:
  GrpcTarget(const std::string& address, double deadline_seconds)
      : deadline_seconds_(deadline_seconds) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(64 << 20);
    args.SetMaxSendMessageSize(64 << 20);
    channel_ = grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args);
    stub_ = pb::Titans::NewStub(channel_);
  }
  std::string name() const override { return "grpc"; }

  absl::Status CreateSession(const std::string& id) override {
    pb::CreateSessionRequest req;
    req.set_session_id(id);
    pb::Session resp;
    auto ctx = Context();
    return FromGrpc(stub_->CreateSession(ctx.get(), req, &resp));
  }

  absl::StatusOr<int64_t> Append(const std::string& id, const std::string& text) override {
    pb::AppendRequest req;
    req.set_session_id(id);
    req.set_text(text);
    pb::AppendResponse resp;
    auto ctx = Context();
    grpc::Status st = stub_->Append(ctx.get(), req, &resp);
    if (!st.ok()) return FromGrpc(st);
    return static_cast<int64_t>(resp.tokens_consumed());
  }

  absl::StatusOr<int64_t> Generate(
      const std::string& id, const std::string& prompt, int max_tokens,
      const std::function<void(int64_t, const std::string&)>& on_tokens) override {
    pb::GenerateRequest req;
    req.set_session_id(id);
    if (!prompt.empty()) req.set_prompt_text(prompt);
    req.set_max_tokens(max_tokens);
    req.mutable_sampling()->set_temperature(0);
    req.set_stop_at_eos(false);
    auto ctx = Context();
    auto reader = stub_->Generate(ctx.get(), req);
    pb::GenerateResponse msg;
    int64_t generated = 0;
    while (reader->Read(&msg)) {
      generated += msg.token_ids_size();
      if (msg.token_ids_size() > 0 && on_tokens) on_tokens(msg.token_ids_size(), msg.text());
    }
    grpc::Status st = reader->Finish();
    if (!st.ok()) return FromGrpc(st);
    return generated;
  }

  absl::StatusOr<std::pair<int64_t, int64_t>> StateBytesAndPosition(
      const std::string& id) override {
    pb::GetSessionRequest req;
    req.set_session_id(id);
    pb::Session s;
    auto ctx = Context();
    grpc::Status st = stub_->GetSession(ctx.get(), req, &s);
    if (!st.ok()) return FromGrpc(st);
    return std::make_pair(static_cast<int64_t>(s.state_bytes()),
                          static_cast<int64_t>(s.position()));
  }

  absl::Status CloseSession(const std::string& id) override {
    pb::CloseSessionRequest req;
    req.set_session_id(id);
    pb::CloseSessionResponse resp;
    auto ctx = Context();
    return FromGrpc(stub_->CloseSession(ctx.get(), req, &resp));
  }

 private:
  std::unique_ptr<grpc::ClientContext> Context() const {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() +
                      std::chrono::milliseconds(static_cast<int64_t>(deadline_seconds_ * 1000)));
    return ctx;
  }

  double deadline_seconds_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::Titans::Stub> stub_;
};

}  // namespace

std::unique_ptr<LoadTarget> MakeGrpcTarget(const std::string& address, double deadline_seconds) {
  return std::make_unique<GrpcTarget>(address, deadline_seconds);
}

}  // namespace titans::bench
