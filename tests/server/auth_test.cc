#include "server/auth.h"

#include <gtest/gtest.h>

#include <fstream>

namespace titans::server {
namespace {

TEST(Authenticator, DisabledWithoutTokens) {
  auto auth = Authenticator::Load("", nullptr);
  ASSERT_TRUE(auth.ok());
  EXPECT_FALSE(auth->enabled());
  EXPECT_EQ(*auth->Authenticate(nullptr), "");
}

TEST(Authenticator, FileAndEnvironment) {
  const std::string path = ::testing::TempDir() + "/tokens";
  std::ofstream(path) << "# comment\nfile-token-1 carol\n\n";
  auto auth = Authenticator::Load(path, "env-token-22=dave");
  ASSERT_TRUE(auth.ok()) << auth.status();
  std::string carol = "Bearer file-token-1", dave = "Bearer env-token-22", bad = "Bearer nope";
  std::string basic = "Basic file-token-1";
  EXPECT_EQ(*auth->Authenticate(&carol), "carol");
  EXPECT_EQ(*auth->Authenticate(&dave), "dave");
  EXPECT_EQ(auth->Authenticate(&bad).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth->Authenticate(&basic).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(auth->Authenticate(nullptr).status().code(), absl::StatusCode::kUnauthenticated);
}

TEST(Authenticator, MalformedSources) {
  EXPECT_EQ(Authenticator::Load("", "short=x").status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Authenticator::Load("", "no-equals-sign").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Authenticator::Load("/nonexistent/tokens", nullptr).status().code(),
            absl::StatusCode::kNotFound);
}

// Principals scope session ids in storage names ("<principal>+<id>"), so they keep to a naming
// rule that cannot collide or escape a directory: no '+', '/', leading '.', or over 64 bytes.
TEST(Authenticator, PrincipalsFollowTheStorageNamingRule) {
  EXPECT_TRUE(Authenticator::Load("", "token-ok-1=team.a@example.com:42_x-y").ok());
  for (const char* bad : {"a+b", "../x", ".hidden", "a/b", "a*b"}) {
    auto auth = Authenticator::Load("", (std::string("token-bad-1=") + bad).c_str());
    EXPECT_EQ(auth.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_EQ(
      Authenticator::Load("", ("token-bad-2=" + std::string(65, 'p')).c_str()).status().code(),
      absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace titans::server
