#include "model/crc32c.h"

#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <string>
#include <vector>

namespace titans {
namespace {

using crc32c_internal::Crc32cHardware;
using crc32c_internal::Crc32cSoftware;
using crc32c_internal::HasHardwareCrc32c;

uint32_t Crc(const std::string& s) { return Crc32c(s.data(), s.size()); }

TEST(Crc32cTest, KnownVectors) {
  EXPECT_EQ(Crc(""), 0u);
  EXPECT_EQ(Crc("a"), 0xC1D04330u);
  EXPECT_EQ(Crc("123456789"), 0xE3069283u);
  EXPECT_EQ(Crc(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(Crc(std::string(32, '\xff')), 0x62A8AB43u);
  std::string inc(32, '\0');
  std::string dec(32, '\0');
  for (int i = 0; i < 32; ++i) {
    inc[i] = static_cast<char>(i);
    dec[i] = static_cast<char>(31 - i);
  }
  EXPECT_EQ(Crc(inc), 0x46DD794Eu);
  EXPECT_EQ(Crc(dec), 0x113FDB5Cu);
  EXPECT_EQ(Crc32cSoftware("123456789", 9, 0), 0xE3069283u);
}

TEST(Crc32cTest, NullWithZeroLength) {
  EXPECT_EQ(Crc32c(nullptr, 0), 0u);
  EXPECT_EQ(Crc32c(nullptr, 0, 0x12345678u), 0x12345678u);
}

TEST(Crc32cTest, Extendable) {
  const std::string s = "The quick brown fox jumps over the lazy dog, again and again.";
  const uint32_t whole = Crc(s);
  for (size_t split = 0; split <= s.size(); ++split) {
    const uint32_t a = Crc32c(s.data(), split);
    EXPECT_EQ(Crc32c(s.data() + split, s.size() - split, a), whole) << "split " << split;
  }
}

TEST(Crc32cTest, SoftwareAndHardwareAgree) {
  if (!HasHardwareCrc32c()) GTEST_SKIP() << "CPU has no SSE4.2";
  std::mt19937 rng(42);
  std::vector<unsigned char> buf(4096 + 16);
  for (auto& b : buf) b = static_cast<unsigned char>(rng());
  for (size_t offset = 0; offset < 16; ++offset) {
    for (size_t len = 0; len <= 300; ++len) {
      const uint32_t seed = static_cast<uint32_t>(rng());
      ASSERT_EQ(Crc32cSoftware(buf.data() + offset, len, seed),
                Crc32cHardware(buf.data() + offset, len, seed))
          << "offset " << offset << " len " << len;
    }
    ASSERT_EQ(Crc32cSoftware(buf.data() + offset, 4096, 0),
              Crc32cHardware(buf.data() + offset, 4096, 0));
  }
  EXPECT_EQ(Crc32cHardware("123456789", 9, 0), 0xE3069283u);
}

TEST(Crc32cTest, DispatchMatchesSoftware) {
  std::mt19937 rng(7);
  std::string s(1000, '\0');
  for (auto& c : s) c = static_cast<char>(rng());
  EXPECT_EQ(Crc(s), Crc32cSoftware(s.data(), s.size(), 0));
}

}  // namespace
}  // namespace titans
