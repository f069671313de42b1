// RedisStore against a real redis-server: records and states, fencing between two replicas'
// stores, the per-session log, rewind data, removal, expiry, and a store that cannot connect.
#include "server/engine/redis_store.h"

#include <gtest/gtest.h>

#include "tests/server/redis_fixture.h"
#include "tests/server/server_fixture.h"

namespace titans::testing {
namespace {

using engine::RedisStore;
using engine::SessionRecord;
using engine::SessionStore;
using engine::WalRecord;

class RedisStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = TempDir("titans_redis_store");
    redis_ = std::make_unique<RedisServer>(dir_);
    ASSERT_NE(redis_->port(), 0) << "redis-server did not start (scripts/setup.sh installs it)";
    a_ = Open();
    b_ = Open();
  }
  void TearDown() override {
    redis_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::unique_ptr<SessionStore> Open() {
    auto store = engine::OpenSessionStore(redis_->spec("t"));
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }
  static SessionRecord Record(const std::string& id, int64_t position) {
    SessionRecord r;
    r.id = id;
    r.principal = "alice";
    r.labels = {{"k", "v"}};
    r.idle_ttl_seconds = 3600;
    r.position = position;
    return r;
  }
  static WalRecord Log(const std::string& id, int64_t before, std::vector<int32_t> tokens) {
    WalRecord r;
    r.session_id = id;
    r.position_before = before;
    r.pieces = {static_cast<int32_t>(tokens.size())};
    r.tokens = std::move(tokens);
    return r;
  }

  std::string dir_;
  std::unique_ptr<RedisServer> redis_;
  std::unique_ptr<SessionStore> a_, b_;
};

TEST_F(RedisStoreTest, CreateReadListAndRemove) {
  EXPECT_TRUE(a_->shared());
  const std::string state(3000, '\xab');  // binary-safe
  ASSERT_TRUE(a_->Create(Record("s1", 0), state).ok());
  EXPECT_EQ(a_->Create(Record("s1", 0), state).code(), absl::StatusCode::kAlreadyExists);
  ASSERT_TRUE(a_->Create(Record("s2", 0), "x").ok());
  auto read = b_->ReadState("s1");
  ASSERT_TRUE(read.ok());
  EXPECT_EQ(*read, state);
  auto rec = b_->ReadRecord("s1");
  ASSERT_TRUE(rec.ok());
  EXPECT_EQ(rec->principal, "alice");
  EXPECT_EQ(rec->labels.at("k"), "v");
  std::vector<std::string> errors;
  EXPECT_EQ(b_->List(&errors).size(), 2u);
  EXPECT_TRUE(errors.empty());
  b_->Remove("s1");
  EXPECT_EQ(a_->ReadState("s1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(a_->Acquire("s1").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(a_->List(nullptr).size(), 1u);
}

TEST_F(RedisStoreTest, AcquireFencesOffThePreviousHolder) {
  ASSERT_TRUE(a_->Create(Record("s", 0), "v0").ok());
  ASSERT_TRUE(a_->Write(Record("s", 5), "v1").ok());
  auto taken = b_->Acquire("s");
  ASSERT_TRUE(taken.ok());
  EXPECT_TRUE(*taken);  // a migration: A held it
  // A lost the session: none of its writes may land any more.
  EXPECT_EQ(a_->Write(Record("s", 9), "stale").code(), absl::StatusCode::kAborted);
  EXPECT_EQ(a_->AppendLog({Log("s", 5, {1, 2})})[0].code(), absl::StatusCode::kAborted);
  EXPECT_EQ(a_->WriteRewindPoint("s", 5, "p").code(), absl::StatusCode::kAborted);
  EXPECT_EQ(*b_->ReadState("s"), "v1");
  ASSERT_TRUE(b_->Write(Record("s", 7), "v2").ok());
  // B loading it again is no migration; A taking it back is, and fences B off.
  EXPECT_FALSE(*b_->Acquire("s"));
  ASSERT_TRUE(*a_->Acquire("s"));
  EXPECT_EQ(b_->Write(Record("s", 8), "stale").code(), absl::StatusCode::kAborted);
  EXPECT_EQ(*a_->ReadState("s"), "v2");
  // A session that was never acquired by this store cannot be written either.
  auto c = Open();
  EXPECT_EQ(c->Write(Record("s", 1), "x").code(), absl::StatusCode::kAborted);
}

TEST_F(RedisStoreTest, LogIsPerSessionAndClearedByACheckpoint) {
  ASSERT_TRUE(a_->Create(Record("s", 0), "v0").ok());
  ASSERT_TRUE(a_->Create(Record("t", 0), "v0").ok());
  std::vector<absl::Status> st =
      a_->AppendLog({Log("s", 0, {1, 2, 3}), Log("t", 0, {9}), Log("s", 3, {4})});
  for (const absl::Status& s : st) EXPECT_TRUE(s.ok()) << s;
  auto log = b_->ReadLog("s");
  ASSERT_TRUE(log.ok());
  ASSERT_EQ(log->size(), 2u);
  EXPECT_EQ((*log)[0].tokens, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ((*log)[1].position_before, 3);
  ASSERT_TRUE(a_->Write(Record("s", 4), "v4").ok());
  EXPECT_TRUE(b_->ReadLog("s")->empty());
  EXPECT_EQ(b_->ReadLog("t")->size(), 1u);
  // One fenced-off session fails alone; the others in the same commit land.
  ASSERT_TRUE(b_->Acquire("t").ok());
  st = a_->AppendLog({Log("s", 4, {5}), Log("t", 1, {6})});
  EXPECT_TRUE(st[0].ok());
  EXPECT_EQ(st[1].code(), absl::StatusCode::kAborted);
}

TEST_F(RedisStoreTest, RewindDataAndRemovalOfEverything) {
  ASSERT_TRUE(a_->Create(Record("s", 0), "v0").ok());
  ASSERT_TRUE(a_->WriteRewindPoint("s", 0, "p0").ok());
  ASSERT_TRUE(a_->WriteRewindPoint("s", 16, "p16").ok());
  ASSERT_TRUE(a_->WriteRewindTokens("s", {0, {7, 8, 9}}).ok());
  EXPECT_EQ(b_->ListRewindPoints("s"), (std::vector<int64_t>{0, 16}));
  EXPECT_EQ(*b_->ReadRewindPoint("s", 16), "p16");
  EXPECT_EQ(b_->ReadRewindTokens("s")->tokens, (std::vector<int32_t>{7, 8, 9}));
  ASSERT_TRUE(a_->Create(Record("f", 0), "v0").ok());
  ASSERT_TRUE(a_->CopyRewindPoint("s", "f", 16).ok());
  EXPECT_EQ(*b_->ReadRewindPoint("f", 16), "p16");
  a_->RemoveRewindPoint("s", 0);
  EXPECT_EQ(b_->ListRewindPoints("s"), (std::vector<int64_t>{16}));
  a_->Remove("s");
  EXPECT_TRUE(b_->ListRewindPoints("s").empty());
  EXPECT_EQ(b_->ReadRewindPoint("s", 16).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(b_->ReadRewindTokens("s").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(*b_->ReadRewindPoint("f", 16), "p16");  // the fork's copy stays
}

TEST_F(RedisStoreTest, IdleSessionsExpireInRedis) {
  SessionRecord r = Record("s", 0);
  r.idle_ttl_seconds = 1;
  ASSERT_TRUE(a_->Create(r, "v").ok());
  ASSERT_TRUE(a_->ReadState("s").ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_EQ(a_->ReadState("s").status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(a_->List(nullptr).empty());
}

TEST(RedisStoreSpec, MalformedSpecsAndUnreachableServers) {
  for (const char* bad : {"redis://", "redis://:6379", "redis://host:0", "redis://host:x",
                          "redis://host:70000", "redis://host:1/"}) {
    EXPECT_EQ(RedisStore::Open(bad).status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  auto store = engine::OpenSessionStore("redis://127.0.0.1:1/x");  // nothing listens on port 1
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(store.status().message().find("127.0.0.1:1"), std::string::npos);
}

}  // namespace
}  // namespace titans::testing
