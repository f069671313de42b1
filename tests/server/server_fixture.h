// A real titans.v1 server on loopback (in-process engine + gRPC server on an ephemeral port)
// driven through the generated C++ stubs, with a tiny random model saved to a temp directory.
#ifndef TITANS_TESTS_SERVER_SERVER_FIXTURE_H_
#define TITANS_TESTS_SERVER_SERVER_FIXTURE_H_

#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <memory>
#include <string>

#include "server/auth.h"
#include "server/engine/engine.h"
#include "server/metrics.h"
#include "server/rpc_observer.h"
#include "server/service.h"
#include "tests/model/model_test_util.h"
#include "titans/v1/titans.grpc.pb.h"

namespace titans::testing {

namespace pb = ::titans::v1;

inline std::string TempDir(const std::string& name) {
  const std::string dir = (std::filesystem::temp_directory_path() /
                           (name + "_" + std::to_string(::getpid()) + "_" +
                            std::to_string(reinterpret_cast<uintptr_t>(&name) % 100000)))
                              .string();
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir);
  return dir;
}

class ServerTest : public ::testing::Test {
 protected:
  // Tests adjust options_ / auth_env_ before calling Start().
  void SetUp() override {
    root_ = TempDir(std::string("titans_server_") +
                    ::testing::UnitTest::GetInstance()->current_test_info()->name());
    model_dir_ = root_ + "/model";
    auto model = MakeModel(TinyConfig(Variant::kMAG), 7);
    ASSERT_TRUE(model->Save(model_dir_).ok());
    options_.model_dir = model_dir_;
    options_.step_token_budget = 64;
  }

  void Start() {
    auto auth = server::Authenticator::Load("", auth_env_.empty() ? nullptr : auth_env_.c_str());
    ASSERT_TRUE(auth.ok()) << auth.status();
    auth_ = std::make_unique<server::Authenticator>(*auth);
    auto engine = engine::Engine::Create(options_);
    ASSERT_TRUE(engine.ok()) << engine.status();
    engine_ = std::move(*engine);
    service_ = server::MakeTitansService(engine_.get(), auth_.get(), service_options_);
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(service_.get());
    if (with_rpc_observer_) {  // metrics and one log line per RPC, as titans-server has
      metrics_ = std::make_unique<server::ServerMetrics>();
      std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> obs;
      obs.push_back(server::MakeRpcObserverFactory(metrics_.get(), auth_.get()));
      builder.experimental().SetInterceptorCreators(std::move(obs));
    }
    server_ = builder.BuildAndStart();
    ASSERT_NE(port, 0);
    port_ = port;
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::InsecureChannelCredentials());
    stub_ = pb::Titans::NewStub(channel_);
  }

  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
    if (engine_) engine_->Shutdown(0);
    server_.reset();
    engine_.reset();
    std::filesystem::remove_all(root_);
  }

  std::unique_ptr<grpc::ClientContext> Ctx(const std::string& token = "") {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!token.empty()) ctx->AddMetadata("authorization", "Bearer " + token);
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return ctx;
  }

  pb::Session Create(const std::string& id = "", const std::string& token = "") {
    pb::CreateSessionRequest req;
    req.set_session_id(id);
    pb::Session s;
    grpc::Status st = stub_->CreateSession(Ctx(token).get(), req, &s);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return s;
  }

  grpc::Status AppendText(const std::string& id, const std::string& text,
                          pb::AppendResponse* out = nullptr, const std::string& token = "") {
    pb::AppendRequest req;
    req.set_session_id(id);
    req.set_text(text);
    pb::AppendResponse resp;
    grpc::Status st = stub_->Append(Ctx(token).get(), req, &resp);
    if (out) *out = resp;
    return st;
  }

  // Generates greedily, after `prompt` if one is given; returns the concatenated text (and the
  // last message in *last).
  std::string GenerateText(const std::string& id, int max_tokens, grpc::Status* status,
                           pb::GenerateResponse* last = nullptr, const std::string& token = "",
                           const std::string& prompt = "") {
    pb::GenerateRequest req;
    req.set_session_id(id);
    if (!prompt.empty()) req.set_prompt_text(prompt);
    req.set_max_tokens(max_tokens);
    req.mutable_sampling()->set_temperature(0);
    req.set_stop_at_eos(false);
    auto ctx = Ctx(token);
    auto reader = stub_->Generate(ctx.get(), req);
    pb::GenerateResponse msg;
    std::string text;
    while (reader->Read(&msg)) {
      text += msg.text();
      if (last) *last = msg;
    }
    *status = reader->Finish();
    return text;
  }

  // Starts a generation of up to `max_tokens` that does not stop at end-of-sequence, under `ctx`;
  // the caller reads (or not) and finishes it.
  std::unique_ptr<grpc::ClientReader<pb::GenerateResponse>> StartGeneration(
      const std::string& id, int max_tokens, grpc::ClientContext* ctx) {
    pb::GenerateRequest req;
    req.set_session_id(id);
    req.set_max_tokens(max_tokens);
    req.set_stop_at_eos(false);
    return stub_->Generate(ctx, req);
  }

  int64_t Position(const std::string& id, const std::string& token = "") {
    pb::GetSessionRequest req;
    req.set_session_id(id);
    pb::Session s;
    grpc::Status st = stub_->GetSession(Ctx(token).get(), req, &s);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return static_cast<int64_t>(s.position());
  }

  std::string root_, model_dir_, auth_env_;
  bool with_rpc_observer_ = false;
  int port_ = 0;  // the server's, once started
  std::unique_ptr<server::ServerMetrics> metrics_;
  engine::EngineOptions options_;
  server::ServiceOptions service_options_;
  std::unique_ptr<server::Authenticator> auth_;
  std::unique_ptr<engine::Engine> engine_;
  std::unique_ptr<grpc::Service> service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<pb::Titans::Stub> stub_;
};

}  // namespace titans::testing

#endif  // TITANS_TESTS_SERVER_SERVER_FIXTURE_H_
