// Helpers for the libFuzzer targets: inputs either are the bytes to parse, or (first byte odd)
// edits applied to a valid seed, so the fuzzer reaches deep into formats with checksums.
#ifndef TITANS_TESTS_FUZZ_FUZZ_UTIL_H_
#define TITANS_TESTS_FUZZ_FUZZ_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <string>

namespace titans::fuzz {

// data[0] even: the rest is the input. Odd: the rest is (u16 offset, u8 xor) triples applied to
// `seed`, plus an optional truncation length in the last two bytes.
inline std::string InputFrom(const uint8_t* data, size_t size, const std::string& seed) {
  if (size == 0) return "";
  if ((data[0] & 1) == 0) return std::string(reinterpret_cast<const char*>(data + 1), size - 1);
  std::string out = seed;
  size_t i = 1;
  for (; i + 3 <= size && !out.empty(); i += 3) {
    const size_t offset = (size_t{data[i]} << 8 | data[i + 1]) % out.size();
    out[offset] = static_cast<char>(out[offset] ^ data[i + 2]);
  }
  if (i + 2 == size && !out.empty()) {
    out.resize((size_t{data[i]} << 8 | data[i + 1]) % (out.size() + 1));
  }
  return out;
}

}  // namespace titans::fuzz

#endif  // TITANS_TESTS_FUZZ_FUZZ_UTIL_H_
