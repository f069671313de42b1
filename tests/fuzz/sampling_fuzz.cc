// Request validation of sampling parameters and stop strings: whatever validates samples a token
// inside the vocabulary, and the stop matcher never emits text past a stop string.
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "model/sampler.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 24) return 0;
  titans::SamplingParams p;
  std::memcpy(&p.temperature, data, 4);
  std::memcpy(&p.top_k, data + 4, 4);
  std::memcpy(&p.top_p, data + 8, 4);
  std::memcpy(&p.min_p, data + 12, 4);
  std::memcpy(&p.repetition_penalty, data + 16, 4);
  std::memcpy(&p.max_tokens, data + 20, 4);
  const std::string rest(reinterpret_cast<const char*>(data + 24), size - 24);
  const size_t cut = rest.find('\0');
  if (cut != std::string::npos && cut > 0) p.stop.push_back(rest.substr(0, cut));
  constexpr int32_t kVocab = 64;
  if (!titans::ValidateSamplingParams(p, kVocab).ok()) return 0;
  float logits[kVocab];
  for (int i = 0; i < kVocab; ++i) logits[i] = static_cast<float>((i * 37 + size) % 17) - 8.0f;
  titans::Rng rng(size);
  const int32_t token = titans::SampleToken(logits, kVocab, p, {1, 2, 3}, &rng);
  if (token < 0 || token >= kVocab) std::abort();
  titans::StopMatcher stops(p.stop);
  bool stopped = false;
  std::string emitted = stops.Feed(rest, &stopped);
  if (!stopped) emitted += stops.Flush();
  for (const std::string& s : p.stop) {
    if (emitted.find(s) != std::string::npos) std::abort();
  }
  return 0;
}
