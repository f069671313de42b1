// The storage layer over FaultInjectionEnv, without the engine (storage_tests links no LibTorch):
// atomic file replacement under every fault, the write-ahead log cut at every byte of a commit that
// a crash interrupted, and the session directory keeping its previous checkpoint.
#include "server/engine/env.h"

#include <gtest/gtest.h>

#include <filesystem>

#include "server/engine/directory_store.h"
#include "server/engine/wal.h"
#include "tests/server/engine/fault_injection_env.h"

namespace titans::testing {
namespace {

using engine::Env;

class StorageEnvTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = (std::filesystem::temp_directory_path() /
            ("titans_storage_env_" + std::to_string(::getpid())))
               .string();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::vector<std::string> Names(const std::string& dir) {
    auto names = Env::Default()->ListDir(dir);
    EXPECT_TRUE(names.ok()) << names.status();
    std::sort(names->begin(), names->end());
    return *names;
  }

  std::string dir_;
  FaultInjectionEnv env_;
};

TEST_F(StorageEnvTest, AtomicWriteKeepsTheOldFileThroughEveryFault) {
  const std::string path = dir_ + "/record";
  ASSERT_TRUE(env_.WriteFileAtomic(path, "old contents").ok());
  env_.SetFreeBytes(4);  // a short write: 4 of the new bytes fit
  absl::Status full = env_.WriteFileAtomic(path, "new contents");
  EXPECT_EQ(full.code(), absl::StatusCode::kResourceExhausted) << full;
  env_.ClearFaults();
  env_.FailSyncs(true);
  EXPECT_EQ(env_.WriteFileAtomic(path, "new contents").code(), absl::StatusCode::kInternal);
  env_.ClearFaults();
  env_.FailRenames(true);
  EXPECT_EQ(env_.WriteFileAtomic(path, "new contents").code(), absl::StatusCode::kInternal);
  env_.ClearFaults();
  env_.FailCreates(true);
  EXPECT_EQ(env_.WriteFileAtomic(path, "new contents").code(), absl::StatusCode::kInternal);
  env_.ClearFaults();
  EXPECT_EQ(*Env::Default()->ReadFile(path), "old contents");
  EXPECT_EQ(Names(dir_), std::vector<std::string>{"record"});  // no temporary file left behind
  ASSERT_TRUE(env_.WriteFileAtomic(path, "new contents").ok());
  EXPECT_EQ(*Env::Default()->ReadFile(path), "new contents");
}

engine::WalRecord Record(int i) {
  engine::WalRecord r;
  r.session_id = "s" + std::to_string(i % 3);
  r.position_before = 10 * i;
  r.tokens = {i, i + 1, i + 2};
  r.pieces = {3};
  return r;
}

// A crash while a commit is being synced, at every byte of it: recovery reads exactly the
// committed records, plus the in-flight ones only where they reached the disk whole.
TEST_F(StorageEnvTest, CrashDuringALogCommitAtEveryByte) {
  const std::string log = dir_ + "/wal";
  auto wal = engine::Wal::Open(log, &env_);
  ASSERT_TRUE(wal.ok()) << wal.status();
  for (int i = 0; i < 3; ++i) ASSERT_TRUE((*wal)->Append(Record(i)).ok());
  ASSERT_TRUE((*wal)->Sync().ok());
  const int64_t commit_bytes = static_cast<int64_t>(engine::EncodeWalRecord(Record(3)).size() +
                                                    engine::EncodeWalRecord(Record(4)).size());
  const int64_t first_bytes = static_cast<int64_t>(engine::EncodeWalRecord(Record(3)).size());
  for (int64_t torn = 0; torn <= commit_bytes; ++torn) {
    const std::string image = dir_ + "/image" + std::to_string(torn);
    env_.CrashAtNextSync(log, image, torn);
    ASSERT_TRUE((*wal)->Append(Record(3)).ok());
    ASSERT_TRUE((*wal)->Append(Record(4)).ok());
    EXPECT_FALSE((*wal)->Sync().ok());  // the crash: never acknowledged
    std::vector<std::string> warnings;
    const std::vector<engine::WalRecord> got = engine::Wal::ReadAll(image, &warnings);
    const size_t whole = torn >= commit_bytes ? 5 : (torn >= first_bytes ? 4 : 3);
    ASSERT_EQ(got.size(), whole) << "torn=" << torn;
    for (size_t i = 0; i < whole; ++i) EXPECT_EQ(got[i].tokens, Record(i).tokens);
    // A cut inside a record is reported; a cut between records is not.
    const bool mid_record = torn != 0 && torn != first_bytes && torn != commit_bytes;
    EXPECT_EQ(warnings.empty(), !mid_record) << "torn=" << torn;
    std::filesystem::remove_all(image);
  }
  // The live log was cut back after every failed commit: it holds the committed records only.
  std::vector<std::string> warnings;
  EXPECT_EQ(engine::Wal::ReadAll(log, &warnings).size(), 3u);
  EXPECT_TRUE(warnings.empty());
}

TEST_F(StorageEnvTest, DirectoryStoreKeepsThePreviousCheckpointWhenARenameFails) {
  engine::DirectoryStore store(dir_ + "/sessions", &env_);
  ASSERT_TRUE(store.Init().ok());
  engine::SessionRecord record;
  record.id = "s";
  record.position = 5;
  ASSERT_TRUE(store.Write(record, "state at 5").ok());
  env_.FailRenames(true);
  record.position = 9;
  EXPECT_FALSE(store.Write(record, "state at 9").ok());
  env_.ClearFaults();
  auto read = store.ReadRecord("s");
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->position, 5);
  EXPECT_EQ(*store.ReadState("s"), "state at 5");
  std::vector<std::string> errors;
  EXPECT_EQ(store.List(&errors).size(), 1u);
  EXPECT_TRUE(errors.empty());
}

}  // namespace
}  // namespace titans::testing
