#include "server/engine/scheduler.h"

#include <algorithm>

namespace titans::engine {

std::vector<Assignment> PlanStep(const std::vector<Candidate>& candidates, int64_t budget) {
  std::vector<Assignment> plan;
  int64_t left = budget;
  // Decodes take at most three quarters of the budget while appends or prompts wait: with as
  // many decoding sessions as the budget, they would otherwise take all of it, every step, and
  // a new session's prompt would not run until some generation ended.
  const bool bulk_waiting = std::any_of(candidates.begin(), candidates.end(),
                                        [](const Candidate& c) { return c.wanted_tokens > 1; });
  int64_t decode_left =
      bulk_waiting && budget > 1 ? budget - std::max<int64_t>(1, budget / 4) : budget;
  // Pass 1: control operations and single-token decodes (cheap, latency-sensitive).
  for (const Candidate& c : candidates) {
    if (c.wanted_tokens == 0) {
      plan.push_back({c.session, 0});
    } else if (c.wanted_tokens == 1 && left > 0 && decode_left > 0) {
      plan.push_back({c.session, 1});
      --left;
      --decode_left;
    }
  }
  // Pass 2: appends, prompts and scores share what is left, in round-robin order.
  for (const Candidate& c : candidates) {
    if (c.wanted_tokens <= 1) continue;
    if (c.indivisible) {
      if (c.wanted_tokens <= left || plan.empty()) {
        plan.push_back({c.session, c.wanted_tokens});
        left -= std::min(left, c.wanted_tokens);
      }
      continue;
    }
    if (left <= 0 && !plan.empty()) break;
    const int64_t grant = std::max<int64_t>(1, std::min(left, c.wanted_tokens));
    plan.push_back({c.session, grant});
    left -= std::min(left, grant);
  }
  return plan;
}

}  // namespace titans::engine
