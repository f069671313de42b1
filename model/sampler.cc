#include "model/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace titans {
namespace {

constexpr int32_t kMaxTokensLimit = 1 << 20;
constexpr size_t kMaxStopStrings = 16;
constexpr size_t kMaxStopBytes = 256;

absl::Status RangeError(const char* field, const char* range, double value) {
  return absl::InvalidArgumentError(absl::StrCat(field, " must be in ", range, ", got ",
                                                 std::isnan(value) ? "NaN" : absl::StrCat(value)));
}

struct Candidate {
  int32_t id;
  double logit;
  double weight;  // exp(logit - max_logit), in (0, 1]; may underflow to 0.
};

// Total order: higher logit first, then lower id.
bool Better(const Candidate& a, const Candidate& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// Candidates in id order with the repetition penalty applied; NaN and -inf logits are dropped.
// Fills `*cands` (cleared first). The caller passes buffers it keeps between calls, so that
// sampling every session of a step allocates nothing once they have grown.
void BuildCandidates(const float* logits, int32_t vocab_size, double penalty,
                     const std::vector<int32_t>& recent_tokens, std::vector<int32_t>* penalized,
                     std::vector<Candidate>* cands) {
  penalized->clear();
  if (penalty != 1.0) {
    penalized->assign(recent_tokens.begin(), recent_tokens.end());
    std::sort(penalized->begin(), penalized->end());
    penalized->erase(std::unique(penalized->begin(), penalized->end()), penalized->end());
  }
  auto next_penalized = std::lower_bound(penalized->begin(), penalized->end(), 0);
  cands->clear();
  cands->reserve(vocab_size);
  for (int32_t id = 0; id < vocab_size; ++id) {
    double x = logits[id];
    if (next_penalized != penalized->end() && *next_penalized == id) {
      ++next_penalized;
      x = x > 0 ? x / penalty : x * penalty;
    }
    if (std::isnan(x) || x == -std::numeric_limits<double>::infinity()) continue;
    cands->push_back({id, x, 0.0});
  }
}

double SumWeights(const std::vector<Candidate>& cands) {
  double total = 0.0;
  for (const Candidate& c : cands) total += c.weight;
  return total;
}

// Length of the shortest prefix of the first m candidates whose weight reaches `target`, or
// m + 1 if they do not reach it.
size_t PrefixReaching(const std::vector<Candidate>& cands, size_t m, double target) {
  double cum = 0.0;
  for (size_t i = 0; i < m; ++i) {
    cum += cands[i].weight;
    if (cum >= target) return i + 1;
  }
  return m + 1;
}

// Keeps the nucleus: the smallest prefix in Better order whose mass reaches top_p. Leaves
// `cands` sorted by Better. Sorts progressively larger prefixes, since the nucleus is usually
// small compared with the vocabulary.
void ApplyTopP(double top_p, bool sorted, std::vector<Candidate>* cands) {
  const size_t n = cands->size();
  const double target = top_p * SumWeights(*cands);
  size_t keep = n;
  for (size_t m = std::min<size_t>(n, 64);; m = std::min(n, m * 4)) {
    if (!sorted) std::partial_sort(cands->begin(), cands->begin() + m, cands->end(), Better);
    const size_t k = PrefixReaching(*cands, m, target);
    if (k <= m || m == n) {
      keep = std::min(k, n);  // k == n + 1 only through rounding: keep everything.
      break;
    }
  }
  cands->resize(keep);
}

}  // namespace

absl::Status ValidateSamplingParams(const SamplingParams& p, int32_t vocab_size) {
  if (vocab_size <= 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("vocab_size must be positive, got ", vocab_size));
  }
  if (!(p.temperature >= 0.0f && p.temperature <= 100.0f)) {
    return RangeError("temperature", "[0, 100]", p.temperature);
  }
  if (p.top_k < 0 || p.top_k > vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("top_k must be in [0, ", vocab_size, "] (0 = off), got ", p.top_k));
  }
  if (!(p.top_p > 0.0f && p.top_p <= 1.0f)) return RangeError("top_p", "(0, 1]", p.top_p);
  if (!(p.min_p >= 0.0f && p.min_p < 1.0f)) return RangeError("min_p", "[0, 1)", p.min_p);
  if (!(p.repetition_penalty > 0.0f && p.repetition_penalty <= 10.0f)) {
    return RangeError("repetition_penalty", "(0, 10]", p.repetition_penalty);
  }
  if (p.max_tokens < 1 || p.max_tokens > kMaxTokensLimit) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_tokens must be in [1, ", kMaxTokensLimit, "], got ", p.max_tokens));
  }
  if (p.stop.size() > kMaxStopStrings) {
    return absl::InvalidArgumentError(absl::StrCat("stop: at most ", kMaxStopStrings,
                                                   " stop strings allowed, got ", p.stop.size()));
  }
  for (size_t i = 0; i < p.stop.size(); ++i) {
    if (p.stop[i].empty() || p.stop[i].size() > kMaxStopBytes) {
      return absl::InvalidArgumentError(absl::StrCat("stop[", i, "] must be 1..", kMaxStopBytes,
                                                     " bytes long, got ", p.stop[i].size()));
    }
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Rng: xoshiro256** (Blackman & Vigna), seeded with splitmix64.

namespace {

uint64_t SplitMix64(uint64_t* x) {
  uint64_t z = (*x += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t Rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

}  // namespace

Rng::Rng(uint64_t seed) {
  for (uint64_t& word : state_) word = SplitMix64(&seed);
}

uint64_t Rng::Next() {
  State& s = state_;
  const uint64_t result = Rotl(s[1] * 5, 7) * 9;
  const uint64_t t = s[1] << 17;
  s[2] ^= s[0];
  s[3] ^= s[1];
  s[1] ^= s[2];
  s[0] ^= s[3];
  s[2] ^= t;
  s[3] = Rotl(s[3], 45);
  return result;
}

double Rng::NextDouble() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }

absl::StatusOr<Rng> Rng::FromState(const State& state) {
  if (state == State{}) {
    return absl::InvalidArgumentError("Rng state must not be all zero");
  }
  Rng rng;
  rng.state_ = state;
  return rng;
}

// ---------------------------------------------------------------------------------------------

int32_t SampleToken(const float* logits, int32_t vocab_size, const SamplingParams& params,
                    const std::vector<int32_t>& recent_tokens, Rng* rng) {
  if (logits == nullptr || vocab_size <= 0) return 0;
  // Per-thread buffers: every call rebuilds their contents; only their capacity carries over.
  thread_local std::vector<int32_t> penalized;
  thread_local std::vector<Candidate> cands;
  BuildCandidates(logits, vocab_size, params.repetition_penalty, recent_tokens, &penalized, &cands);
  if (cands.empty()) return 0;  // Every logit is -inf or NaN.
  if (params.temperature == 0.0f || rng == nullptr) {
    return std::min_element(cands.begin(), cands.end(), Better)->id;
  }

  // Temperature; +inf is clamped so that all +inf logits tie and dominate everything finite.
  const double temperature = params.temperature;
  double max_logit = -std::numeric_limits<double>::infinity();
  for (Candidate& c : cands) {
    c.logit = std::min(c.logit / temperature, std::numeric_limits<double>::max());
    max_logit = std::max(max_logit, c.logit);
  }
  for (Candidate& c : cands) c.weight = std::exp(c.logit - max_logit);

  // The candidates stay in a canonical order (by id, or by Better) so that sums, and therefore
  // samples, do not depend on the standard library's selection algorithms.
  bool sorted = false;
  if (params.top_k > 0 && static_cast<size_t>(params.top_k) < cands.size()) {
    std::nth_element(cands.begin(), cands.begin() + params.top_k, cands.end(), Better);
    cands.resize(params.top_k);
    std::sort(cands.begin(), cands.end(), Better);
    sorted = true;
  }
  if (params.top_p < 1.0f) {
    ApplyTopP(params.top_p, sorted, &cands);
    sorted = true;
  }
  if (params.min_p > 0.0f) {
    // The best candidate always survives top-k / top-p and has weight exactly 1 = p_max / p_max.
    const double min_p = params.min_p;
    cands.erase(std::remove_if(cands.begin(), cands.end(),
                               [min_p](const Candidate& c) { return c.weight < min_p; }),
                cands.end());
  }

  const double r = rng->NextDouble() * SumWeights(cands);
  double cum = 0.0;
  int32_t chosen = 0;
  for (const Candidate& c : cands) {
    if (c.weight <= 0.0) continue;  // Never return a zero-probability token.
    cum += c.weight;
    chosen = c.id;
    if (cum > r) break;
  }
  return chosen;
}

// ---------------------------------------------------------------------------------------------

StopMatcher::StopMatcher(std::vector<std::string> stop) {
  for (std::string& s : stop) {
    if (!s.empty()) stop_.push_back(std::move(s));
  }
}

std::string StopMatcher::Feed(std::string_view text_delta, bool* stopped) {
  if (stopped_) {
    if (stopped != nullptr) *stopped = true;
    return "";
  }
  pending_.append(text_delta);

  // The stop string that completes first (smallest end); ties go to the earliest start.
  size_t best_start = std::string::npos, best_end = std::string::npos;
  for (const std::string& s : stop_) {
    const size_t pos = pending_.find(s);
    if (pos == std::string::npos) continue;
    const size_t end = pos + s.size();
    if (end < best_end || (end == best_end && pos < best_start)) {
      best_start = pos;
      best_end = end;
    }
  }
  if (best_start != std::string::npos) {
    std::string out = pending_.substr(0, best_start);
    pending_.clear();
    stopped_ = true;
    if (stopped != nullptr) *stopped = true;
    return out;
  }

  // Hold back the longest suffix that is a proper prefix of some stop string.
  size_t hold = 0;
  for (const std::string& s : stop_) {
    for (size_t len = std::min(s.size() - 1, pending_.size()); len > hold; --len) {
      if (pending_.compare(pending_.size() - len, len, s, 0, len) == 0) {
        hold = len;
        break;
      }
    }
  }
  std::string out = pending_.substr(0, pending_.size() - hold);
  pending_.erase(0, pending_.size() - hold);
  if (stopped != nullptr) *stopped = false;
  return out;
}

std::string StopMatcher::Flush() {
  std::string out;
  out.swap(pending_);
  return out;
}

}  // namespace titans
