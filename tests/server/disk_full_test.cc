// A full disk under --durability=sync: every operation that cannot be made durable fails with
// RESOURCE_EXHAUSTED and leaves its session exactly as it was; once space returns the server goes
// on, and a crash image holds exactly the acknowledged operations. The state directory is a tiny
// tmpfs mounted for the test (needs root, as in CI; skipped where mounting is not permitted).
#include <sys/mount.h>

#include <cmath>
#include <fstream>

#include "model/determinism.h"
#include "tests/server/server_fixture.h"

namespace titans::testing {
namespace {

using grpc::StatusCode;

class DiskFullTest : public ServerTest {
 protected:
  void SetUp() override {
    ServerTest::SetUp();
    mount_point_ = root_ + "/small_disk";
    std::filesystem::create_directories(mount_point_);
    if (::mount("tmpfs", mount_point_.c_str(), "tmpfs", 0, "size=8m") != 0) {
      GTEST_SKIP() << "cannot mount a tmpfs here (not root?): " << std::strerror(errno);
    }
    mounted_ = true;
    options_.state_dir = mount_point_ + "/state";
    options_.durability = engine::Durability::kSync;
    options_.checkpoint_interval_tokens = 1 << 30;
  }

  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now());
    if (engine_) engine_->Shutdown(0);
    server_.reset();
    engine_.reset();
    if (mounted_) ::umount2(mount_point_.c_str(), MNT_DETACH);
    ServerTest::TearDown();
  }

  // Fills the file system: writes `filler` until the disk is full. (The log's last page may still
  // have room for a few bytes, so the operations below carry more than a page of tokens.)
  void Fill() {
    std::ofstream out(mount_point_ + "/filler", std::ios::binary);
    const std::string block(4096, 'x');
    while (out.write(block.data(), block.size()) && out.flush()) {
    }
  }
  void Free() { std::filesystem::remove(mount_point_ + "/filler"); }

  std::vector<float> Probe(const std::string& id) {
    pb::ScoreRequest req;
    req.set_session_id(id);
    for (int t : {116, 104, 101, 32, 101, 110, 100}) req.mutable_tokens()->add_ids(t);
    pb::ScoreResponse resp;
    EXPECT_TRUE(stub_->Score(Ctx().get(), req, &resp).ok());
    return {resp.logprobs().begin(), resp.logprobs().end()};
  }

  std::string mount_point_;
  bool mounted_ = false;
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
  std::filesystem::copy(options_.state_dir, image, std::filesystem::copy_options::recursive);
  const std::vector<float> live = Probe("s");
  server_->Shutdown(std::chrono::system_clock::now());
  engine_->Shutdown(0);
  server_.reset();
  engine_.reset();
  options_.state_dir = image;
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
