// The write-ahead log: records round-trip, a torn tail is cut at the last whole record, damage is
// detected by checksum, and dropping old segments keeps only the new one.
#include "server/engine/wal.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "model/file_util.h"

namespace titans::engine {
namespace {

namespace fs = std::filesystem;

WalRecord Record(const std::string& id, int64_t position, int n, bool rng) {
  WalRecord r;
  r.session_id = id;
  r.position_before = position;
  for (int i = 0; i < n; ++i) r.tokens.push_back(i * 7 % 260);
  r.pieces = {n};
  r.has_rng = rng;
  r.rng = {1, 2, 3, 4};
  return r;
}

class WalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/wal_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    fs::remove_all(dir_);
  }
  // Writes three synced 4-token records of session "s" to a fresh log; *path: its one segment.
  void WriteThreeRecords(std::string* path) {
    {
      auto wal = Wal::Open(dir_);
      ASSERT_TRUE(wal.ok());
      for (int i = 0; i < 3; ++i) ASSERT_TRUE((*wal)->Append(Record("s", i * 4, 4, false)).ok());
      ASSERT_TRUE((*wal)->Sync().ok());
    }
    for (const auto& e : fs::directory_iterator(dir_)) *path = e.path().string();
  }
  std::string dir_;
};

TEST_F(WalTest, RecordsSurviveAndReadInOrder) {
  {
    auto wal = Wal::Open(dir_);
    ASSERT_TRUE(wal.ok()) << wal.status();
    ASSERT_TRUE((*wal)->Append(Record("a", 0, 5, false)).ok());
    ASSERT_TRUE((*wal)->Append(Record("b", 10, 3, true)).ok());
    ASSERT_TRUE((*wal)->Sync().ok());
    ASSERT_TRUE((*wal)->Append(Record("a", 5, 2, false)).ok());
    ASSERT_TRUE((*wal)->Sync().ok());
    ASSERT_TRUE((*wal)->Append(Record("lost", 0, 9, false)).ok());  // never synced
  }
  {
    auto wal = Wal::Open(dir_);  // a second run appends a new segment
    ASSERT_TRUE(wal.ok());
    ASSERT_TRUE((*wal)->Append(Record("c", 1, 1, false)).ok());
    ASSERT_TRUE((*wal)->Sync().ok());
  }
  std::vector<std::string> warnings;
  std::vector<WalRecord> all = Wal::ReadAll(dir_, &warnings);
  EXPECT_TRUE(warnings.empty());
  ASSERT_EQ(all.size(), 4u);
  EXPECT_EQ(all[0].session_id, "a");
  EXPECT_EQ(all[1].session_id, "b");
  EXPECT_TRUE(all[1].has_rng);
  EXPECT_EQ(all[1].rng[3], 4u);
  EXPECT_EQ(all[2].position_before, 5);
  EXPECT_EQ(all[3].session_id, "c");
  EXPECT_EQ(all[0].tokens, Record("a", 0, 5, false).tokens);
}

TEST_F(WalTest, TornTailIsCutAtEveryByte) {
  std::string path;
  ASSERT_NO_FATAL_FAILURE(WriteThreeRecords(&path));
  const std::string segment = *ReadFileToString(path);
  const size_t one = EncodeWalRecord(Record("s", 0, 4, false)).size();
  for (size_t cut = 0; cut <= segment.size(); ++cut) {
    ASSERT_TRUE(WriteFileAtomic(path, segment.substr(0, cut)).ok());
    std::vector<std::string> warnings;
    std::vector<WalRecord> got = Wal::ReadAll(dir_, &warnings);
    EXPECT_EQ(got.size(), std::min<size_t>(cut / one, 3)) << "cut at " << cut;
    EXPECT_EQ(warnings.empty(), cut == segment.size() || cut % one == 0) << "cut at " << cut;
  }
}

TEST_F(WalTest, DamagedRecordStopsTheSegment) {
  std::string path;
  ASSERT_NO_FATAL_FAILURE(WriteThreeRecords(&path));
  std::string data = *ReadFileToString(path);
  const size_t one = data.size() / 3;
  data[one + 12] ^= 0x01;  // inside the second record's payload
  ASSERT_TRUE(WriteFileAtomic(path, data).ok());
  std::vector<std::string> warnings;
  std::vector<WalRecord> got = Wal::ReadAll(dir_, &warnings);
  EXPECT_EQ(got.size(), 1u);
  ASSERT_EQ(warnings.size(), 1u);
  EXPECT_NE(warnings[0].find("checksum"), std::string::npos);
}

TEST_F(WalTest, MalformedPayloadsAreRejected) {
  std::string framed = EncodeWalRecord(Record("s", 0, 4, true));
  std::string payload = framed.substr(8);
  ASSERT_TRUE(DecodeWalPayload(payload).ok());
  for (size_t cut = 0; cut < payload.size(); ++cut) {
    EXPECT_FALSE(DecodeWalPayload(payload.substr(0, cut)).ok()) << cut;
  }
  EXPECT_FALSE(DecodeWalPayload(payload + "x").ok());
}

TEST_F(WalTest, DropOldSegmentsKeepsOnlyNewRecords) {
  auto wal = Wal::Open(dir_);
  ASSERT_TRUE(wal.ok());
  ASSERT_TRUE((*wal)->Append(Record("old", 0, 4, false)).ok());
  ASSERT_TRUE((*wal)->Sync().ok());
  EXPECT_GT((*wal)->bytes_since_drop(), 0);
  ASSERT_TRUE((*wal)->DropOldSegments().ok());
  EXPECT_EQ((*wal)->bytes_since_drop(), 0);
  ASSERT_TRUE((*wal)->Append(Record("new", 4, 1, false)).ok());
  ASSERT_TRUE((*wal)->Sync().ok());
  std::vector<std::string> warnings;
  std::vector<WalRecord> got = Wal::ReadAll(dir_, &warnings);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].session_id, "new");
}

}  // namespace
}  // namespace titans::engine
