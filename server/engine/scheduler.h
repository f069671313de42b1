// The scheduling policy: a pure function from a snapshot of runnable sessions to this step's
// plan. It never touches tensors (the executor does) and keeps no state (the caller passes the
// round-robin cursor), so it is trivially testable.
#ifndef TITANS_SERVER_ENGINE_SCHEDULER_H_
#define TITANS_SERVER_ENGINE_SCHEDULER_H_

#include <cstdint>
#include <vector>

namespace titans::engine {

struct Candidate {
  int64_t session = 0;  // opaque index chosen by the caller
  // Tokens the head operation still wants to consume: an append's remaining tokens, a
  // generate's remaining prompt (or 1 when decoding), 0 for control operations (close, fork,
  // export), which always run.
  int64_t wanted_tokens = 0;
  // Whether the operation must run whole in one step (score).
  bool indivisible = false;
};

struct Assignment {
  int64_t session = 0;
  int64_t tokens = 0;  // tokens to consume in this step (0 for control operations)
};

// Visits candidates in the given (round-robin) order and grants each one min(wanted, left)
// tokens until the budget is spent; decode steps (wanted == 1) and control operations are
// served before long appends so interactive sessions never wait behind bulk context, but while
// appends or prompts wait, decodes take at most three quarters of the budget (so more decoding
// sessions than the budget cannot starve new prompts; the caller's rotation serves the decodes
// left out in the next steps). A
// candidate that gets nothing this step is simply not in the plan. The first candidate always
// runs (so a single indivisible operation larger than the budget still progresses).
std::vector<Assignment> PlanStep(const std::vector<Candidate>& candidates, int64_t budget);

}  // namespace titans::engine

#endif  // TITANS_SERVER_ENGINE_SCHEDULER_H_
