// ModelRunner: slots, snapshots and blobs; a step over many slots gives what each slot gets
// alone and what TitansModel::Forward gives; sampling matches TokenGenerator; scores match the
// log-softmax of Forward's logits; malformed plans and failing slots change nothing.
#include "model/model_runner.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include "model/determinism.h"
#include "model/generator.h"
#include "tests/model/model_test_util.h"

namespace titans {
namespace {

using testing::MakeModel;
using testing::MaxStateDiff;
using testing::Name;
using testing::RandomTokens;
using testing::TinyConfig;

std::vector<int32_t> Ids(const at::Tensor& t) {  // [1, T] int64 -> ids
  return std::vector<int32_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel());
}

SlotWork Feed(SlotId slot, std::vector<int32_t> tokens) {
  SlotWork w;
  w.slot = slot;
  w.tokens = std::move(tokens);
  return w;
}

SlotWork Sample(SlotId slot, const SamplingParams* params, std::vector<int32_t> prefix = {}) {
  SlotWork w;
  w.slot = slot;
  w.tokens = std::move(prefix);
  w.action = SlotAction::kSample;
  w.sampling = params;
  return w;
}

StepResult MustStep(ModelRunner& runner, std::vector<SlotWork> work) {
  StepPlan plan;
  plan.work = std::move(work);
  absl::StatusOr<StepResult> r = runner.Step(plan);
  EXPECT_TRUE(r.ok()) << r.status();
  if (!r.ok()) return StepResult{};
  for (const SlotOutcome& o : r->slots) EXPECT_TRUE(o.status.ok()) << o.status;
  return *std::move(r);
}

// The slot's contents as a SessionState (through the canonical blob).
SessionState StateOf(const ModelRunner& runner, const TitansModel& model, SlotId slot) {
  absl::StatusOr<std::string> blob = runner.Export(slot);
  EXPECT_TRUE(blob.ok()) << blob.status();
  absl::StatusOr<SessionState> s =
      DeserializeSessionState(blob.ok() ? *blob : "", model.config(), model.fingerprint());
  EXPECT_TRUE(s.ok()) << s.status();
  return s.ok() ? *std::move(s) : SessionState{};
}

// Equal bits with LibTorch's portable kernels (ctest runs ModelRunner.* that way too), within
// 2e-4 with the vectorised ones (as ForwardMany.MatchesSessionsRunAlone).
void ExpectSameState(const SessionState& a, const SessionState& b, const std::string& what) {
  EXPECT_EQ(a.position, b.position) << what;
  EXPECT_EQ(a.recent_tokens, b.recent_tokens) << what;
  if (BatchInvariantCpuKernels()) {
    EXPECT_EQ(MaxStateDiff(a, b), 0.0) << what;
  } else {
    EXPECT_LT(MaxStateDiff(a, b), 2e-4) << what;
  }
}

// One step over four slots at different positions (feeds of several lengths, a decode, a
// sample after a prefix) gives each slot what it gets in a step of its own, and the feeds give
// what TitansModel::Forward gives a SessionState alone.
TEST(ModelRunner, StepsMatchSlotsRunAloneAndForward) {
  for (Variant v : testing::kAllVariants) {
    auto model = MakeModel(TinyConfig(v, 2, 4), 19);
    auto batched = ModelRunner::Create(*model, 8);
    auto alone = ModelRunner::Create(*model, 8);
    ASSERT_TRUE(batched.ok() && alone.ok());
    const std::vector<int64_t> history = {3, 8, 13, 30};
    std::vector<SlotId> a, b;
    std::vector<SessionState> reference;
    for (size_t i = 0; i < history.size(); ++i) {
      a.push_back(*(*batched)->NewSlot());
      b.push_back(*(*alone)->NewSlot());
      const std::vector<int32_t> ids = Ids(RandomTokens(1, history[i], 40 + i));
      MustStep(**batched, {Feed(a[i], ids)});
      MustStep(**alone, {Feed(b[i], ids)});
      SessionState s = model->NewState();
      at::NoGradGuard no_grad;
      ASSERT_TRUE(model->Forward(&s, RandomTokens(1, history[i], 40 + i)).ok());
      reference.push_back(std::move(s));
    }
    SamplingParams greedy;
    greedy.temperature = 0;
    greedy.seed = 3;
    greedy.has_seed = true;
    for (int i : {2, 3}) {
      ASSERT_TRUE((*batched)->StartSampling(a[i], greedy).ok());
      ASSERT_TRUE((*alone)->StartSampling(b[i], greedy).ok());
    }
    const std::vector<int32_t> five = Ids(RandomTokens(1, 5, 50));
    const std::vector<int32_t> one = Ids(RandomTokens(1, 1, 51));
    const std::vector<int32_t> prefix = Ids(RandomTokens(1, 3, 52));
    StepResult together = MustStep(
        **batched,
        {Feed(a[0], five), Feed(a[1], one), Sample(a[2], &greedy), Sample(a[3], &greedy, prefix)});
    StepResult r0 = MustStep(**alone, {Feed(b[0], five)});
    StepResult r1 = MustStep(**alone, {Feed(b[1], one)});
    StepResult r2 = MustStep(**alone, {Sample(b[2], &greedy)});
    StepResult r3 = MustStep(**alone, {Sample(b[3], &greedy, prefix)});
    ASSERT_EQ(together.slots.size(), 4u);
    EXPECT_EQ(together.slots[0].position, history[0] + 5);
    EXPECT_EQ(together.slots[1].position, history[1] + 1);
    EXPECT_EQ(together.slots[2].position, history[2] + 1);
    EXPECT_EQ(together.slots[3].position, history[3] + 4);
    EXPECT_EQ(together.slots[2].sampled, r2.slots[0].sampled) << Name(v);
    EXPECT_EQ(together.slots[3].sampled, r3.slots[0].sampled) << Name(v);
    for (size_t i = 0; i < history.size(); ++i) {
      const std::string what = Name(v) + " slot " + std::to_string(i);
      if (BatchInvariantCpuKernels()) {
        EXPECT_TRUE(*(*batched)->Export(a[i]) == *(*alone)->Export(b[i])) << what;
      }
      ExpectSameState(StateOf(**batched, *model, a[i]), StateOf(**alone, *model, b[i]), what);
    }
    // The feeds against TitansModel::Forward on a plain SessionState.
    at::NoGradGuard no_grad;
    ASSERT_TRUE(
        model
            ->Forward(&reference[0],
                      at::tensor(std::vector<int64_t>(five.begin(), five.end())).unsqueeze(0))
            .ok());
    ExpectSameState(StateOf(**batched, *model, a[0]), reference[0], Name(v) + " vs Forward");
  }
}

// Seeded sampling through the runner draws what TokenGenerator draws, token for token, and
// leaves the same state; an unseeded continuation goes on with the slot's own RNG stream.
TEST(ModelRunner, SamplingMatchesTokenGenerator) {
  auto model = MakeModel(TinyConfig(Variant::kMAC), 5);
  auto runner = ModelRunner::Create(*model, 2);
  ASSERT_TRUE(runner.ok());
  const SlotId slot = *(*runner)->NewSlot();
  const std::vector<int32_t> prompt = Ids(RandomTokens(1, 10, 9));
  MustStep(**runner, {Feed(slot, prompt)});
  SessionState reference = model->NewState();
  {
    at::NoGradGuard no_grad;
    ASSERT_TRUE(model->Forward(&reference, RandomTokens(1, 10, 9)).ok());
  }
  SamplingParams p;
  p.temperature = 0.9f;
  p.top_k = 40;
  p.top_p = 0.95f;
  p.repetition_penalty = 1.3f;
  p.seed = 1234;
  p.has_seed = true;
  p.max_tokens = 12;
  p.stop_at_eos = false;
  auto expected = Generate(*model, &reference, p);
  ASSERT_TRUE(expected.ok()) << expected.status();
  ASSERT_TRUE((*runner)->StartSampling(slot, p).ok());
  std::vector<int32_t> drawn;
  for (int i = 0; i < p.max_tokens; ++i) {
    drawn.push_back(MustStep(**runner, {Sample(slot, &p)}).slots[0].sampled);
  }
  EXPECT_EQ(drawn, expected->tokens);
  ExpectSameState(StateOf(**runner, *model, slot), reference, "after sampling");
  EXPECT_EQ((*runner)->rng_state(slot), reference.rng_state);
  // Unseeded: both continue their own (equal) RNG streams.
  p.has_seed = false;
  p.max_tokens = 4;
  expected = Generate(*model, &reference, p);
  ASSERT_TRUE(expected.ok());
  ASSERT_TRUE((*runner)->StartSampling(slot, p).ok());
  drawn.clear();
  for (int i = 0; i < p.max_tokens; ++i) {
    drawn.push_back(MustStep(**runner, {Sample(slot, &p)}).slots[0].sampled);
  }
  EXPECT_EQ(drawn, expected->tokens);
  // Bad parameters are refused and change nothing.
  SamplingParams bad = p;
  bad.top_p = 0;
  const Rng::State rng = (*runner)->rng_state(slot);
  EXPECT_EQ((*runner)->StartSampling(slot, bad).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ((*runner)->rng_state(slot), rng);
}

// kScore returns log-softmax(logits before each token)[token], the first from the logits before
// the step; without commit the slot is unchanged, with commit it consumed the tokens.
TEST(ModelRunner, ScoresAreLogSoftmaxOfForwardAndCommitOnlyWhenAsked) {
  auto model = MakeModel(TinyConfig(Variant::kMAL), 8);
  auto runner = ModelRunner::Create(*model, 4);
  ASSERT_TRUE(runner.ok());
  const SlotId slot = *(*runner)->NewSlot();
  MustStep(**runner, {Feed(slot, Ids(RandomTokens(1, 7, 1)))});
  const std::string before = *(*runner)->Export(slot);
  const at::Tensor scored = RandomTokens(1, 6, 2);
  SlotWork what_if = Feed(slot, Ids(scored));
  what_if.action = SlotAction::kScore;
  what_if.commit = false;
  StepResult r = MustStep(**runner, {what_if});
  ASSERT_EQ(r.slots[0].logprobs.size(), 6u);
  EXPECT_TRUE(*(*runner)->Export(slot) == before);
  EXPECT_EQ(r.slots[0].position, 7);
  SessionState s = StateOf(**runner, *model, slot);
  at::NoGradGuard no_grad;
  const at::Tensor first = s.last_logits;
  auto logits = model->Forward(&s, scored, LogitsMode::kAll);
  ASSERT_TRUE(logits.ok());
  const at::Tensor pred = at::cat({first.unsqueeze(1), logits->slice(1, 0, 5)}, 1);
  const at::Tensor lp = at::log_softmax(pred, -1).gather(2, scored.unsqueeze(2)).reshape({-1});
  for (int i = 0; i < 6; ++i) {
    EXPECT_NEAR(r.slots[0].logprobs[i], lp[i].item<float>(), 1e-5) << i;
    EXPECT_LT(r.slots[0].logprobs[i], 0.0f);
  }
  what_if.commit = true;
  r = MustStep(**runner, {what_if});
  EXPECT_EQ(r.slots[0].position, 13);
  ExpectSameState(StateOf(**runner, *model, slot), s, "committed score");
}

// A malformed plan fails as a whole and leaves every slot as it was.
TEST(ModelRunner, MalformedPlansChangeNothing) {
  auto model = MakeModel(TinyConfig(Variant::kMAG), 2);
  auto runner = ModelRunner::Create(*model, 4);
  ASSERT_TRUE(runner.ok());
  const SlotId s0 = *(*runner)->NewSlot(), s1 = *(*runner)->NewSlot();
  const SlotId empty = *(*runner)->NewSlot();
  MustStep(**runner, {Feed(s0, {1, 2, 3}), Feed(s1, {4, 5})});
  const std::string b0 = *(*runner)->Export(s0), b1 = *(*runner)->Export(s1);
  SamplingParams greedy;
  greedy.temperature = 0;
  struct Case {
    std::vector<SlotWork> work;
    absl::StatusCode code;
  };
  const std::vector<Case> cases = {
      {{Feed(s0, {1}), Feed(3, {1})}, absl::StatusCode::kInvalidArgument},     // free slot
      {{Feed(s0, {1}), Feed(99, {1})}, absl::StatusCode::kInvalidArgument},    // no such slot
      {{Feed(s0, {1}), Feed(s0, {2})}, absl::StatusCode::kInvalidArgument},    // twice
      {{Feed(s0, {1}), Feed(s1, {260})}, absl::StatusCode::kInvalidArgument},  // vocabulary
      {{Feed(s0, {1}), Feed(s1, {-1})}, absl::StatusCode::kInvalidArgument},
      {{Feed(s0, {1}), Feed(s1, {})}, absl::StatusCode::kInvalidArgument},  // nothing to feed
      {{Feed(s0, {1}), Sample(s1, nullptr)}, absl::StatusCode::kInvalidArgument},
      {{Feed(s0, {1}), Sample(empty, &greedy)}, absl::StatusCode::kFailedPrecondition},
  };
  for (size_t i = 0; i < cases.size(); ++i) {
    StepPlan plan;
    plan.work = cases[i].work;
    EXPECT_EQ((*runner)->Step(plan).status().code(), cases[i].code) << "case " << i;
    EXPECT_TRUE(*(*runner)->Export(s0) == b0) << "case " << i;
    EXPECT_TRUE(*(*runner)->Export(s1) == b1) << "case " << i;
    EXPECT_EQ((*runner)->position(empty), 0);
  }
  // An empty session samples after its BOS in the same step.
  const int32_t bos = model->tokenizer().bos_id();
  StepResult r = MustStep(**runner, {Sample(empty, &greedy, {bos})});
  EXPECT_EQ(r.slots[0].position, 2);
  EXPECT_GE(r.slots[0].sampled, 0);
}

// A slot whose numbers overflow fails alone and stays as it was; the rest of the step commits.
// Also when the slot samples after its tokens (two forward passes in one step: an overflow in the
// second must undo the first).
TEST(ModelRunner, AnOverflowingSlotFailsAloneAndIsUnchanged) {
  // Chunks of 5 with two tokens a step: the weights that overflow are made in the first pass of
  // some steps and the second of others (checked: without the rollback this test fails).
  ModelConfig c = TinyConfig(Variant::kLMM, 2, 5);
  c.memory.theta_max = 1;
  c.memory.theta_bias_init = 10;
  c.memory.eta_bias_init = 10;
  auto unstable = MakeModel(c, 3);
  auto runner = ModelRunner::Create(*unstable, 2);
  ASSERT_TRUE(runner.ok());
  SamplingParams greedy;
  greedy.temperature = 0;
  for (const bool sample : {false, true}) {
    SCOPED_TRACE(sample ? "feed, then sample" : "feed");
    const SlotId calm = *(*runner)->NewSlot(), wild = *(*runner)->NewSlot();
    bool overflowed = false;
    for (int i = 0; i < 200 && !overflowed; ++i) {
      const std::string before = *(*runner)->Export(wild);
      const int64_t position_before = (*runner)->position(wild);
      StepPlan plan;
      // The calm slot restarts every step (a fresh slot), so it never grows enough to overflow.
      (*runner)->Free(calm);
      ASSERT_EQ(*(*runner)->NewSlot(), calm);
      // Sampling: one token, then the drawn one, so the overflow may come in either pass.
      const std::vector<int32_t> tokens = Ids(RandomTokens(1, sample ? 1 : 16, 100 + i));
      plan.work = {Feed(calm, {1, 2, 3}),
                   sample ? Sample(wild, &greedy, tokens) : Feed(wild, tokens)};
      absl::StatusOr<StepResult> r = (*runner)->Step(plan);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_TRUE(r->slots[0].status.ok()) << r->slots[0].status;
      EXPECT_EQ((*runner)->position(calm), 3);
      if (!r->slots[1].status.ok()) {
        overflowed = true;
        EXPECT_EQ(r->slots[1].status.code(), absl::StatusCode::kInternal);
        EXPECT_TRUE(*(*runner)->Export(wild) == before);
        EXPECT_EQ(r->slots[1].position, position_before);
        EXPECT_EQ(r->slots[1].sampled, -1);
      }
    }
    EXPECT_TRUE(overflowed) << "the memory never overflowed";
    (*runner)->Free(calm);
    (*runner)->Free(wild);
  }
}

// Slot bookkeeping, forks, snapshots and blobs.
TEST(ModelRunner, SlotsForksSnapshotsAndBlobsAndSettling) {
  auto model = MakeModel(TinyConfig(Variant::kMAC), 4);
  EXPECT_EQ(ModelRunner::Create(*model, 0).status().code(), absl::StatusCode::kInvalidArgument);
  auto runner = ModelRunner::Create(*model, 3);
  ASSERT_TRUE(runner.ok());
  ModelRunner& r = **runner;
  const SlotId a = *r.NewSlot();
  MustStep(r, {Feed(a, Ids(RandomTokens(1, 11, 3)))});
  EXPECT_EQ(r.position(a), 11);
  EXPECT_GT(r.state_bytes(a), 0);

  // A fork is an equal, independent copy.
  const SlotId f = *r.Fork(a);
  EXPECT_TRUE(*r.Export(f) == *r.Export(a));
  // A snapshot survives the slot moving on and restores it exactly.
  std::shared_ptr<const SlotSnapshot> snap = r.Snapshot(a);
  const std::string at_snapshot = *r.Export(a);
  EXPECT_TRUE(*r.ExportSnapshot(*snap) == at_snapshot);
  EXPECT_EQ(ModelRunner::SnapshotPosition(*snap), 11);
  MustStep(r, {Feed(a, {5, 6, 7})});
  EXPECT_FALSE(*r.Export(a) == at_snapshot);
  EXPECT_TRUE(*r.Export(f) == at_snapshot) << "the fork moved with its source";
  ASSERT_TRUE(r.Restore(a, *snap).ok());
  EXPECT_TRUE(*r.Export(a) == at_snapshot);

  // Full: every way of taking a slot says RESOURCE_EXHAUSTED.
  const SlotId c = *r.FromSnapshot(*snap);
  EXPECT_EQ(r.slots_in_use(), 3);
  EXPECT_EQ(r.NewSlot().status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(r.Fork(a).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(r.Import(at_snapshot).status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(r.FromSnapshot(*snap).status().code(), absl::StatusCode::kResourceExhausted);

  // Blobs: a round trip gives the same bytes and continues identically.
  r.Free(c);
  r.Free(c);  // freeing twice is harmless
  EXPECT_FALSE(r.allocated(c));
  EXPECT_EQ(r.Export(c).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(r.Import("not a state").status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(r.slots_in_use(), 2) << "a refused blob took a slot";
  const SlotId imported = *r.Import(at_snapshot);
  EXPECT_TRUE(*r.Export(imported) == at_snapshot);
  MustStep(r, {Feed(a, {9, 8, 7, 6}), Feed(imported, {9, 8, 7, 6})});
  ExpectSameState(StateOf(r, *model, imported), StateOf(r, *model, a), "imported");

  // Settling (a session at rest) changes no byte of the slot, nor where it goes next; a free
  // slot is ignored.
  const std::string before_settle = *r.Export(a);
  const int64_t bytes_before_settle = r.state_bytes(a);
  r.Settle(a);
  r.Settle(c);
  EXPECT_TRUE(*r.Export(a) == before_settle);
  EXPECT_EQ(r.state_bytes(a), bytes_before_settle);
  MustStep(r, {Feed(a, {1, 2, 3}), Feed(imported, {1, 2, 3})});
  ExpectSameState(StateOf(r, *model, imported), StateOf(r, *model, a), "settled");
}

// Slots are allocated in blocks as they are taken, up to the capacity, lowest id first, and
// freed ids are reused, the most recently freed first.
TEST(ModelRunner, SlotsGrowInBlocksUpToTheCapacity) {
  auto model = MakeModel(TinyConfig(Variant::kLMM, 2));
  const int32_t capacity = ModelRunner::kSlotBlock * 2 + 3;
  std::unique_ptr<ModelRunner> runner = *ModelRunner::Create(*model, capacity);
  ModelRunner& r = *runner;
  EXPECT_EQ(r.capacity(), capacity);
  for (SlotId expected = 0; expected < capacity; ++expected) {
    absl::StatusOr<SlotId> id = r.NewSlot();
    ASSERT_TRUE(id.ok()) << id.status() << " at slot " << expected;
    EXPECT_EQ(*id, expected);
  }
  EXPECT_EQ(r.NewSlot().status().code(), absl::StatusCode::kResourceExhausted);
  r.Free(5);
  r.Free(70);
  EXPECT_EQ(*r.NewSlot(), 70);
  EXPECT_EQ(*r.NewSlot(), 5);
  EXPECT_EQ(r.slots_in_use(), capacity);
}

// Slot operations on other threads while steps run (the engine takes slots on its callers'
// threads): the stepping slot ends exactly where a runner used by one thread puts it.
TEST(ModelRunner, SlotOperationsOnOtherThreadsDuringSteps) {
  auto model = MakeModel(TinyConfig(Variant::kMAG, 2));
  const std::vector<int32_t> tokens = Ids(RandomTokens(1, 96, 17));
  std::unique_ptr<ModelRunner> alone_runner = *ModelRunner::Create(*model, 4);
  ModelRunner& alone = *alone_runner;
  const SlotId reference = *alone.NewSlot();
  for (size_t at = 0; at < tokens.size(); at += 8) {
    MustStep(alone,
             {Feed(reference, std::vector<int32_t>(tokens.begin() + at, tokens.begin() + at + 8))});
  }
  std::unique_ptr<ModelRunner> shared_runner = *ModelRunner::Create(*model, 64);
  ModelRunner& shared = *shared_runner;
  const SlotId stepping = *shared.NewSlot();
  std::atomic<bool> done{false};
  std::thread other([&] {
    int rounds = 0;
    while (!done.load() || rounds < 20) {
      absl::StatusOr<SlotId> a = shared.NewSlot();
      ASSERT_TRUE(a.ok()) << a.status();
      absl::StatusOr<std::string> blob = shared.Export(stepping);
      ASSERT_TRUE(blob.ok()) << blob.status();
      absl::StatusOr<SlotId> b = shared.Import(*blob);
      ASSERT_TRUE(b.ok()) << b.status();
      absl::StatusOr<SlotId> c = shared.Fork(*a);
      ASSERT_TRUE(c.ok()) << c.status();
      shared.Free(*a);
      shared.Free(*b);
      shared.Free(*c);
      ++rounds;
    }
  });
  for (size_t at = 0; at < tokens.size(); at += 8) {
    MustStep(shared,
             {Feed(stepping, std::vector<int32_t>(tokens.begin() + at, tokens.begin() + at + 8))});
  }
  done = true;
  other.join();
  EXPECT_EQ(shared.slots_in_use(), 1);
  EXPECT_TRUE(*shared.Export(stepping) == *alone.Export(reference));
}

}  // namespace
}  // namespace titans
