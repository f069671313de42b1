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

}  // namespace
}  // namespace titans::server
