// Log lines stay lines: a field value is cut to a bounded length, and in text lines control
// bytes cannot start a new line or forge fields.
#include "server/log.h"

#include <gtest/gtest.h>

#include <string>

namespace titans::server {
namespace {

TEST(Log, FieldValuesAreBoundedAndCannotBreakTheLine) {
  ConfigureLogging(LogLevel::kInfo, /*json=*/false);
  ::testing::internal::CaptureStderr();
  Log(LogLevel::kInfo, "rpc", {{"session_id", std::string(1 << 20, 'a')}});
  Log(LogLevel::kInfo, "rpc", {{"session_id", "x\ny=forged"}});
  const std::string text = ::testing::internal::GetCapturedStderr();
  const size_t first_end = text.find('\n');
  ASSERT_NE(first_end, std::string::npos);
  EXPECT_LT(first_end, 400u);
  EXPECT_NE(text.find("...(1048576 bytes)"), std::string::npos);
  const std::string second = text.substr(first_end + 1);
  EXPECT_EQ(second.find('\n'), second.size() - 1) << "one line: " << second;
  EXPECT_NE(second.find("session_id=x\\x0ay=forged"), std::string::npos) << second;

  ConfigureLogging(LogLevel::kInfo, /*json=*/true);
  ::testing::internal::CaptureStderr();
  // A cut never splits a UTF-8 sequence: 255 ASCII bytes, then 'é' (2 bytes) across the bound.
  Log(LogLevel::kInfo, "rpc", {{"v", std::string(255, 'b') + "\xc3\xa9" + std::string(10, 'c')}});
  const std::string json = ::testing::internal::GetCapturedStderr();
  ConfigureLogging(LogLevel::kInfo, /*json=*/false);
  EXPECT_NE(json.find("\"v\":\"" + std::string(255, 'b') + "...(267 bytes)\""), std::string::npos)
      << json;
}

}  // namespace
}  // namespace titans::server
