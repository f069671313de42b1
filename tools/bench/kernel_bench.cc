// titans-bench-kernels: the batched memory kernel against the per-session LibTorch reference,
// the machine's GEMM peak and its memory bandwidth, all measured in one run.
//
//   build/tools/titans-bench-kernels [--benchmark_filter=...] [--benchmark_out=results.json]
//
// Cases (shape "default": head_dim 32, hidden 128; "large": head_dim 128, hidden 512; 4 heads,
// memory depth 2, chunk 16; one model layer):
//   Decode/<shape>/<sessions>         1 token for each of 1..256 sessions per step
//   Append<tokens>/<shape>/<sessions> 64 or 1024 tokens for each of 1..64 sessions per step
//   Reference*                        the same work through MemoryWriteReadTorch, one session
//                                     at a time (LibTorch, the plain reference)
//   PeakSgemm2048                     a 2048^3 sgemm through LibTorch (at::mm)
//   KernelGemmBlock                   the kernel's own GEMM building block on cache-resident data
//   MemoryBandwidth                   streaming read of a 1 GiB buffer
//   Linear{Invariant,Torch}/<M>/<K>/<N> the batch-invariant linear kernel vs at::linear (BLAS)
//                                     on the model's projection shapes (M rows = tokens in a step)
// After the runs a summary prints the ratios the kernel is judged by.
#include <benchmark/benchmark.h>
#include <torch/torch.h>

#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "kernels/linear.h"
#include "kernels/memory_kernel.h"
#include "kernels/memory_kernel_cuda.h"
#include "kernels/state_pool.h"
#include "kernels/thread_pool.h"
#include "model/memory_math.h"

#ifdef TITANS_WITH_CUDA_KERNELS
#include <cuda_runtime_api.h>
#endif

namespace titans::kernels {
namespace {

constexpr int kHeads = 4;

MemoryShape ShapeNamed(const std::string& name) {
  MemoryShape s;
  s.depth = 2;
  s.chunk = 16;
  s.head_dim = name == "large" ? 128 : 32;
  s.hidden = name == "large" ? 512 : 128;
  return s;
}

// Inputs for `sessions` x `tokens`, token-major per session ([n, H, d] and [n, H]).
struct Inputs {
  at::Tensor k, v, q, lk, le, th, out;  // [S, n, H, d] / [S, n, H]
};

Inputs MakeInputs(const MemoryShape& s, int sessions, int tokens) {
  torch::manual_seed(1);
  Inputs in;
  in.k = torch::randn({sessions, tokens, kHeads, s.head_dim});
  in.k = in.k / in.k.norm(2, 3, true);
  in.q = torch::randn({sessions, tokens, kHeads, s.head_dim});
  in.q = in.q / in.q.norm(2, 3, true);
  in.v = torch::randn({sessions, tokens, kHeads, s.head_dim}) * 0.5;
  in.lk = at::log_sigmoid(-(torch::randn({sessions, tokens, kHeads}) - 3));
  in.le = at::log_sigmoid(torch::randn({sessions, tokens, kHeads}) + 1.5);
  in.th = 0.1 * torch::sigmoid(torch::randn({sessions, tokens, kHeads}));
  in.out = torch::zeros({sessions, tokens, kHeads, s.head_dim});
  return in;
}

std::vector<at::Tensor> InitialWeights(const MemoryShape& s) {
  std::vector<at::Tensor> init;
  for (int l = 0; l < s.depth; ++l) {
    init.push_back(torch::randn({kHeads, s.out(l), s.in(l)}) / std::sqrt(double(s.in(l))));
  }
  return init;
}

// Bytes of state one task streams per step when it closes no chunk (W and S of every layer).
double StateBytesPerTask(const MemoryShape& s) {
  double floats = 0;
  for (int l = 0; l < s.depth; ++l) floats += 2.0 * s.weight_size(l);
  return floats * sizeof(float);
}

void SetCounters(benchmark::State& state, const MemoryShape& s, int sessions, int tokens,
                 double flops_per_step) {
  const double steps = static_cast<double>(state.iterations());
  state.counters["tokens/s"] =
      benchmark::Counter(steps * sessions * tokens, benchmark::Counter::kIsRate);
  state.counters["GFLOP/s"] =
      benchmark::Counter(steps * flops_per_step / 1e9, benchmark::Counter::kIsRate);
  if (tokens == 1) {
    state.counters["state_GB/s"] = benchmark::Counter(
        steps * sessions * kHeads * StateBytesPerTask(s) / 1e9, benchmark::Counter::kIsRate);
  }
}

double StepFlops(const MemoryShape& s, int sessions, int tokens, int pending) {
  return sessions * kHeads * MemoryTaskFlops(s, pending, tokens);
}

// The batched kernel over a state pool: one step = every session's `tokens` new tokens.
void BM_Kernel(benchmark::State& state, std::string shape_name, int tokens) {
  const MemoryShape s = ShapeNamed(shape_name);
  const int sessions = static_cast<int>(state.range(0));
  StatePool pool(PoolShape{s, 1, kHeads}, sessions);
  std::vector<at::Tensor> init = InitialWeights(s);
  std::vector<const float*> ptrs;
  for (auto& t : init) ptrs.push_back(t.data_ptr<float>());
  std::vector<PoolWorkItem> items(sessions);
  Inputs in = MakeInputs(s, sessions, tokens);
  for (int i = 0; i < sessions; ++i) {
    const int64_t slot = *pool.Allocate();
    pool.Reset(slot, {ptrs});
    PoolWorkItem& it = items[i];
    it.slot = slot;
    it.n = tokens;
    it.keys = in.k[i].data_ptr<float>();
    it.values = in.v[i].data_ptr<float>();
    it.queries = in.q[i].data_ptr<float>();
    it.log_keep = in.lk[i].data_ptr<float>();
    it.log_eta = in.le[i].data_ptr<float>();
    it.theta = in.th[i].data_ptr<float>();
    it.output = in.out[i].data_ptr<float>();
  }
  double flops = 0;
  for (auto _ : state) {
    flops += StepFlops(s, sessions, tokens, pool.pending(items[0].slot, 0));
    RunPoolLayer(pool, 0, items.data(), sessions);
  }
  SetCounters(state, s, sessions, tokens, flops / std::max<double>(1, state.iterations()));
}

// The plain LibTorch reference, one session at a time (G = heads groups per call).
void BM_Reference(benchmark::State& state, std::string shape_name, int tokens) {
  const MemoryShape s = ShapeNamed(shape_name);
  const int sessions = static_cast<int>(state.range(0));
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> init = InitialWeights(s);
  std::vector<MemoryState> states(sessions, NewMemoryState(init));
  Inputs in = MakeInputs(s, sessions, tokens);
  // Head-major per session: [H, n, d], gates [H, n].
  std::vector<std::vector<at::Tensor>> per(sessions);
  for (int i = 0; i < sessions; ++i) {
    per[i] = {in.k[i].transpose(0, 1).contiguous(),
              in.v[i].transpose(0, 1).contiguous(),
              in.q[i].transpose(0, 1).contiguous(),
              in.lk[i].t().contiguous(),
              in.le[i].t().contiguous(),
              in.th[i].t().contiguous()};
  }
  const MemorySpec spec{s.depth, Activation::kSiLU, false, s.chunk};
  double flops = 0;
  for (auto _ : state) {
    flops += StepFlops(s, sessions, tokens, static_cast<int>(states[0].pending()));
    for (int i = 0; i < sessions; ++i) {
      const auto& p = per[i];
      benchmark::DoNotOptimize(
          MemoryWriteReadTorch(spec, &states[i], p[0], p[1], p[2], MemoryGates{p[3], p[4], p[5]}));
    }
  }
  SetCounters(state, s, sessions, tokens, flops / std::max<double>(1, state.iterations()));
}

#ifdef TITANS_WITH_CUDA_KERNELS
// The CUDA kernel: every session's state and inputs in device memory, one launch per step.
void BM_CudaKernel(benchmark::State& state, std::string shape_name, int tokens) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    state.SkipWithError("no GPU");
    return;
  }
  const MemoryShape s = ShapeNamed(shape_name);
  const int sessions = static_cast<int>(state.range(0));
  const int64_t tasks_n = int64_t{sessions} * kHeads;
  // Per task: W, S per layer, pending rows, gates; then inputs and outputs.
  int64_t per_task = 3 * int64_t{s.chunk};
  for (int l = 0; l < s.depth; ++l) {
    per_task += 2 * s.weight_size(l) + int64_t{s.chunk} * (s.in(l) + s.out(l));
  }
  per_task += int64_t{tokens} * (4 * s.head_dim + 3);
  float* base = nullptr;
  const size_t bytes = sizeof(float) * per_task * tasks_n;
  if (cudaMalloc(reinterpret_cast<void**>(&base), bytes) != cudaSuccess) {
    state.SkipWithError("cudaMalloc failed");
    return;
  }
  // Small random-ish contents: weights 0.01, inputs 0.1, gates mild.
  std::vector<float> host(per_task * tasks_n, 0.01f);
  cudaMemcpy(base, host.data(), bytes, cudaMemcpyHostToDevice);
  std::vector<MemoryTask> tasks(tasks_n);
  for (int64_t i = 0; i < tasks_n; ++i) {
    float* p = base + i * per_task;
    MemoryTask& t = tasks[i];
    for (int l = 0; l < s.depth; ++l) {
      t.weights_in[l] = t.weights_out[l] = p;
      p += s.weight_size(l);
      t.momentum_in[l] = t.momentum_out[l] = p;
      p += s.weight_size(l);
      t.pending_inputs_in[l] = t.pending_inputs_out[l] = p;
      p += int64_t{s.chunk} * s.in(l);
      t.pending_deltas_in[l] = t.pending_deltas_out[l] = p;
      p += int64_t{s.chunk} * s.out(l);
    }
    t.pending_gates_in = t.pending_gates_out = p;
    p += 3 * s.chunk;
    t.n = tokens;
    t.keys = p;
    t.values = p + int64_t{tokens} * s.head_dim;
    t.queries = p + 2 * int64_t{tokens} * s.head_dim;
    t.output = const_cast<float*>(p + 3 * int64_t{tokens} * s.head_dim);
    t.kvq_stride = t.output_stride = s.head_dim;
    const float* g = p + 4 * int64_t{tokens} * s.head_dim;
    t.log_keep = g;
    t.log_eta = g + tokens;
    t.theta = g + 2 * tokens;
    t.gate_stride = 1;
  }
  int pending = 0;
  double flops = 0;
  for (auto _ : state) {
    for (MemoryTask& t : tasks) t.pending_in = pending;
    flops += StepFlops(s, sessions, tokens, pending);
    const std::string err = RunMemoryTasksCuda(s, tasks.data(), tasks_n, nullptr);
    cudaDeviceSynchronize();
    if (!err.empty()) {
      state.SkipWithError(err.c_str());
      break;
    }
    pending = (pending + tokens) % s.chunk;
  }
  cudaFree(base);
  SetCounters(state, s, sessions, tokens, flops / std::max<double>(1, state.iterations()));
}
#endif

void BM_PeakSgemm2048(benchmark::State& state) {
  at::Tensor a = torch::randn({2048, 2048}), b = torch::randn({2048, 2048});
  for (auto _ : state) benchmark::DoNotOptimize(at::mm(a, b));
  state.counters["GFLOP/s"] = benchmark::Counter(
      2.0 * 2048 * 2048 * 2048 * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

// The kernel's building block (one chunk of keys through a 128x32 layer), repeated on
// L1-resident data: the ceiling of this code on this CPU, single-threaded.
void BM_KernelGemmBlock(benchmark::State& state) {
  MemoryShape s = ShapeNamed("default");
  StatePool pool(PoolShape{s, 1, 1}, 1);
  const int64_t slot = *pool.Allocate();
  std::vector<at::Tensor> init = InitialWeights(s);
  std::vector<const float*> ptrs;
  for (auto& t : init) ptrs.push_back(t.data_ptr<float>());
  pool.Reset(slot, {ptrs});
  Inputs in = MakeInputs(s, 1, 16);
  double flops = 0;
  for (auto _ : state) {
    MemoryTask t = pool.Task(slot, 0, 0, 16);
    t.keys = in.k.data_ptr<float>();
    t.values = in.v.data_ptr<float>();
    t.queries = in.q.data_ptr<float>();
    t.kvq_stride = int64_t{kHeads} * s.head_dim;
    t.log_keep = in.lk.data_ptr<float>();
    t.log_eta = in.le.data_ptr<float>();
    t.theta = in.th.data_ptr<float>();
    t.gate_stride = kHeads;
    t.output = in.out.data_ptr<float>();
    t.output_stride = int64_t{kHeads} * s.head_dim;
    RunMemoryTasks(s, &t, 1, 1);
    pool.Advance(slot, 0, 16);
    flops += MemoryTaskFlops(s, 0, 16);
  }
  state.counters["GFLOP/s"] = benchmark::Counter(flops / 1e9, benchmark::Counter::kIsRate);
}

void BM_MemoryBandwidth(benchmark::State& state) {
  const size_t n = size_t{1} << 27;  // 1 GiB of 64-bit words, far beyond the caches
  std::vector<uint64_t> buf(n, 1);
  ThreadPool& pool = ThreadPool::Default();  // all cores, as the kernel uses them
  for (auto _ : state) {
    std::vector<uint64_t> totals(pool.size(), 0);
    pool.ParallelFor(pool.size(), pool.size(), [&](int64_t begin, int64_t end) {
      for (int64_t part = begin; part < end; ++part) {
        // Eight independent integer accumulators: the compiler vectorises this into a stream.
        uint64_t acc[8] = {};
        const size_t lo = n * part / pool.size(), hi = n * (part + 1) / pool.size();
        for (size_t i = lo; i + 8 <= hi; i += 8) {
          for (int j = 0; j < 8; ++j) acc[j] += buf[i + j];
        }
        for (uint64_t a : acc) totals[part] += a;
      }
    });
    benchmark::DoNotOptimize(totals.data());
  }
  state.counters["GB/s"] = benchmark::Counter(
      double(n) * sizeof(uint64_t) * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

// Y[M, N] = X[M, K] W[N, K]^T: the batch-invariant kernel or LibTorch's GEMM (BLAS).
void BM_Linear(benchmark::State& state, bool invariant) {
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  at::manual_seed(0);
  at::NoGradGuard no_grad;
  const at::Tensor x = at::randn({m, k}), w = at::randn({n, k});
  at::Tensor y = at::empty({m, n});
  for (auto _ : state) {
    if (invariant) {
      InvariantLinear(x.data_ptr<float>(), m, k, w.data_ptr<float>(), n, y.data_ptr<float>());
    } else {
      y = at::matmul(x, w.t());
    }
    benchmark::DoNotOptimize(y.data_ptr<float>());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * m * k * n * state.iterations() / 1e9, benchmark::Counter::kIsRate);
}

// Keeps each run's counters so the summary can print ratios measured in this same process.
class RatioReporter : public benchmark::ConsoleReporter {
 public:
  RatioReporter() : ConsoleReporter(OO_Tabular) {}  // no colour codes: the output is committed
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      // Drop the "/min_time:..." suffix Google Benchmark appends to the name.
      std::string name = run.benchmark_name();
      name = name.substr(0, name.find("/min_time"));
      for (const auto& [counter_name, counter] : run.counters) {
        values_[name][counter_name] = counter.value;
      }
    }
    ConsoleReporter::ReportRuns(runs);
  }
  double Get(const std::string& bench, const std::string& counter) const {
    auto it = values_.find(bench);
    if (it == values_.end()) return 0;
    auto c = it->second.find(counter);
    return c == it->second.end() ? 0 : c->second;
  }

 private:
  std::map<std::string, std::map<std::string, double>> values_;
};

void RegisterAll() {
  for (std::string shape : {"default", "large"}) {
    const std::vector<int64_t> decode = {1, 4, 16, 64, 256};
    auto* k = benchmark::RegisterBenchmark(("Decode/" + shape).c_str(), BM_Kernel, shape, 1);
    auto* r =
        benchmark::RegisterBenchmark(("ReferenceDecode/" + shape).c_str(), BM_Reference, shape, 1);
    for (int64_t n : decode) {
      k->Arg(n);
      if (n <= 64) r->Arg(n);
    }
    for (int tokens : {64, 1024}) {
      const std::string name = "Append" + std::to_string(tokens) + "/" + shape;
      auto* ka = benchmark::RegisterBenchmark(name.c_str(), BM_Kernel, shape, tokens);
      auto* ra =
          benchmark::RegisterBenchmark(("Reference" + name).c_str(), BM_Reference, shape, tokens);
      // Keep the large shape's 1024-token appends to a few seconds per case.
      const int64_t max_sessions = (shape == "large" && tokens == 1024) ? 16 : 64;
      for (int64_t n : {1, 4, 16, 64}) {
        if (n > max_sessions) continue;
        ka->Arg(n);
        if (n == 1 || n == max_sessions) ra->Arg(n);
      }
    }
    for (auto* b : {k, r}) b->Unit(benchmark::kMicrosecond)->MinTime(0.2);
  }
#ifdef TITANS_WITH_CUDA_KERNELS
  // GPU cases only where the build has the CUDA kernels; they skip when no GPU is present.
  for (std::string shape : {"default", "large"}) {
    auto* d =
        benchmark::RegisterBenchmark(("CudaDecode/" + shape).c_str(), BM_CudaKernel, shape, 1);
    for (int64_t n : {1, 64, 256, 1024}) d->Arg(n);
    for (int tokens : {64, 1024}) {
      auto* a = benchmark::RegisterBenchmark(
          ("CudaAppend" + std::to_string(tokens) + "/" + shape).c_str(), BM_CudaKernel, shape,
          tokens);
      for (int64_t n : {1, 64}) a->Arg(n);
    }
  }
#endif
  // The default model's projections: d 128 -> 128 (q/k/v/o), 128 -> 384 (SwiGLU), 384 -> 128.
  for (bool invariant : {true, false}) {
    auto* b = benchmark::RegisterBenchmark(invariant ? "LinearInvariant" : "LinearTorch", BM_Linear,
                                           invariant);
    for (int64_t m : {1, 64, 512}) {
      b->Args({m, 128, 128})->Args({m, 128, 384})->Args({m, 384, 128});
    }
    b->Unit(benchmark::kMicrosecond)->MinTime(0.1);
  }
  benchmark::RegisterBenchmark("PeakSgemm2048", BM_PeakSgemm2048)->Unit(benchmark::kMillisecond);
  benchmark::RegisterBenchmark("KernelGemmBlock", BM_KernelGemmBlock)->MinTime(0.2);
  benchmark::RegisterBenchmark("MemoryBandwidth", BM_MemoryBandwidth)
      ->Unit(benchmark::kMillisecond);
}

void PrintSummary(const RatioReporter& r) {
  const double peak = r.Get("PeakSgemm2048", "GFLOP/s");
  const double block = r.Get("KernelGemmBlock", "GFLOP/s");
  const double bw = r.Get("MemoryBandwidth", "GB/s");
  std::printf("\n== Summary (kernel ISA %s, %d threads) ==\n", MemoryKernelIsa().c_str(),
              ThreadPool::Default().size());
  std::printf(
      "machine: sgemm 2048^3 peak %.1f GFLOP/s; kernel GEMM block %.1f GFLOP/s "
      "(1 thread); memory read bandwidth %.1f GB/s\n",
      peak, block, bw);
  for (int64_t m : {1, 64, 512}) {
    for (auto [k, n] : {std::pair<int64_t, int64_t>{128, 128}, {128, 384}, {384, 128}}) {
      const std::string args =
          "/" + std::to_string(m) + "/" + std::to_string(k) + "/" + std::to_string(n);
      const double inv = r.Get("LinearInvariant" + args, "GFLOP/s");
      const double blas = r.Get("LinearTorch" + args, "GFLOP/s");
      if (inv > 0 && blas > 0) {
        std::printf(
            "linear M=%lld K=%lld N=%lld: invariant %.1f GFLOP/s vs LibTorch %.1f = %.2fx\n",
            static_cast<long long>(m), static_cast<long long>(k), static_cast<long long>(n), inv,
            blas, inv / blas);
      }
    }
  }
  for (std::string shape : {"default", "large"}) {
    const std::string d64 = "Decode/" + shape + "/64", r64 = "ReferenceDecode/" + shape + "/64";
    const double kd = r.Get(d64, "tokens/s"), rd = r.Get(r64, "tokens/s");
    if (kd > 0 && rd > 0) {
      std::printf(
          "[%s] decode, 64 sessions: %.0f tok/s vs reference %.0f tok/s = %.1fx "
          "(target >= 10x)\n",
          shape.c_str(), kd, rd, kd / rd);
    }
    const double sbw = r.Get(d64, "state_GB/s");
    if (sbw > 0 && bw > 0) {
      std::printf(
          "[%s] decode, 64 sessions: state streamed at %.1f GB/s = %.2fx of measured "
          "bandwidth (target >= 0.5x, i.e. within 2x of the bound)\n",
          shape.c_str(), sbw, sbw / bw);
      // A decode token must read every head's W and S once (the dual-form read uses both), so
      // no kernel can beat bandwidth / state bytes; this says whether 10x is reachable at all.
      const double ceiling = bw * 1e9 / (kHeads * StateBytesPerTask(ShapeNamed(shape)));
      if (rd > 0) {
        std::printf(
            "[%s] decode bound: %.0f tok/s at measured bandwidth (%.2f MiB of state per token) "
            "= %.1fx the reference at most\n",
            shape.c_str(), ceiling, kHeads * StateBytesPerTask(ShapeNamed(shape)) / (1 << 20),
            ceiling / rd);
      }
    }
    for (int tokens : {64, 1024}) {
      const int64_t sessions = (shape == "large" && tokens == 1024) ? 16 : 64;
      const std::string name =
          "Append" + std::to_string(tokens) + "/" + shape + "/" + std::to_string(sessions);
      const double g = r.Get(name, "GFLOP/s");
      const double ref = r.Get("Reference" + name, "GFLOP/s");
      if (g > 0 && peak > 0) {
        std::printf(
            "[%s] append %d x %lld sessions: %.1f GFLOP/s = %.0f%% of sgemm peak "
            "(target >= 50%%); %.1fx the reference\n",
            shape.c_str(), tokens, static_cast<long long>(sessions), g, 100 * g / peak,
            ref > 0 ? g / ref : 0);
      }
    }
  }
}

}  // namespace
}  // namespace titans::kernels

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  titans::kernels::RegisterAll();
  titans::kernels::RatioReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);
  titans::kernels::PrintSummary(reporter);
  benchmark::Shutdown();
  return 0;
}
