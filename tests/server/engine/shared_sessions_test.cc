// Two replicas (engines with their gRPC services) sharing sessions through one Redis: a session
// created on one is served by the other, which takes it over; the first one's stale copy is
// dropped and the session re-acquired (with the other's logged operations replayed) when a
// request comes back; rewinds and closing on one are seen by the other.
#include <cmath>
#include <thread>

#include "tests/server/redis_fixture.h"
#include "tests/server/server_fixture.h"

namespace titans::testing {
namespace {

using grpc::StatusCode;

struct Replica {
  std::unique_ptr<engine::Engine> engine;
  std::unique_ptr<grpc::Service> service;
  std::unique_ptr<grpc::Server> server;
  std::unique_ptr<pb::Titans::Stub> stub;

  ~Replica() {
    if (server) server->Shutdown(std::chrono::system_clock::now());
    if (engine) engine->Shutdown(0);
  }
};

class SharedSessionsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = TempDir("titans_shared");
    redis_ = std::make_unique<RedisServer>(root_);
    ASSERT_NE(redis_->port(), 0) << "redis-server did not start (scripts/setup.sh installs it)";
    auto model = MakeModel(TinyConfig(Variant::kMAC), 11);
    ASSERT_TRUE(model->Save(root_ + "/model").ok());
    auto auth = server::Authenticator::Load("", nullptr);
    ASSERT_TRUE(auth.ok());
    auth_ = std::make_unique<server::Authenticator>(*auth);
    a_ = StartReplica();
    b_ = StartReplica();
  }
  void TearDown() override {
    a_.reset();
    b_.reset();
    redis_.reset();
    std::filesystem::remove_all(root_);
  }

  std::unique_ptr<Replica> StartReplica(int64_t max_sessions = 10000) {
    engine::EngineOptions options;
    options.max_sessions = max_sessions;
    options.model_dir = root_ + "/model";
    options.session_store = redis_->spec();
    options.durability = engine::Durability::kSync;
    options.rewind_interval_tokens = 16;
    options.ownership_check_seconds = 0.05;
    auto r = std::make_unique<Replica>();
    auto engine = engine::Engine::Create(options);
    EXPECT_TRUE(engine.ok()) << engine.status();
    if (!engine.ok()) return r;
    r->engine = std::move(*engine);
    r->service = server::MakeTitansService(r->engine.get(), auth_.get(), {});
    grpc::ServerBuilder builder;
    int port = 0;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(r->service.get());
    r->server = builder.BuildAndStart();
    r->stub = pb::Titans::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port),
                                                      grpc::InsecureChannelCredentials()));
    return r;
  }

  static std::unique_ptr<grpc::ClientContext> Ctx() {
    auto ctx = std::make_unique<grpc::ClientContext>();
    ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
    return ctx;
  }
  static grpc::Status Append(Replica& r, const std::string& id, const std::string& text) {
    pb::AppendRequest req;
    req.set_session_id(id);
    req.set_text(text);
    pb::AppendResponse resp;
    return r.stub->Append(Ctx().get(), req, &resp);
  }
  static absl::StatusOr<pb::Session> Get(Replica& r, const std::string& id) {
    pb::GetSessionRequest req;
    req.set_session_id(id);
    pb::Session s;
    grpc::Status st = r.stub->GetSession(Ctx().get(), req, &s);
    if (!st.ok())
      return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
    return s;
  }
  static std::vector<float> Probe(Replica& r, const std::string& id) {
    pb::ScoreRequest req;
    req.set_session_id(id);
    for (int t : {119, 104, 97, 116, 63}) req.mutable_tokens()->add_ids(t);
    pb::ScoreResponse resp;
    EXPECT_TRUE(r.stub->Score(Ctx().get(), req, &resp).ok());
    return {resp.logprobs().begin(), resp.logprobs().end()};
  }
  static double Distance(const std::vector<float>& x, const std::vector<float>& y) {
    double worst = x.size() == y.size() ? 0 : 1e9;
    for (size_t i = 0; i < std::min(x.size(), y.size()); ++i) {
      worst = std::max(worst, std::abs(static_cast<double>(x[i]) - y[i]));
    }
    return worst;
  }

  std::string root_;
  std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<server::Authenticator> auth_;
  std::unique_ptr<Replica> a_, b_;
};

TEST_F(SharedSessionsTest, SessionsMoveBetweenReplicasWithNothingAcknowledgedLost) {
  pb::CreateSessionRequest create;
  create.set_session_id("s");
  pb::Session created;
  ASSERT_TRUE(a_->stub->CreateSession(Ctx().get(), create, &created).ok());
  EXPECT_EQ(b_->stub->CreateSession(Ctx().get(), create, &created).error_code(),
            StatusCode::ALREADY_EXISTS);
  ASSERT_TRUE(Append(*a_, "s", "first, on replica A. ").ok());

  // B finds the session A created and takes it over.
  auto on_b = Get(*b_, "s");
  ASSERT_TRUE(on_b.ok()) << on_b.status();
  EXPECT_EQ(on_b->position(), 21u);
  ASSERT_TRUE(Append(*b_, "s", "then on replica B. ").ok());

  // A's copy is stale: before its next step A sees that B holds the session, takes it back and
  // replays B's logged append (a write that still raced past that check would be fenced off by
  // the store and answered UNAVAILABLE, see RedisStoreTest.AcquireFencesOffThePreviousHolder).
  ASSERT_TRUE(Append(*a_, "s", "back on A.").ok());
  EXPECT_EQ(Get(*a_, "s")->position(), 21u + 19u + 10u);

  // The state equals one fed the acknowledged appends in one place.
  ASSERT_TRUE(b_->stub
                  ->CreateSession(
                      Ctx().get(),
                      [] {
                        pb::CreateSessionRequest r;
                        r.set_session_id("ref");
                        return r;
                      }(),
                      &created)
                  .ok());
  ASSERT_TRUE(Append(*b_, "ref", "first, on replica A. then on replica B. back on A.").ok());
  EXPECT_LT(Distance(Probe(*a_, "s"), Probe(*b_, "ref")), 1e-4);
  // And B sees A's latest state when it serves the session again.
  EXPECT_LT(Distance(Probe(*b_, "s"), Probe(*b_, "ref")), 1e-4);

  // Rewind on A, continue on B.
  pb::RewindSessionRequest rewind;
  rewind.set_session_id("s");
  rewind.set_position(21);
  pb::Session rewound;
  ASSERT_TRUE(a_->stub->RewindSession(Ctx().get(), rewind, &rewound).ok());
  ASSERT_TRUE(Append(*b_, "s", "then on replica B. ").ok());
  ASSERT_TRUE(b_->stub
                  ->CreateSession(
                      Ctx().get(),
                      [] {
                        pb::CreateSessionRequest r;
                        r.set_session_id("ref2");
                        return r;
                      }(),
                      &created)
                  .ok());
  ASSERT_TRUE(Append(*b_, "ref2", "first, on replica A. then on replica B. ").ok());
  EXPECT_LT(Distance(Probe(*b_, "s"), Probe(*b_, "ref2")), 1e-4);

  // Listing on either replica shows every session; closing on one is final on both.
  pb::ListSessionsRequest list;
  pb::ListSessionsResponse listed;
  ASSERT_TRUE(a_->stub->ListSessions(Ctx().get(), list, &listed).ok());
  EXPECT_EQ(listed.sessions_size(), 3);
  pb::CloseSessionRequest close;
  close.set_session_id("s");
  pb::CloseSessionResponse closed;
  ASSERT_TRUE(b_->stub->CloseSession(Ctx().get(), close, &closed).ok());
  EXPECT_EQ(Append(*a_, "s", "too late").error_code(), StatusCode::NOT_FOUND);
  EXPECT_EQ(Get(*a_, "s").status().code(), absl::StatusCode::kNotFound);
}

// Each session is counted by exactly one replica, the one holding it: a replica that another
// takes sessions from drops its copies (memory and gauges) without a request for them, and a
// restarted replica counts none of the stored sessions until it acquires them.
TEST_F(SharedSessionsTest, EachSessionIsCountedByTheReplicaHoldingItOnly) {
  const std::vector<std::string> ids = {"s0", "s1", "s2", "s3", "s4", "s5"};
  for (const std::string& id : ids) {
    pb::CreateSessionRequest create;
    create.set_session_id(id);
    pb::Session created;
    ASSERT_TRUE(a_->stub->CreateSession(Ctx().get(), create, &created).ok());
    ASSERT_TRUE(Append(*a_, id, "hello " + id).ok());
  }
  EXPECT_EQ(a_->engine->stats().sessions, 6);
  EXPECT_EQ(b_->engine->stats().sessions, 0);
  // B serves four of them (it acquires them); A learns of it by itself.
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Append(*b_, ids[i], " more").ok());
  auto counts_become = [](Replica& r, int64_t sessions, int64_t resident) {
    // Polls (A checks ownership every 50 ms); the deadline only bounds a failing test.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    engine::Engine::Stats st;
    do {
      st = r.engine->stats();
      if (st.sessions == sessions && st.resident == resident) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    } while (std::chrono::steady_clock::now() < deadline);
    ADD_FAILURE() << "sessions " << st.sessions << " (resident " << st.resident << "), expected "
                  << sessions << " (" << resident << ")";
    return false;
  };
  EXPECT_TRUE(counts_become(*b_, 4, 4));
  EXPECT_TRUE(counts_become(*a_, 2, 2));
  // Looking at B's sessions from A (get, list) does not make them A's.
  ASSERT_TRUE(Get(*a_, ids[0]).ok());
  pb::ListSessionsRequest list;
  pb::ListSessionsResponse listed;
  ASSERT_TRUE(a_->stub->ListSessions(Ctx().get(), list, &listed).ok());
  EXPECT_EQ(listed.sessions_size(), 6);
  EXPECT_EQ(a_->engine->stats().sessions, 2);
  // A restarts: it holds nothing until a request brings a session to it.
  a_.reset();
  a_ = StartReplica();
  ASSERT_TRUE(a_->engine);
  ASSERT_TRUE(a_->stub->ListSessions(Ctx().get(), list, &listed).ok());
  EXPECT_EQ(listed.sessions_size(), 6);
  EXPECT_EQ(a_->engine->stats().sessions, 0);
  ASSERT_TRUE(Append(*a_, ids[4], "!").ok());
  ASSERT_TRUE(Append(*a_, ids[5], "!").ok());
  EXPECT_TRUE(counts_become(*a_, 2, 2));
  EXPECT_TRUE(counts_become(*b_, 4, 4));
  // B goes away; its sessions fail over to A, which then counts all six.
  b_.reset();
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(Append(*a_, ids[i], "?").ok());
  EXPECT_TRUE(counts_become(*a_, 6, 6));
  for (int i = 0; i < 6; ++i) {
    EXPECT_EQ(Get(*a_, ids[i])->position(), 8u + (i < 4 ? 5u + 1u : 1u)) << ids[i];
  }
}

// --max_sessions bounds the sessions a replica holds, not the ones it knows of in the store.
TEST_F(SharedSessionsTest, SessionLimitCountsOnlyHeldSessions) {
  b_.reset();
  b_ = StartReplica(/*max_sessions=*/1);
  ASSERT_TRUE(b_->engine);
  pb::Session created;
  for (const char* id : {"a1", "a2"}) {
    pb::CreateSessionRequest create;
    create.set_session_id(id);
    ASSERT_TRUE(a_->stub->CreateSession(Ctx().get(), create, &created).ok());
  }
  pb::ListSessionsRequest list;
  pb::ListSessionsResponse listed;
  ASSERT_TRUE(b_->stub->ListSessions(Ctx().get(), list, &listed).ok());
  EXPECT_EQ(listed.sessions_size(), 2);  // B knows both, holds neither
  pb::CreateSessionRequest create;
  create.set_session_id("b1");
  EXPECT_TRUE(b_->stub->CreateSession(Ctx().get(), create, &created).ok());
  create.set_session_id("b2");
  EXPECT_EQ(b_->stub->CreateSession(Ctx().get(), create, &created).error_code(),
            StatusCode::RESOURCE_EXHAUSTED);
}

}  // namespace
}  // namespace titans::testing
