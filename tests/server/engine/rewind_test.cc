// RewindSession and ForkSession at a position, end to end: the state reached equals the state the
// session had there (up to float rounding: the replay consumes tokens in other pieces), the
// history window and its errors, and durability (spill, restart, a crash image in sync mode).
#include <algorithm>
#include <cmath>
#include <filesystem>

#include "tests/server/server_fixture.h"

namespace titans::testing {
namespace {

using grpc::StatusCode;

const std::string kT1 = "In the beginning the memory was empty and then it l";  // 51 bytes
const std::string kT2 = "earned a few words about the river and the hills,";
const std::string kT3 =
    " then a long story about ships that crossed the sea at night, carrying "
    "salt and letters and one stubborn cat.";

class RewindTest : public ServerTest {
 protected:
  void SetUp() override {
    ServerTest::SetUp();
    options_.rewind_window_tokens = 4096;
    options_.rewind_interval_tokens = 16;
  }

  grpc::Status Rewind(const std::string& id, int64_t position, pb::Session* out = nullptr) {
    pb::RewindSessionRequest req;
    req.set_session_id(id);
    req.set_position(static_cast<uint64_t>(position));
    pb::Session s;
    grpc::Status st = stub_->RewindSession(Ctx().get(), req, &s);
    if (out) *out = s;
    return st;
  }

  grpc::Status ForkAt(const std::string& id, const std::string& new_id, int64_t position) {
    pb::ForkSessionRequest req;
    req.set_session_id(id);
    req.set_new_session_id(new_id);
    if (position >= 0) req.set_position(static_cast<uint64_t>(position));
    pb::Session s;
    return stub_->ForkSession(Ctx().get(), req, &s);
  }

  std::vector<float> ScoreProbe(const std::string& id) {
    pb::ScoreRequest req;
    req.set_session_id(id);
    for (char c : std::string("what does the memory hold?")) {
      req.mutable_tokens()->add_ids(static_cast<unsigned char>(c));
    }
    pb::ScoreResponse resp;
    grpc::Status st = stub_->Score(Ctx().get(), req, &resp);
    EXPECT_TRUE(st.ok()) << st.error_message();
    return {resp.logprobs().begin(), resp.logprobs().end()};
  }

  // Largest |difference| of the probe's log-probabilities in two sessions.
  double Distance(const std::string& a, const std::string& b) {
    std::vector<float> x = ScoreProbe(a), y = ScoreProbe(b);
    EXPECT_EQ(x.size(), y.size());
    double worst = 0;
    for (size_t i = 0; i < std::min(x.size(), y.size()); ++i) {
      worst = std::max(worst, std::abs(static_cast<double>(x[i]) - y[i]));
    }
    return worst;
  }

  // A session fed `text` from scratch (the reference for a state at a position).
  void Reference(const std::string& id, const std::string& text) {
    Create(id);
    ASSERT_TRUE(AppendText(id, text).ok());
  }

  void Restart() {
    server_->Shutdown(std::chrono::system_clock::now());
    engine_->Shutdown(1000);
    server_.reset();
    engine_.reset();
    Start();
  }
};

constexpr double kTolerance = 1e-4;

TEST_F(RewindTest, RewindReachesTheStateAtAnyPositionAndContinuesFromIt) {
  Start();
  Create("s");
  ASSERT_TRUE(AppendText("s", kT1).ok());
  ASSERT_TRUE(AppendText("s", kT2).ok());
  ASSERT_TRUE(AppendText("s", kT3).ok());
  const int64_t end = static_cast<int64_t>(kT1.size() + kT2.size() + kT3.size());
  ASSERT_EQ(Position("s"), end);
  Reference("at_t1", kT1);
  Reference("mid_t2", kT1 + kT2.substr(0, 20));
  Reference("at_3", kT1.substr(0, 3));

  // Fork at past positions: the source is unchanged.
  ASSERT_TRUE(ForkAt("s", "f_mid", static_cast<int64_t>(kT1.size()) + 20).ok());
  ASSERT_TRUE(ForkAt("s", "f_3", 3).ok());
  EXPECT_EQ(Position("s"), end);
  EXPECT_EQ(Position("f_mid"), static_cast<int64_t>(kT1.size()) + 20);
  EXPECT_LT(Distance("f_mid", "mid_t2"), kTolerance);
  EXPECT_LT(Distance("f_3", "at_3"), kTolerance);

  pb::Session after;
  ASSERT_TRUE(Rewind("s", static_cast<int64_t>(kT1.size()), &after).ok());
  EXPECT_EQ(after.position(), kT1.size());
  EXPECT_EQ(Position("s"), static_cast<int64_t>(kT1.size()));
  EXPECT_LT(Distance("s", "at_t1"), kTolerance);
  // Far from equal before the rewind point: the check can fail.
  EXPECT_GT(Distance("f_mid", "at_t1"), 10 * kTolerance);

  // The rewound session continues like one that never saw the abandoned tokens.
  ASSERT_TRUE(AppendText("s", kT3).ok());
  ASSERT_TRUE(AppendText("at_t1", kT3).ok());
  EXPECT_LT(Distance("s", "at_t1"), kTolerance);
  // And its history now is the new timeline: rewinding into it replays the new tokens.
  ASSERT_TRUE(Rewind("s", static_cast<int64_t>(kT1.size() + 10)).ok());
  Reference("new_timeline", kT1 + kT3.substr(0, 10));
  EXPECT_LT(Distance("s", "new_timeline"), kTolerance);
  // Rewinding to the current position changes nothing.
  ASSERT_TRUE(Rewind("s", Position("s")).ok());
  EXPECT_LT(Distance("s", "new_timeline"), kTolerance);
}

TEST_F(RewindTest, RangeWindowAndPreciseErrors) {
  options_.rewind_window_tokens = 40;
  options_.rewind_interval_tokens = 8;
  Start();
  Create("s");
  for (int i = 0; i < 20; ++i) ASSERT_TRUE(AppendText("s", "0123456789").ok());  // 200 tokens
  pb::GetSessionRequest get;
  get.set_session_id("s");
  pb::Session info;
  ASSERT_TRUE(stub_->GetSession(Ctx().get(), get, &info).ok());
  // Points every 8 tokens (inside appends too); the floor is the newest point at or before 160.
  EXPECT_EQ(info.rewind_floor(), 160u);

  grpc::Status st = Rewind("s", 201);
  EXPECT_EQ(st.error_code(), StatusCode::OUT_OF_RANGE);
  EXPECT_NE(st.error_message().find("beyond the session's position 200"), std::string::npos);
  st = Rewind("s", 159);
  EXPECT_EQ(st.error_code(), StatusCode::OUT_OF_RANGE);
  EXPECT_NE(st.error_message().find("oldest rewind point (160)"), std::string::npos)
      << st.error_message();
  EXPECT_EQ(ForkAt("s", "f", 5).error_code(), StatusCode::OUT_OF_RANGE);
  EXPECT_EQ(Rewind("nope", 0).error_code(), StatusCode::NOT_FOUND);
  pb::RewindSessionRequest huge;
  huge.set_session_id("s");
  huge.set_position(~uint64_t{0});
  EXPECT_EQ(stub_->RewindSession(Ctx().get(), huge, &info).error_code(), StatusCode::OUT_OF_RANGE);
  EXPECT_EQ(Position("s"), 200);  // failures leave the session as it was

  pb::Session rewound;
  ASSERT_TRUE(Rewind("s", 160, &rewound).ok());
  EXPECT_EQ(rewound.position(), 160u);
  EXPECT_EQ(rewound.rewind_floor(), 160u);
}

// One append far longer than the window still leaves rewind points every interval inside it:
// the floor is within window + interval of the end (not at the append's start), and a rewind
// just before the end reaches the right state (it replays at most the interval).
TEST_F(RewindTest, LongAppendsKeepTheWindowAndTheReplayBound) {
  options_.rewind_window_tokens = 512;
  options_.rewind_interval_tokens = 128;
  Start();
  std::string text;
  uint32_t x = 12345;
  for (int i = 0; i < 30000; ++i) {
    x = x * 1103515245u + 12345u;
    text += static_cast<char>('a' + (x >> 16) % 26);
    if (i % 7 == 6) text += ' ';
  }
  text.resize(30000);
  Create("s");
  ASSERT_TRUE(AppendText("s", text).ok());
  pb::GetSessionRequest get;
  get.set_session_id("s");
  pb::Session info;
  ASSERT_TRUE(stub_->GetSession(Ctx().get(), get, &info).ok());
  EXPECT_EQ(info.position(), 30000u);
  EXPECT_GE(info.rewind_floor(), 30000u - 512 - 128) << "the window is kept inside the append";
  EXPECT_LE(info.rewind_floor(), 30000u - 512);
  EXPECT_EQ(info.rewind_floor() % 128, 0u) << "points fall every interval";
  EXPECT_EQ(Rewind("s", static_cast<int64_t>(info.rewind_floor()) - 1).error_code(),
            StatusCode::OUT_OF_RANGE);
  ASSERT_TRUE(Rewind("s", 30000 - 10).ok());
  Reference("ref", text.substr(0, 30000 - 10));
  EXPECT_LT(Distance("s", "ref"), kTolerance);
}

TEST_F(RewindTest, DisabledRewindIsFailedPrecondition) {
  options_.rewind_window_tokens = 0;
  Start();
  Create("s");
  ASSERT_TRUE(AppendText("s", kT1).ok());
  EXPECT_EQ(Rewind("s", 3).error_code(), StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(ForkAt("s", "f", 3).error_code(), StatusCode::FAILED_PRECONDITION);
  EXPECT_TRUE(ForkAt("s", "f", -1).ok());  // a fork of the current state needs no history
  EXPECT_TRUE(Rewind("s", static_cast<int64_t>(kT1.size())).ok());
}

TEST_F(RewindTest, HistorySurvivesSpillingAndRestarts) {
  options_.state_dir = root_ + "/state";
  options_.max_resident_sessions = 1;
  Start();
  Create("s");
  ASSERT_TRUE(AppendText("s", kT1).ok());
  ASSERT_TRUE(AppendText("s", kT2).ok());
  Reference("at_t1", kT1);  // "s" spills
  pb::GetSessionRequest get;
  get.set_session_id("s");
  pb::Session info;
  ASSERT_TRUE(stub_->GetSession(Ctx().get(), get, &info).ok());
  EXPECT_TRUE(info.spilled());
  const std::string points = root_ + "/state/sessions/s.rewind";
  ASSERT_TRUE(std::filesystem::exists(points + "/tokens"));
  ASSERT_TRUE(Rewind("s", static_cast<int64_t>(kT1.size())).ok());
  EXPECT_LT(Distance("s", "at_t1"), kTolerance);

  ASSERT_TRUE(AppendText("s", kT3).ok());
  Restart();
  ASSERT_TRUE(Rewind("s", static_cast<int64_t>(kT1.size())).ok());
  EXPECT_LT(Distance("s", "at_t1"), kTolerance);
  // A fork gets its own copies of the stored points: closing the source does not hurt it.
  ASSERT_TRUE(AppendText("s", kT3).ok());
  ASSERT_TRUE(ForkAt("s", "f", -1).ok());
  pb::CloseSessionRequest close;
  close.set_session_id("s");
  pb::CloseSessionResponse closed;
  ASSERT_TRUE(stub_->CloseSession(Ctx().get(), close, &closed).ok());
  EXPECT_FALSE(std::filesystem::exists(points));
  ASSERT_TRUE(Rewind("f", static_cast<int64_t>(kT1.size())).ok());
  EXPECT_LT(Distance("f", "at_t1"), kTolerance);
}

// The rewind tokens are written before the checkpoint they pair with. A crash (or, with shared
// sessions, another replica taking the session over) between the two writes leaves tokens that
// reach past the stored checkpoint: the history is what they hold up to the checkpoint. Tokens of
// another timeline (written after a rewind) are never used: the history restarts at the
// checkpoint and the state is the checkpoint's. The "crash" is a copy of an earlier checkpoint
// under later rewind data.
TEST_F(RewindTest, HistoryOutlivesACheckpointCutShort) {
  namespace fs = std::filesystem;
  options_.state_dir = root_ + "/state";
  options_.max_resident_sessions = 1;
  Start();
  const std::string sessions = root_ + "/state/sessions";
  Create("s");
  ASSERT_TRUE(AppendText("s", kT1).ok());
  Reference("at_20", kT1.substr(0, 20));  // "s" spills: its checkpoint at kT1
  const std::string early = root_ + "/early";
  fs::create_directories(early);
  for (const char* file : {"s.state", "s.json"})
    fs::copy_file(sessions + "/" + file, early + "/" + file);

  ASSERT_TRUE(AppendText("s", kT2).ok());
  Reference("at_t1", kT1);  // "s" spills again: tokens and checkpoint at kT1 + kT2
  auto crash_image = [&](const std::string& image) {
    Restart();  // a clean stop, then the image: the later rewind data under the early checkpoint
    fs::remove_all(image);
    fs::copy(options_.state_dir, image, fs::copy_options::recursive);
    for (const char* file : {"s.state", "s.json"}) {
      fs::copy_file(early + "/" + file, image + "/sessions/" + file,
                    fs::copy_options::overwrite_existing);
    }
  };
  const std::string live = options_.state_dir;
  crash_image(root_ + "/image1");
  options_.state_dir = root_ + "/image1";
  Restart();
  EXPECT_EQ(Position("s"), static_cast<int64_t>(kT1.size()));
  EXPECT_LT(Distance("s", "at_t1"), kTolerance);
  ASSERT_TRUE(Rewind("s", 20).ok());  // the history before the checkpoint is there
  EXPECT_LT(Distance("s", "at_20"), kTolerance);

  // Another timeline: after a rewind the stored tokens belong to a new epoch.
  options_.state_dir = live;
  Restart();
  ASSERT_TRUE(Rewind("s", 10).ok());
  ASSERT_TRUE(AppendText("s", kT3).ok());
  crash_image(root_ + "/image2");
  options_.state_dir = root_ + "/image2";
  Restart();
  EXPECT_EQ(Position("s"), static_cast<int64_t>(kT1.size()));
  EXPECT_LT(Distance("s", "at_t1"), kTolerance);
  EXPECT_EQ(Rewind("s", 20).error_code(), StatusCode::OUT_OF_RANGE);  // history restarts here
  ASSERT_TRUE(AppendText("s", kT2).ok());
  ASSERT_TRUE(Rewind("s", static_cast<int64_t>(kT1.size())).ok());
  EXPECT_LT(Distance("s", "at_t1"), kTolerance);
}

// The window drops old points from the store as it goes, before the next tokens are written: a
// history whose oldest point is gone starts at the oldest point still stored, not from scratch.
TEST_F(RewindTest, HistoryStartsAtTheOldestStoredPoint) {
  options_.state_dir = root_ + "/state";
  options_.max_resident_sessions = 1;
  Start();
  Create("s");
  ASSERT_TRUE(AppendText("s", kT1).ok());
  Reference("at_20", kT1.substr(0, 20));  // "s" spills: points at 0, 16, 32, 48 and its tokens
  Restart();
  const std::string oldest = root_ + "/state/sessions/s.rewind/00000000000000000000.state";
  ASSERT_TRUE(std::filesystem::remove(oldest));
  Restart();
  EXPECT_EQ(Rewind("s", 10).error_code(), StatusCode::OUT_OF_RANGE);  // before point 16
  ASSERT_TRUE(Rewind("s", 20).ok());
  EXPECT_LT(Distance("s", "at_20"), kTolerance);
}

// A rewind in sync mode is durable, and the log records of the abandoned tokens are never
// replayed onto the rewound session. The crash is a copy of the state directory taken while the
// server runs (everything acknowledged is on disk; nothing else is flushed by a graceful stop).
TEST_F(RewindTest, SyncRewindSurvivesACrash) {
  options_.state_dir = root_ + "/state";
  options_.durability = engine::Durability::kSync;
  options_.checkpoint_interval_tokens = 1 << 30;  // only the log and the rewind checkpoint
  Start();
  Create("s");
  ASSERT_TRUE(AppendText("s", kT1).ok());
  ASSERT_TRUE(AppendText("s", kT2).ok());
  ASSERT_TRUE(Rewind("s", static_cast<int64_t>(kT1.size())).ok());
  ASSERT_TRUE(AppendText("s", kT3).ok());
  Reference("ref", kT1 + kT3);
  const std::string image = root_ + "/crash_image";
  std::filesystem::copy(options_.state_dir, image, std::filesystem::copy_options::recursive);
  options_.state_dir = image;
  Restart();
  EXPECT_EQ(Position("s"), static_cast<int64_t>(kT1.size() + kT3.size()));
  EXPECT_LT(Distance("s", "ref"), kTolerance);
  EXPECT_EQ(engine_->stats().unrecoverable_sessions, 0);
  // The history was rebuilt from the checkpoint's tokens plus the replayed log.
  ASSERT_TRUE(Rewind("s", static_cast<int64_t>(kT1.size()) + 5).ok());
  Reference("ref5", kT1 + kT3.substr(0, 5));
  EXPECT_LT(Distance("s", "ref5"), kTolerance);
}

}  // namespace
}  // namespace titans::testing
