// The neural long-term memory's test-time learning, in the chunked dual form
// (docs/model.md section 2; paper eqs. 13-14; shared titans-model.md section 2).
//
// A memory is an MLP M_Phi with `depth` bias-free layers per group. A group is one (sequence, head)
// pair: all tensors carry a leading group axis G = batch * heads, so one call updates every head
// of every sequence in the batch. Shapes use:
//   G groups, n new tokens, p pending tokens of the open chunk, m = p + n, d = head_dim,
//   in_l / out_l the input / output width of memory layer l.
//
// These are pure functions of their inputs as far as any caller can see: a caller that keeps the
// old MemoryState keeps an intact copy (this is how the model makes Forward atomic). The one write
// into existing memory is the kernel appending the open chunk's new rows past the rows every
// state sharing that buffer already holds (PendingChunk), which no existing state reads.
// All functions are differentiable by autograd (training backpropagates through them).
// Thread safety: stateless; safe to call concurrently on distinct states.
#ifndef TITANS_MODEL_MEMORY_MATH_H_
#define TITANS_MODEL_MEMORY_MATH_H_

#include <ATen/ATen.h>

#include <array>
#include <atomic>
#include <memory>
#include <vector>

#include "kernels/memory_kernel.h"
#include "model/config.h"

namespace titans {

struct MemorySpec {
  int depth = 2;
  Activation activation = Activation::kSiLU;
  bool residual = false;
  int chunk_size = 16;
  double max_weight_rms = 0;  // MemoryConfig::max_weight_rms (0 = unbounded)

  static MemorySpec FromConfig(const MemoryConfig& m) {
    return MemorySpec{m.depth, m.activation, m.residual, m.chunk_size, m.max_weight_rms};
  }
};

// Per-token gates, each [G, n]: log(1 - alpha_t) (forgetting), log(eta_t) (momentum decay),
// theta_t (inner learning rate). Logs are carried so products become sums (no tiny divisions).
struct MemoryGates {
  at::Tensor log_keep;  // log(1 - alpha_t) <= 0
  at::Tensor log_eta;   // log(eta_t) <= 0
  at::Tensor theta;     // theta_t >= 0
};

// The open chunk's rows in buffers with room for a whole chunk (the fused kernel's output), shared
// by every copy of a state that continues from them. `rows` counts the rows written so far. A
// state whose pending count equals `rows` claims the next rows (compare-and-swap) and the kernel
// appends them in place; a state that holds fewer (a backup, a fork or a rewind point taken
// before a later append) finds the claim taken and copies its rows into new buffers. So rows a
// state holds are never overwritten, and a step appends without copying the open chunk.
// Thread safety: the claim is atomic; the buffers are written only by the claim's winner.
struct PendingChunk {
  std::array<at::Tensor, kernels::kMaxMemoryDepth> inputs;  // per layer [G, chunk, in_l]
  std::array<at::Tensor, kernels::kMaxMemoryDepth> deltas;  // per layer [G, chunk, out_l]
  at::Tensor gates;                                         // [G, chunk, 3]
  std::atomic<int64_t> rows{0};
};

// Everything the memory needs to continue a stream exactly.
struct MemoryState {
  std::vector<at::Tensor> weights;   // Phi_0 at the open chunk's start, per layer [G, out_l, in_l]
  std::vector<at::Tensor> momentum;  // S_0 at the open chunk's start, same shapes
  // The open chunk's p pending tokens: per layer, the layer input at Phi_0 of each key ([G, p,
  // in_l]) and the loss gradient w.r.t. that layer's output ([G, p, out_l]); gates [G, p].
  // Held one of two ways:
  //  - chunk == null: in the three tensor fields (LibTorch's form, a state read from bytes);
  //  - chunk set (the kernel's form): the first chunk_pending rows of chunk's buffers, and the
  //    tensor fields are empty (no tensors). A step then updates a count, not tensors: no view
  //    per step. Read them through PendingInputs / PendingDeltas / PendingGates below, or
  //    MaterializePending first.
  std::vector<at::Tensor> pending_inputs;
  std::vector<at::Tensor> pending_deltas;
  MemoryGates pending_gates;
  std::shared_ptr<PendingChunk> chunk;
  int64_t chunk_pending = 0;

  int64_t pending() const { return chunk ? chunk_pending : pending_gates.theta.size(1); }
};

// The pending rows as tensors, however the state holds them (views of the chunk's rows, or the
// state's own tensors). Layer l of the memory MLP; gates [G, p] each.
at::Tensor PendingInputs(const MemoryState& st, int l);
at::Tensor PendingDeltas(const MemoryState& st, int l);
MemoryGates PendingGates(const MemoryState& st);
// Bytes of the pending rows held in the state's chunk (not its spare room); 0 when the state
// holds them as its own tensors (those count as any other tensor of the state).
int64_t PendingBytes(const MemoryState& st);
// Moves the pending rows into the state's own tensor fields (views of the chunk's rows) and
// drops its chunk: for code that reads or replaces the fields (serialisation, LibTorch's form,
// a device move). The next kernel step then copies the rows once into a new chunk.
void MaterializePending(MemoryState* st);

// Layer widths of a memory MLP: {in_0, out_0}, ... for `depth` layers over head_dim d and hidden h.
std::vector<std::pair<int64_t, int64_t>> MemoryLayerShapes(int depth, int64_t head_dim,
                                                           int64_t hidden);

// A fresh state: weights = initial (each [G, out_l, in_l]), momentum 0, nothing pending.
MemoryState NewMemoryState(const std::vector<at::Tensor>& initial_weights);

// y = M_W(x) with no update. x [G, n, d] -> [G, n, d].
at::Tensor MemoryRead(const MemorySpec& spec, const std::vector<at::Tensor>& weights,
                      const at::Tensor& x);

// Writes n tokens (keys k, values v [G, n, d], gates [G, n]) into the memory and reads queries
// q [G, n, d] with read-after-write semantics: y_t = M_{Phi_t}(q_t), where Phi_t already holds
// token t. Handles any n: tokens are split at absolute chunk boundaries, each full chunk is closed
// (Phi_b, S_b materialised) and the rest stays pending. Returns y [G, n, d]; updates *state.
// Float32 CPU inference (no autograd) runs the fused kernel (kernels/memory_kernel.h); anything
// else (training, double, CUDA) runs MemoryWriteReadTorch.
at::Tensor MemoryWriteRead(const MemorySpec& spec, MemoryState* state, const at::Tensor& k,
                           const at::Tensor& v, const at::Tensor& q, const MemoryGates& gates);

// MemoryWriteRead for many independent states (one per session), in one kernel call when the
// kernel applies. states[i] receives inputs[i]; returns each state's y.
struct MemoryInputs {
  at::Tensor k, v, q;
  MemoryGates gates;
};
std::vector<at::Tensor> MemoryWriteReadMany(const MemorySpec& spec,
                                            const std::vector<MemoryState*>& states,
                                            const std::vector<MemoryInputs>& inputs);

// Whether MemoryWriteReadPacked can run for these states and inputs (float32 inference on a
// device with the fused kernel).
bool MemoryKernelApplies(const std::vector<MemoryState*>& states, const at::Tensor& k);

// MemoryWriteReadMany over streams packed along time, without per-stream copies: k, v, q
// [B, T, heads * d] and gates [B, T, heads] hold every stream's rows; states[i] (G = B * heads
// groups) receives rows [rows[i].begin, rows[i].begin + rows[i].length). Returns y [B, T,
// heads * d] (rows of no stream are left unset). The same bits as MemoryWriteReadMany over the
// streams' grouped rows. Requires MemoryKernelApplies (TORCH_CHECK).
struct PackedRows {
  int64_t begin, length;
};
at::Tensor MemoryWriteReadPacked(const MemorySpec& spec, int64_t heads,
                                 const std::vector<MemoryState*>& states,
                                 const std::vector<PackedRows>& rows, const at::Tensor& k,
                                 const at::Tensor& v, const at::Tensor& q,
                                 const MemoryGates& gates);

// The same in plain LibTorch ops: differentiable, any dtype / device; the kernels' reference.
at::Tensor MemoryWriteReadTorch(const MemorySpec& spec, MemoryState* state, const at::Tensor& k,
                                const at::Tensor& v, const at::Tensor& q, const MemoryGates& gates);

}  // namespace titans

#endif  // TITANS_MODEL_MEMORY_MATH_H_
