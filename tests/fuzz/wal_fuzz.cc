// The write-ahead-log reader: never crashes on torn or damaged segments; every record it
// returns is internally consistent.
#include <cstdlib>

#include "server/engine/wal.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const std::string& Seed() {
  static const std::string* seed = [] {
    auto* s = new std::string;
    for (int i = 0; i < 3; ++i) {
      titans::engine::WalRecord r;
      r.session_id = "s" + std::to_string(i);
      r.position_before = i * 5;
      r.tokens = {1, 2, 3, 4, 5};
      r.pieces = {2, 3};
      r.has_rng = i == 1;
      r.rng = {1, 2, 3, 4};
      *s += titans::engine::EncodeWalRecord(r);
    }
    return s;
  }();
  return *seed;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input = titans::fuzz::InputFrom(data, size, Seed());
  std::vector<titans::engine::WalRecord> records;
  titans::engine::ParseWalSegment(input, &records);
  for (const auto& r : records) {
    int64_t total = 0;
    for (int32_t p : r.pieces) total += p;
    if (total != static_cast<int64_t>(r.tokens.size()) || r.position_before < 0) std::abort();
  }
  return 0;
}
