// A full disk under --durability=sync: every operation that cannot be made durable fails with
// RESOURCE_EXHAUSTED and leaves its session exactly as it was; once space returns the server goes
// on, and a crash image holds exactly the acknowledged operations. The full disk is a
// FaultInjectionEnv (writes under the state directory fail with ENOSPC): no root, no mounts.
#include <cmath>

#include "model/determinism.h"
#include "tests/server/engine/fault_injection_env.h"
#include "tests/server/server_fixture.h"

namespace titans::testing {
namespace {

using grpc::StatusCode;

class DiskFullTest : public ServerTest {
 protected:
  void SetUp() override {
    ServerTest::SetUp();
    options_.state_dir = root_ + "/state";
    options_.durability = engine::Durability::kSync;
    options_.checkpoint_interval_tokens = 1 << 30;
    options_.env = &env_;
    env_.SetPathFilter(options_.state_dir);
  }

  // The state directory's disk is full until Free().
  void Fill() { env_.SetFreeBytes(0); }
  void Free() { env_.SetFreeBytes(std::nullopt); }

  std::vector<float> Probe(const std::string& id) {
    pb::ScoreRequest req;
    req.set_session_id(id);
    for (int t : {116, 104, 101, 32, 101, 110, 100}) req.mutable_tokens()->add_ids(t);
    pb::ScoreResponse resp;
    EXPECT_TRUE(stub_->Score(Ctx().get(), req, &resp).ok());
    return {resp.logprobs().begin(), resp.logprobs().end()};
  }

  FaultInjectionEnv env_;
};

TEST_F(DiskFullTest, FailedWritesLeaveSessionsConsistent) {
  Start();
  Create("s");
  ASSERT_TRUE(AppendText("s", "written while there was space; ").ok());
  const int64_t acknowledged = Position("s");
  const std::vector<float> before = Probe("s");

  Fill();
  grpc::Status st = AppendText("s", std::string(10000, 'z'));
  EXPECT_EQ(st.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("could not be made durable"), std::string::npos)
      << st.error_message();
  grpc::Status gen;
  GenerateText("s", 1500, &gen);
  EXPECT_EQ(gen.error_code(), StatusCode::RESOURCE_EXHAUSTED) << gen.error_message();
  pb::ScoreRequest commit;
  commit.set_session_id("s");
  commit.set_commit(true);
  for (int i = 0; i < 2000; ++i) commit.mutable_tokens()->add_ids(65 + i % 26);
  pb::ScoreResponse scored;
  EXPECT_EQ(stub_->Score(Ctx().get(), commit, &scored).error_code(),
            StatusCode::RESOURCE_EXHAUSTED);
  pb::RewindSessionRequest rewind;
  rewind.set_session_id("s");
  rewind.set_position(3);
  pb::Session info;
  EXPECT_EQ(stub_->RewindSession(Ctx().get(), rewind, &info).error_code(),
            StatusCode::RESOURCE_EXHAUSTED);
  pb::CreateSessionRequest create;
  create.set_session_id("new");
  EXPECT_EQ(stub_->CreateSession(Ctx().get(), create, &info).error_code(),
            StatusCode::RESOURCE_EXHAUSTED);
  // Nothing of the failed operations reached the session.
  EXPECT_EQ(Position("s"), acknowledged);
  EXPECT_EQ(Probe("s"), before);  // bit-identical: the state itself was restored

  Free();
  ASSERT_TRUE(AppendText("s", "and after space returned.").ok());
  const int64_t final_position = Position("s");
  // A crash image now holds exactly the acknowledged operations.
  const std::string image = root_ + "/image";
  env_.CrashImage(options_.state_dir, image, /*torn_bytes=*/0);
  const std::vector<float> live = Probe("s");
  server_->Shutdown(std::chrono::system_clock::now());
  engine_->Shutdown(0);
  server_.reset();
  engine_.reset();
  options_.state_dir = image;
  options_.env = nullptr;
  Start();
  EXPECT_EQ(Position("s"), final_position);
  const std::vector<float> recovered = Probe("s");
  ASSERT_EQ(recovered.size(), live.size());
  if (BatchInvariantCpuKernels()) {
    EXPECT_EQ(recovered, live);  // replayed alone, logged in batches: the same bits
  } else {
    for (size_t i = 0; i < live.size(); ++i) EXPECT_NEAR(recovered[i], live[i], 1e-4);
  }
  EXPECT_EQ(engine_->stats().unrecoverable_sessions, 0);
}

}  // namespace
}  // namespace titans::testing
