// The stored session records (JSON) and rewind-token lists (binary, checksummed) read back from
// a state directory or Redis: never crash; whatever decodes is consistent and re-encodes to the
// same value.
#include <cstdlib>

#include "server/engine/engine.h"
#include "server/engine/session_store.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const std::string& Seed() {
  static const std::string* seed = [] {
    titans::engine::RewindTokens t;
    t.first_position = 4096;
    t.tokens = {1, 2, 3, 250, 7};
    t.epoch = 2;
    titans::engine::SessionRecord r;
    r.id = "s-1";
    r.principal = "alice";
    r.labels = {{"team", "a"}};
    r.position = 4101;
    r.epoch = 2;
    // One seed for both decoders: the first byte of the input picks which one reads it.
    return new std::string(titans::engine::EncodeRewindTokens(t) + "\n" +
                           titans::engine::EncodeSessionRecord(r));
  }();
  return *seed;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) return 0;
  const bool record = data[0] & 2;
  std::string input = titans::fuzz::InputFrom(data, size, Seed());
  const size_t split = input.find('\n');
  if (split != std::string::npos && (data[0] & 1)) {
    input = record ? input.substr(split + 1) : input.substr(0, split);
  }
  if (record) {
    auto r = titans::engine::DecodeSessionRecord(input);
    if (r.ok()) {
      if (!titans::engine::ValidateName(r->id, "id").ok() || r->position < 0) std::abort();
      auto again = titans::engine::DecodeSessionRecord(titans::engine::EncodeSessionRecord(*r));
      if (!again.ok() || again->id != r->id || again->position != r->position) std::abort();
    }
  } else {
    auto t = titans::engine::DecodeRewindTokens(input);
    if (t.ok()) {
      if (t->first_position < 0 || t->epoch < -1) std::abort();
      auto again = titans::engine::DecodeRewindTokens(titans::engine::EncodeRewindTokens(*t));
      if (!again.ok() || again->tokens != t->tokens || again->epoch != t->epoch) std::abort();
    }
  }
  return 0;
}
