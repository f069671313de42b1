// The batched CPU memory kernel against the plain LibTorch reference (MemoryWriteReadTorch, one
// session at a time): ragged batches, chunk-closing edges, multi-chunk appends, depth 1..4; plus
// batch invariance (bit-identical alone or with any neighbours, in any order, on any thread count)
// and every instruction set this CPU has.
#include "kernels/memory_kernel.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstring>
#include <numeric>
#include <random>

#include "kernels/state_pool.h"
#include "model/memory_math.h"

namespace titans::kernels {
namespace {

struct Shape {
  int depth, head_dim, hidden, chunk;
  bool gelu, residual;
};

// One session's inputs for one call, head-major for the reference ([H, n, d]) and token-major
// for the pool ([n, H, d]).
struct CallInputs {
  at::Tensor k, v, q, log_keep, log_eta, theta;  // [H, n, d] / [H, n]
  at::Tensor k_t, v_t, q_t, lk_t, le_t, th_t;    // token-major copies
};

CallInputs MakeInputs(int heads, int n, int d, std::mt19937& rng) {
  at::Generator gen = at::detail::createCPUGenerator(rng());
  auto randn = [&](at::IntArrayRef shape) { return at::normal(0.0, 1.0, shape, gen); };
  CallInputs in;
  in.k = randn({heads, n, d});
  in.k = in.k / in.k.norm(2, 2, true);
  in.q = randn({heads, n, d});
  in.q = in.q / in.q.norm(2, 2, true);
  in.v = randn({heads, n, d}) * 0.5;
  in.log_keep = at::log_sigmoid(-(randn({heads, n}) - 3));
  in.log_eta = at::log_sigmoid(randn({heads, n}) + 1.5);
  in.theta = 0.2 * at::sigmoid(randn({heads, n}));
  in.k_t = in.k.transpose(0, 1).contiguous();
  in.v_t = in.v.transpose(0, 1).contiguous();
  in.q_t = in.q.transpose(0, 1).contiguous();
  in.lk_t = in.log_keep.t().contiguous();
  in.le_t = in.log_eta.t().contiguous();
  in.th_t = in.theta.t().contiguous();
  return in;
}

MemorySpec SpecOf(const Shape& s) {
  return MemorySpec{s.depth, s.gelu ? Activation::kGELU : Activation::kSiLU, s.residual, s.chunk};
}

MemoryShape KernelShape(const Shape& s) {
  MemoryShape m;
  m.depth = s.depth;
  m.head_dim = s.head_dim;
  m.hidden = s.depth > 1 ? s.hidden : s.head_dim;
  m.chunk = s.chunk;
  m.gelu = s.gelu;
  m.residual = s.residual;
  return m;
}

std::vector<at::Tensor> RandomInit(const Shape& s, int heads, uint64_t seed) {
  at::Generator gen = at::detail::createCPUGenerator(seed);
  std::vector<at::Tensor> init;
  const MemoryShape m = KernelShape(s);
  for (int l = 0; l < s.depth; ++l) {
    init.push_back(
        at::normal(0.0, 1.0 / std::sqrt(double(m.in(l))), {heads, m.out(l), m.in(l)}, gen));
  }
  return init;
}

double MaxRelDiff(const float* got, const at::Tensor& want) {
  at::Tensor w = want.contiguous();
  at::Tensor g = at::from_blob(const_cast<float*>(got), w.sizes(), at::kFloat);
  return ((g - w).abs().max() / (1 + w.abs().max())).item<double>();
}

// A set of sessions advanced both through the pool (batched kernel) and the reference.
class Harness {
 public:
  Harness(const Shape& s, int sessions, int heads, uint64_t seed)
      : shape_(s), heads_(heads), pool_(PoolShape{KernelShape(s), 1, heads}, sessions + 2) {
    for (int i = 0; i < sessions; ++i) {
      std::vector<at::Tensor> init = RandomInit(s, heads, seed + i);
      std::vector<const float*> ptrs;
      for (auto& t : init) ptrs.push_back(t.data_ptr<float>());
      slots_.push_back(*pool_.Allocate());
      pool_.Reset(slots_.back(), {ptrs});
      ref_.push_back(NewMemoryState(init));
    }
  }

  // Runs one batch: session i gets lengths[i] tokens (0 = not in the batch), in `order`.
  // Returns the kernel outputs (token-major) per session.
  std::vector<at::Tensor> Step(const std::vector<int>& lengths, const std::vector<int>& order,
                               std::vector<CallInputs>& inputs, int threads = 0,
                               bool check = true) {
    std::vector<PoolWorkItem> items;
    std::vector<at::Tensor> outputs(lengths.size());
    for (int i : order) {
      if (lengths[i] == 0) continue;
      outputs[i] = at::zeros({lengths[i], heads_, shape_.head_dim});
      PoolWorkItem item;
      item.slot = slots_[i];
      item.n = lengths[i];
      item.keys = inputs[i].k_t.data_ptr<float>();
      item.values = inputs[i].v_t.data_ptr<float>();
      item.queries = inputs[i].q_t.data_ptr<float>();
      item.log_keep = inputs[i].lk_t.data_ptr<float>();
      item.log_eta = inputs[i].le_t.data_ptr<float>();
      item.theta = inputs[i].th_t.data_ptr<float>();
      item.output = outputs[i].data_ptr<float>();
      items.push_back(item);
    }
    RunPoolLayer(pool_, 0, items.data(), static_cast<int64_t>(items.size()), threads);
    if (!check) return outputs;
    for (size_t i = 0; i < lengths.size(); ++i) {
      if (lengths[i] == 0) continue;
      const CallInputs& in = inputs[i];
      at::Tensor y = MemoryWriteReadTorch(SpecOf(shape_), &ref_[i], in.k, in.v, in.q,
                                          MemoryGates{in.log_keep, in.log_eta, in.theta});
      EXPECT_LT(MaxRelDiff(outputs[i].data_ptr<float>(), y.transpose(0, 1)), 2e-5)
          << "session " << i << " n " << lengths[i];
      CompareState(static_cast<int>(i));
    }
    return outputs;
  }

  void CompareState(int i) {
    const MemoryShape m = KernelShape(shape_);
    ASSERT_EQ(pool_.pending(slots_[i], 0), ref_[i].pending());
    const int p = pool_.pending(slots_[i], 0);
    for (int h = 0; h < heads_; ++h) {
      for (int l = 0; l < shape_.depth; ++l) {
        EXPECT_LT(MaxRelDiff(pool_.weights(slots_[i], 0, h, l), ref_[i].weights[l][h]), 2e-5);
        EXPECT_LT(MaxRelDiff(pool_.momentum(slots_[i], 0, h, l), ref_[i].momentum[l][h]), 2e-5);
        if (p > 0) {
          EXPECT_LT(
              MaxRelDiff(pool_.pending_inputs(slots_[i], 0, h, l), ref_[i].pending_inputs[l][h]),
              2e-5);
          EXPECT_LT(
              MaxRelDiff(pool_.pending_deltas(slots_[i], 0, h, l), ref_[i].pending_deltas[l][h]),
              2e-5);
        }
      }
    }
    (void)m;
  }

  StatePool& pool() { return pool_; }
  int64_t slot(int i) const { return slots_[i]; }

 private:
  Shape shape_;
  int heads_;
  StatePool pool_;
  std::vector<int64_t> slots_;
  std::vector<MemoryState> ref_;
};

class KernelVsReference : public ::testing::TestWithParam<Shape> {};

// fp32 kernel vs fp32 LibTorch: same algebra, different summation order (and double-precision
// gate coefficients in the kernel). 2e-5 relative to the largest value over several closed chunks.
TEST_P(KernelVsReference, RaggedBatchesMatchReference) {
  const Shape s = GetParam();
  const int sessions = 5, heads = 2, b = s.chunk;
  Harness h(s, sessions, heads, 100 + s.depth);
  std::mt19937 rng(s.depth * 7 + b);
  std::vector<int> order(sessions);
  std::iota(order.begin(), order.end(), 0);
  std::vector<int> position(sessions, 0);
  for (int round = 0; round < 8; ++round) {
    std::vector<int> lengths(sessions);
    for (int i = 0; i < sessions; ++i) {
      const int p = position[i] % b;
      switch ((round + i) % 6) {
        case 0:
          lengths[i] = 1;
          break;  // decode
        case 1:
          lengths[i] = b - p;
          break;  // exactly closes the chunk
        case 2:
          lengths[i] = 3 * b + 5;
          break;  // spans several chunks
        case 3:
          lengths[i] = 0;
          break;  // not in this batch
        case 4:
          lengths[i] = std::max(1, b - p - 1);
          break;  // stops one short of closing
        default:
          lengths[i] = 1 + rng() % (2 * b);
          break;
      }
      position[i] += lengths[i];
    }
    std::shuffle(order.begin(), order.end(), rng);
    std::vector<CallInputs> inputs;
    for (int i = 0; i < sessions; ++i) {
      inputs.push_back(MakeInputs(heads, std::max(1, lengths[i]), s.head_dim, rng));
    }
    h.Step(lengths, order, inputs);
    if (HasFailure()) return;
  }
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, KernelVsReference,
    ::testing::Values(Shape{1, 16, 16, 4, false, false}, Shape{2, 16, 32, 4, false, false},
                      Shape{3, 16, 32, 5, true, true}, Shape{4, 16, 32, 4, false, false},
                      Shape{2, 32, 128, 16, false, false}, Shape{2, 64, 256, 16, true, true},
                      Shape{2, 32, 128, 1, false, false}),
    [](const ::testing::TestParamInfo<Shape>& info) {
      const Shape& s = info.param;
      return "depth" + std::to_string(s.depth) + "_d" + std::to_string(s.head_dim) + "_h" +
             std::to_string(s.hidden) + "_b" + std::to_string(s.chunk) + (s.gelu ? "_gelu" : "") +
             (s.residual ? "_res" : "");
    });

bool BitEqual(const at::Tensor& a, const at::Tensor& b) {
  return a.sizes() == b.sizes() &&
         std::memcmp(a.data_ptr(), b.data_ptr(), a.numel() * sizeof(float)) == 0;
}

// A session's results do not depend on its neighbours, their order or the thread count.
TEST(BatchInvariance, BitIdenticalAloneOrWithNeighbours) {
  const Shape s{2, 32, 128, 16, false, false};
  const int sessions = 9, heads = 4;
  std::mt19937 rng(5);
  std::vector<std::vector<CallInputs>> rounds;
  std::vector<std::vector<int>> lengths;
  for (int r = 0; r < 4; ++r) {
    std::vector<CallInputs> in;
    std::vector<int> len;
    for (int i = 0; i < sessions; ++i) {
      len.push_back(i == 0 ? 7 + r * 11 : 1 + rng() % 40);
      in.push_back(MakeInputs(heads, len.back(), s.head_dim, rng));
    }
    rounds.push_back(in);
    lengths.push_back(len);
  }
  // Session 0 alone, single thread.
  Harness alone(s, sessions, heads, 9);
  std::vector<at::Tensor> alone_out;
  for (int r = 0; r < 4; ++r) {
    std::vector<int> len(sessions, 0);
    len[0] = lengths[r][0];
    alone_out.push_back(alone.Step(len, {0}, rounds[r], 1, false)[0]);
  }
  for (int trial = 0; trial < 3; ++trial) {
    Harness crowd(s, sessions, heads, 9);
    for (int r = 0; r < 4; ++r) {
      std::vector<int> order(sessions);
      std::iota(order.begin(), order.end(), 0);
      std::shuffle(order.begin(), order.end(), rng);
      auto out = crowd.Step(lengths[r], order, rounds[r], trial == 0 ? 1 : 0, false);
      EXPECT_TRUE(BitEqual(out[0], alone_out[r])) << "trial " << trial << " round " << r;
    }
    const MemoryShape m = KernelShape(s);
    for (int head = 0; head < heads; ++head) {
      for (int l = 0; l < s.depth; ++l) {
        EXPECT_EQ(std::memcmp(crowd.pool().weights(crowd.slot(0), 0, head, l),
                              alone.pool().weights(alone.slot(0), 0, head, l),
                              sizeof(float) * m.weight_size(l)),
                  0);
        EXPECT_EQ(std::memcmp(crowd.pool().momentum(crowd.slot(0), 0, head, l),
                              alone.pool().momentum(alone.slot(0), 0, head, l),
                              sizeof(float) * m.weight_size(l)),
                  0);
      }
    }
  }
}

// Every instruction set this CPU supports agrees with the reference.
TEST(Isa, EverySupportedIsaMatchesReference) {
  const Shape s{2, 32, 128, 16, false, false};
  const MemoryShape m = KernelShape(s);
  const int heads = 2, n = 37;
  std::mt19937 rng(3);
  CallInputs in = MakeInputs(heads, n, s.head_dim, rng);
  std::vector<at::Tensor> init = RandomInit(s, heads, 1);
  MemoryState ref = NewMemoryState(init);
  at::Tensor y_ref = MemoryWriteReadTorch(SpecOf(s), &ref, in.k, in.v, in.q,
                                          MemoryGates{in.log_keep, in.log_eta, in.theta});
  int ran = 0;
  for (const char* isa : {"avx512", "avx2", "generic"}) {
    PoolShape ps{m, 1, heads};
    StatePool pool(ps, 1);
    const int64_t slot = *pool.Allocate();
    std::vector<const float*> ptrs;
    for (auto& t : init) ptrs.push_back(t.data_ptr<float>());
    pool.Reset(slot, {ptrs});
    at::Tensor y = at::zeros({n, heads, s.head_dim});
    std::vector<MemoryTask> tasks;
    for (int h = 0; h < heads; ++h) {
      MemoryTask t = pool.Task(slot, 0, h, n);
      t.keys = in.k_t.data_ptr<float>() + h * s.head_dim;
      t.values = in.v_t.data_ptr<float>() + h * s.head_dim;
      t.queries = in.q_t.data_ptr<float>() + h * s.head_dim;
      t.kvq_stride = heads * s.head_dim;
      t.log_keep = in.lk_t.data_ptr<float>() + h;
      t.log_eta = in.le_t.data_ptr<float>() + h;
      t.theta = in.th_t.data_ptr<float>() + h;
      t.gate_stride = heads;
      t.output = y.data_ptr<float>() + h * s.head_dim;
      t.output_stride = heads * s.head_dim;
      tasks.push_back(t);
    }
    if (!RunMemoryTasksOnIsa(isa, m, tasks.data(), heads)) continue;
    ++ran;
    EXPECT_LT(MaxRelDiff(y.data_ptr<float>(), y_ref.transpose(0, 1)), 2e-5) << isa;
  }
  EXPECT_GE(ran, 1);
  EXPECT_FALSE(MemoryKernelIsa().empty());
}

TEST(StatePool, AllocateFreeAndCapacity) {
  StatePool pool(PoolShape{MemoryShape{}, 2, 4}, 3);
  EXPECT_EQ(pool.capacity(), 3);
  auto a = pool.Allocate(), b = pool.Allocate(), c = pool.Allocate();
  ASSERT_TRUE(a && b && c);
  EXPECT_FALSE(pool.Allocate().has_value());
  EXPECT_EQ(pool.in_use(), 3);
  pool.Free(*b);
  auto d = pool.Allocate();
  ASSERT_TRUE(d.has_value());
  EXPECT_EQ(*d, *b);
  // Slots are 64-byte aligned and do not overlap.
  EXPECT_EQ(reinterpret_cast<uintptr_t>(pool.weights(*a, 0, 0, 0)) % 64, 0u);
  EXPECT_EQ(pool.weights(*b, 0, 0, 0) - pool.weights(*a, 0, 0, 0),
            static_cast<std::ptrdiff_t>(pool.SlotBytes() / sizeof(float)) * (*b - *a));
}

}  // namespace
}  // namespace titans::kernels
