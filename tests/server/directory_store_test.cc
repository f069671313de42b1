// DirectoryStore: round trips, and records on disk that must not be trusted (a hostile or
// damaged state directory) are skipped and reported, never used as file names.
#include "server/engine/directory_store.h"

#include <gtest/gtest.h>

#include <fstream>

#include "tests/server/server_fixture.h"

namespace titans::testing {
namespace {

TEST(DirectoryStore, RoundTripAndUntrustedRecords) {
  const std::string dir = TempDir("titans_directory_store");
  engine::DirectoryStore store(dir);
  ASSERT_TRUE(store.Init().ok());
  engine::SessionRecord r;
  r.id = "good";
  r.principal = "p";
  r.position = 12;
  r.epoch = 3;
  ASSERT_TRUE(store.Create(r, "state-bytes").ok());
  EXPECT_EQ(*store.ReadState("good"), "state-bytes");
  EXPECT_EQ(store.ReadRecord("good")->epoch, 3);
  ASSERT_TRUE(store.WriteRewindTokens("good", {8, {1, 2, 3, 4}}).ok());
  EXPECT_EQ(store.ReadRewindTokens("good")->first_position, 8);
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

}  // namespace
}  // namespace titans::testing
