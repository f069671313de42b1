// The neural memory's chunked update + read (docs/model.md section 2) for many independent
// groups in one call. A group is one (session, head) pair with its own memory weights; a call
// carries any mix of groups, each with its own number of new tokens and its own position inside
// its open chunk (a ragged batch), so decode (1 token) and append (thousands) share one pass.
//
// Plain C++ (no LibTorch): all data are float32 arrays addressed by MemoryTask pointers. Each
// group is computed by one thread in a fixed order that depends only on that group's own inputs,
// so a group's results are bit-identical whatever else is in the batch, and in any order
// ("batch invariance"). The ISA (AVX-512, AVX2 or generic) is chosen once at run time.
//
// Thread safety: RunMemoryTasks may be called concurrently with disjoint tasks.
#ifndef TITANS_KERNELS_MEMORY_KERNEL_H_
#define TITANS_KERNELS_MEMORY_KERNEL_H_

#include <cstdint>
#include <string>

// Shape helpers are also used on the device by memory_kernel.cu.
#ifdef __CUDACC__
#define TITANS_HOST_DEVICE __host__ __device__
#else
#define TITANS_HOST_DEVICE
#endif

namespace titans::kernels {

constexpr int kMaxMemoryDepth = 4;

struct MemoryShape {
  int depth = 2;      // L_M, 1..4
  int head_dim = 32;  // d_h: input and output width of the memory MLP
  int hidden = 128;   // hidden width (depth >= 2)
  int chunk = 16;     // b
  bool gelu = false;  // activation: SiLU (false) or GELU, erf form (true)
  bool residual = false;
  // When a chunk closes, a weight matrix whose entries' RMS exceeds this is scaled down to it
  // (0 = unbounded); see MemoryConfig::max_weight_rms.
  float max_weight_rms = 0;

  TITANS_HOST_DEVICE int in(int l) const { return l == 0 ? head_dim : hidden; }
  TITANS_HOST_DEVICE int out(int l) const { return l + 1 == depth ? head_dim : hidden; }
  // Floats in one layer's weight matrix [out, in].
  TITANS_HOST_DEVICE int64_t weight_size(int l) const { return int64_t{in(l)} * out(l); }
};

// One group's work. Weights are row-major [out_l, in_l]; pending rows are row-major
// [rows, in_l] (inputs) and [rows, out_l] (deltas); gates are 3 floats per row
// (log(1 - alpha), log(eta), theta).
//
// State in / out: the kernel reads Phi_0 from weights_in and S_0 from momentum_in, and writes the
// closed chunk's Phi_b / S_b to weights_out / momentum_out. *_out may equal *_in (in place, the
// state pool); if the call closes no chunk nothing is written to them. pending_*_in hold the
// pending_in rows of the open chunk; pending_*_out receive the (pending_in + n) % chunk rows
// pending after the call and must have room for chunk rows. pending_*_out may equal
// pending_*_in (in place: the kernel only appends while a chunk is open).
struct MemoryTask {
  const float* weights_in[kMaxMemoryDepth] = {};
  const float* momentum_in[kMaxMemoryDepth] = {};
  float* weights_out[kMaxMemoryDepth] = {};
  float* momentum_out[kMaxMemoryDepth] = {};
  const float* pending_inputs_in[kMaxMemoryDepth] = {};
  const float* pending_deltas_in[kMaxMemoryDepth] = {};
  const float* pending_gates_in = nullptr;
  float* pending_inputs_out[kMaxMemoryDepth] = {};
  float* pending_deltas_out[kMaxMemoryDepth] = {};
  float* pending_gates_out = nullptr;
  int pending_in = 0;  // rows of the open chunk before the call, in [0, chunk)
  int n = 0;           // new tokens

  // New tokens: key / value / query rows of head_dim floats, token t at ptr + t * stride.
  const float* keys = nullptr;
  const float* values = nullptr;
  const float* queries = nullptr;
  int64_t kvq_stride = 0;
  // Gates of token t at gate_ptr + t * gate_stride.
  const float* log_keep = nullptr;
  const float* log_eta = nullptr;
  const float* theta = nullptr;
  int64_t gate_stride = 0;
  // Output: y_t = M_{Phi_t}(q_t), read after write, at output + t * output_stride.
  float* output = nullptr;
  int64_t output_stride = 0;
};

// Runs every task (tasks are independent: distinct output and state pointers) on up to
// `num_threads` threads of the kernel thread pool (0 = all of them).
void RunMemoryTasks(const MemoryShape& shape, const MemoryTask* tasks, int64_t count,
                    int num_threads = 0);

// The instruction set RunMemoryTasks uses on this machine: "avx512", "avx2" or "generic".
std::string MemoryKernelIsa();

// Runs the tasks with a specific instruction set ("avx512", "avx2", "generic") on the calling
// thread, for tests and benchmarks. Returns false (running nothing) if this CPU lacks it.
bool RunMemoryTasksOnIsa(const std::string& isa, const MemoryShape& shape, const MemoryTask* tasks,
                         int64_t count);

// Wall time spent in RunMemoryTasks / RunMemoryTasksCuda since the process started (for the
// server's per-step kernel-time metric). Thread-safe.
int64_t MemoryKernelNanos();
void AddMemoryKernelNanos(int64_t nanos);

// Floating-point operations of one task (for GFLOP/s reports): the chunked form's GEMMs.
double MemoryTaskFlops(const MemoryShape& shape, int pending_in, int n);

}  // namespace titans::kernels

#endif  // TITANS_KERNELS_MEMORY_KERNEL_H_
