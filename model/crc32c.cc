#include "model/crc32c.h"

#include <array>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <nmmintrin.h>
#define TITANS_CRC32C_X86 1
#endif

namespace titans {
namespace crc32c_internal {
namespace {

constexpr uint32_t kPoly = 0x82F63B78u;  // Reflected Castagnoli polynomial.

// Slicing-by-8 tables: kTables[0] is the classic byte table; kTables[k][b] is the CRC of byte b
// followed by k zero bytes.
using Tables = std::array<std::array<uint32_t, 256>, 8>;

constexpr Tables MakeTables() {
  Tables t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ kPoly : c >> 1;
    t[0][i] = c;
  }
  for (uint32_t i = 0; i < 256; ++i) {
    for (size_t k = 1; k < 8; ++k) t[k][i] = (t[k - 1][i] >> 8) ^ t[0][t[k - 1][i] & 0xFF];
  }
  return t;
}

constexpr Tables kTables = MakeTables();

inline uint64_t LoadLE64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

#ifdef TITANS_CRC32C_X86
bool DetectSse42() {
  __builtin_cpu_init();
  return __builtin_cpu_supports("sse4.2");
}
#endif

}  // namespace

uint32_t Crc32cSoftware(const void* data, size_t n, uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = ~crc;
  for (; n >= 8; n -= 8, p += 8) {
    const uint64_t v = LoadLE64(p) ^ c;
    c = kTables[7][v & 0xFF] ^ kTables[6][(v >> 8) & 0xFF] ^ kTables[5][(v >> 16) & 0xFF] ^
        kTables[4][(v >> 24) & 0xFF] ^ kTables[3][(v >> 32) & 0xFF] ^ kTables[2][(v >> 40) & 0xFF] ^
        kTables[1][(v >> 48) & 0xFF] ^ kTables[0][v >> 56];
  }
  for (; n > 0; --n, ++p) c = (c >> 8) ^ kTables[0][(c ^ *p) & 0xFF];
  return ~c;
}

#ifdef TITANS_CRC32C_X86

__attribute__((target("sse4.2"))) uint32_t Crc32cHardware(const void* data, size_t n,
                                                          uint32_t crc) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint32_t c = ~crc;
  for (; n > 0 && (reinterpret_cast<uintptr_t>(p) & 7) != 0; --n, ++p) c = _mm_crc32_u8(c, *p);
#if defined(__x86_64__)
  uint64_t c64 = c;
  for (; n >= 8; n -= 8, p += 8) {
    uint64_t v;
    std::memcpy(&v, p, sizeof(v));
    c64 = _mm_crc32_u64(c64, v);
  }
  c = static_cast<uint32_t>(c64);
#endif
  for (; n >= 4; n -= 4, p += 4) {
    uint32_t v;
    std::memcpy(&v, p, sizeof(v));
    c = _mm_crc32_u32(c, v);
  }
  for (; n > 0; --n, ++p) c = _mm_crc32_u8(c, *p);
  return ~c;
}

bool HasHardwareCrc32c() {
  static const bool has = DetectSse42();
  return has;
}

#else  // !TITANS_CRC32C_X86

uint32_t Crc32cHardware(const void* data, size_t n, uint32_t crc) {
  return Crc32cSoftware(data, n, crc);
}

bool HasHardwareCrc32c() { return false; }

#endif  // TITANS_CRC32C_X86

}  // namespace crc32c_internal

uint32_t Crc32c(const void* data, size_t n, uint32_t crc) {
  if (n == 0) return crc;
  return crc32c_internal::HasHardwareCrc32c() ? crc32c_internal::Crc32cHardware(data, n, crc)
                                              : crc32c_internal::Crc32cSoftware(data, n, crc);
}

}  // namespace titans
