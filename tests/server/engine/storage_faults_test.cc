// Storage faults through the engine's Env seam (FaultInjectionEnv): torn log writes, failed
// fsyncs and renames, and wall-clock jumps. No root, no mounts, no sleeps: each test waits only
// for an event it can observe.
#include "model/determinism.h"
#include "tests/server/engine/fault_injection_env.h"
#include "tests/server/server_fixture.h"

namespace titans::testing {
namespace {

using grpc::StatusCode;

class StorageFaultTest : public ServerTest {
 protected:
  void SetUp() override {
    ServerTest::SetUp();
    options_.state_dir = root_ + "/state";
    options_.durability = engine::Durability::kSync;
    options_.checkpoint_interval_tokens = 1 << 30;
    options_.env = &env_;
  }

  // Stops the server without the clean shutdown's checkpoints, and serves `state_dir` instead.
  void RestartFrom(const std::string& state_dir) {
    server_->Shutdown(std::chrono::system_clock::now());
    server_.reset();
    engine_->Shutdown(0);
    engine_.reset();
    options_.state_dir = state_dir;
    options_.env = nullptr;
    Start();
  }

  std::vector<float> Probe(const std::string& id) {
    pb::ScoreRequest req;
    req.set_session_id(id);
    for (int t : {116, 104, 101, 32, 101, 110, 100}) req.mutable_tokens()->add_ids(t);
    pb::ScoreResponse resp;
    EXPECT_TRUE(stub_->Score(Ctx().get(), req, &resp).ok());
    return {resp.logprobs().begin(), resp.logprobs().end()};
  }

  grpc::Status Rewind(const std::string& id, int64_t position) {
    pb::RewindSessionRequest req;
    req.set_session_id(id);
    req.set_position(position);
    pb::Session out;
    return stub_->RewindSession(Ctx().get(), req, &out);
  }

  grpc::Status CreateWithTtl(const std::string& id, int64_t ttl_seconds) {
    pb::CreateSessionRequest req;
    req.set_session_id(id);
    req.set_idle_ttl_seconds(ttl_seconds);
    pb::Session out;
    return stub_->CreateSession(Ctx().get(), req, &out);
  }

  grpc::StatusCode GetCode(const std::string& id) {
    pb::GetSessionRequest req;
    req.set_session_id(id);
    pb::Session out;
    return stub_->GetSession(Ctx().get(), req, &out).error_code();
  }

  // Polls (no sleep) until the session is gone; fails after a minute.
  void WaitUntilGone(const std::string& id) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (GetCode(id) != StatusCode::NOT_FOUND && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
    }
    EXPECT_EQ(GetCode(id), StatusCode::NOT_FOUND) << id;
  }

  FaultInjectionEnv env_;
};

// A full disk under --durability=sync: every operation that cannot be made durable fails with
// RESOURCE_EXHAUSTED and leaves its session exactly as it was; once space returns the server goes
// on, and a crash image holds exactly the acknowledged operations.
TEST_F(StorageFaultTest, FullDiskFailsEveryWriteAndLeavesSessionsConsistent) {
  env_.SetPathFilter(options_.state_dir);
  Start();
  Create("s");
  ASSERT_TRUE(AppendText("s", "written while there was space; ").ok());
  const int64_t acknowledged = Position("s");
  const std::vector<float> before = Probe("s");

  env_.SetFreeBytes(0);  // the state directory's disk is full
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

  env_.SetFreeBytes(std::nullopt);
  ASSERT_TRUE(AppendText("s", "and after space returned.").ok());
  const int64_t final_position = Position("s");
  // A crash image now holds exactly the acknowledged operations.
  const std::string image = root_ + "/image";
  env_.CrashImage(options_.state_dir, image, /*torn_bytes=*/0);
  const std::vector<float> live = Probe("s");
  RestartFrom(image);
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

// A crash in the middle of a log commit (the record written, not yet synced) keeps every
// acknowledged operation; of the one in flight, a torn record is cut and a whole one replayed.
TEST_F(StorageFaultTest, TornLogWriteKeepsEveryAcknowledgedOperation) {
  Start();
  Create("s");
  ASSERT_TRUE(AppendText("s", "acknowledged before the crash; ").ok());
  const int64_t acknowledged = Position("s");
  const std::string in_flight(300, 'z');
  struct Case {
    int64_t torn_bytes;
    int64_t recovered;
  };
  // 0: nothing of the write; 5: inside the frame header; 100: inside the payload; everything: a
  // whole record that reached the disk although its fsync never returned.
  const std::vector<Case> cases = {
      {0, acknowledged}, {5, acknowledged}, {100, acknowledged}, {1 << 30, acknowledged + 300}};
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::string image = root_ + "/image" + std::to_string(i);
    env_.SetPathFilter(".wal");
    env_.CrashAtNextSync(options_.state_dir, image, cases[i].torn_bytes);
    grpc::Status st = AppendText("s", in_flight);
    EXPECT_EQ(st.error_code(), StatusCode::UNAVAILABLE) << st.error_message();
    EXPECT_EQ(Position("s"), acknowledged);  // the live session rolled back
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    SCOPED_TRACE("torn_bytes=" + std::to_string(cases[i].torn_bytes));
    RestartFrom(root_ + "/image" + std::to_string(i));
    EXPECT_EQ(Position("s"), cases[i].recovered);
    EXPECT_EQ(engine_->stats().unrecoverable_sessions, 0);
    EXPECT_TRUE(AppendText("s", "and on").ok());
  }
}

TEST_F(StorageFaultTest, FailedFsyncFailsTheOperationAndLeavesTheSessionAsItWas) {
  Start();
  Create("s");
  ASSERT_TRUE(AppendText("s", "kept; ").ok());
  const int64_t acknowledged = Position("s");
  const std::vector<float> before = Probe("s");
  env_.SetPathFilter(".wal");
  env_.FailSyncs(true);
  grpc::Status st = AppendText("s", "never acknowledged");
  EXPECT_EQ(st.error_code(), StatusCode::UNAVAILABLE);
  EXPECT_NE(st.error_message().find("could not be made durable"), std::string::npos)
      << st.error_message();
  grpc::Status gen;
  GenerateText("s", 20, &gen);
  EXPECT_EQ(gen.error_code(), StatusCode::UNAVAILABLE) << gen.error_message();
  EXPECT_EQ(Position("s"), acknowledged);
  EXPECT_EQ(Probe("s"), before);  // bit-identical: the state itself was restored
  env_.ClearFaults();
  ASSERT_TRUE(AppendText("s", "after the disk recovered").ok());
  const int64_t final_position = Position("s");
  const std::string image = root_ + "/image";
  env_.CrashImage(options_.state_dir, image, 0);
  RestartFrom(image);
  EXPECT_EQ(Position("s"), final_position);
}

// Checkpoints are written to a temporary file and renamed into place: when the rename fails the
// operation that needed the checkpoint fails, and the previous checkpoint is still the one read.
TEST_F(StorageFaultTest, FailedRenameKeepsThePreviousCheckpoint) {
  Start();
  Create("s");
  ASSERT_TRUE(AppendText("s", "the first state of the session").ok());
  const int64_t acknowledged = Position("s");
  env_.SetPathFilter("/sessions/");
  env_.FailRenames(true);
  grpc::Status st = Rewind("s", 3);  // a rewind is checkpointed at once
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.error_message().find("could not be made durable"), std::string::npos)
      << st.error_message();
  EXPECT_EQ(Position("s"), acknowledged);
  pb::CreateSessionRequest create;
  create.set_session_id("new");
  pb::Session info;
  EXPECT_FALSE(stub_->CreateSession(Ctx().get(), create, &info).ok());
  EXPECT_EQ(GetCode("new"), StatusCode::NOT_FOUND);  // not half-created
  EXPECT_GT(env_.failed_calls(), 0);
  env_.ClearFaults();
  const std::string image = root_ + "/image";
  env_.CrashImage(options_.state_dir, image, 0);
  RestartFrom(image);
  EXPECT_EQ(Position("s"), acknowledged);
  EXPECT_EQ(GetCode("new"), StatusCode::NOT_FOUND);
  EXPECT_TRUE(Rewind("s", 3).ok());
  EXPECT_EQ(Position("s"), 3);
}

// Idle TTLs follow the wall clock: a jump backward expires nothing, a jump forward expires the
// sessions idle past their TTL and only those.
TEST_F(StorageFaultTest, ClockJumpsExpireOnlySessionsIdlePastTheirTtl) {
  options_.durability = engine::Durability::kNone;
  Start();
  constexpr int64_t kDayMs = int64_t{24} * 3600 * 1000;
  ASSERT_TRUE(CreateWithTtl("used_today", 60).ok());
  env_.JumpClock(-kDayMs);
  ASSERT_TRUE(CreateWithTtl("marker", 60).ok());  // last used a day before "used_today"
  env_.JumpClock(120 * 1000);
  // The sweep runs about once a second: once it has expired "marker" (two minutes idle), it has
  // also looked at "used_today", whose last use now lies in the future.
  WaitUntilGone("marker");
  EXPECT_EQ(GetCode("used_today"), StatusCode::OK);
  env_.JumpClock(kDayMs);  // "used_today" two minutes idle
  ASSERT_TRUE(CreateWithTtl("fresh", 60).ok());
  WaitUntilGone("used_today");
  EXPECT_EQ(GetCode("fresh"), StatusCode::OK);
  EXPECT_TRUE(AppendText("fresh", "still here").ok());
}

}  // namespace
}  // namespace titans::testing
