// DirectoryStore: round trips, and records on disk that must not be trusted (a hostile or
// damaged state directory) are skipped and reported, never used as file names.
#include "server/engine/directory_store.h"

#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "model/crc32c.h"
#include "tests/server/server_fixture.h"

namespace titans::testing {
namespace {

TEST(DirectoryStore, RoundTripAndUntrustedRecords) {
  const std::string dir = TempDir("titans_directory_store");
  engine::DirectoryStore store(dir, engine::Env::Default());
  ASSERT_TRUE(store.Init().ok());
  engine::SessionRecord r;
  r.id = "good";
  r.principal = "p";
  r.position = 12;
  r.epoch = 3;
  ASSERT_TRUE(store.Create(r, "state-bytes").ok());
  EXPECT_EQ(*store.ReadState("good"), "state-bytes");
  EXPECT_EQ(store.ReadRecord("good")->epoch, 3);
  ASSERT_TRUE(store.WriteRewindTokens("good", {8, {1, 2, 3, 4}, 3}).ok());
  EXPECT_EQ(store.ReadRewindTokens("good")->first_position, 8);
  EXPECT_EQ(store.ReadRewindTokens("good")->epoch, 3);
  // A damaged tokens file is DATA_LOSS, not garbage.
  {
    std::fstream f(dir + "/good.rewind/tokens", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(20);
    f.put('\x7f');
  }
  EXPECT_EQ(store.ReadRewindTokens("good").status().code(), absl::StatusCode::kDataLoss);

  for (const auto& [name, json] : std::vector<std::pair<std::string, std::string>>{
           {"escape.json", R"({"id":"../../etc/passwd","principal":"p","labels":{},)"
                           R"("idle_ttl_seconds":1,"created_unix_ms":0,"last_used_unix_ms":0,)"
                           R"("position":0,"state_bytes":0})"},
           {"negative.json", R"({"id":"neg","principal":"p","labels":{},"idle_ttl_seconds":1,)"
                             R"("created_unix_ms":0,"last_used_unix_ms":0,"position":-5,)"
                             R"("state_bytes":0})"},
           {"garbage.json", "{not json"},
           {"nostate.json", R"({"id":"nostate","principal":"p","labels":{},)"
                            R"("idle_ttl_seconds":1,"created_unix_ms":0,"last_used_unix_ms":0,)"
                            R"("position":0,"state_bytes":0})"}}) {
    std::ofstream(dir + "/" + name) << json;
  }
  std::vector<std::string> errors;
  std::vector<engine::SessionRecord> listed = store.List(&errors);
  ASSERT_EQ(listed.size(), 1u);
  EXPECT_EQ(listed[0].id, "good");
  EXPECT_EQ(errors.size(), 4u);
  std::filesystem::remove_all(dir);
}

// Tokens written before they carried their epoch ("TTNRWTK1") still read, as epoch -1 (unknown);
// damage in either version is DATA_LOSS.
TEST(RewindTokens, ReadsTheVersionWithoutAnEpoch) {
  const std::vector<int32_t> tokens = {5, 6, 7};
  const int64_t first = 40;
  const uint32_t n = 3;
  std::string body(12 + 4 * tokens.size(), '\0');
  std::memcpy(body.data(), &first, 8);
  std::memcpy(body.data() + 8, &n, 4);
  std::memcpy(body.data() + 12, tokens.data(), 4 * tokens.size());
  const uint32_t crc = Crc32c(body.data(), body.size());
  const std::string v1 =
      std::string("TTNRWTK1") + std::string(reinterpret_cast<const char*>(&crc), 4) + body;
  absl::StatusOr<engine::RewindTokens> read = engine::DecodeRewindTokens(v1);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->first_position, first);
  EXPECT_EQ(read->tokens, tokens);
  EXPECT_EQ(read->epoch, -1);
  std::string damaged = v1;
  damaged[16] ^= 1;
  EXPECT_EQ(engine::DecodeRewindTokens(damaged).status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(engine::DecodeRewindTokens(v1.substr(0, v1.size() - 1)).status().code(),
            absl::StatusCode::kDataLoss);

  const std::string v2 = engine::EncodeRewindTokens({first, tokens, 7});
  EXPECT_EQ(v2.substr(0, 8), "TTNRWTK2");
  read = engine::DecodeRewindTokens(v2);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(read->epoch, 7);
  EXPECT_EQ(read->tokens, tokens);
  EXPECT_EQ(engine::DecodeRewindTokens(v2.substr(0, 23)).status().code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace titans::testing
