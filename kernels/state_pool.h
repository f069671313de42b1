// StatePool: preallocated fixed-size slots holding the neural-memory state of many sessions, so
// that a batched update is a list of (slot, new tokens) work items and the kernel updates each
// slot's weights in place, with no gather / scatter copies.
//
// A slot holds, for every model layer and head: each memory layer's chunk-start weights Phi_0
// and momentum S_0 ([out, in] each), and the open chunk's pending rows (layer inputs, deltas,
// gates, room for `chunk` rows), plus per layer the number of pending rows. Slots are 64-byte
// aligned.
//
// Thread safety: Allocate / Free / Reset are not thread-safe; RunPoolLayer may run concurrently
// on disjoint slots. A slot is owned by one session at a time.
#ifndef TITANS_KERNELS_STATE_POOL_H_
#define TITANS_KERNELS_STATE_POOL_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "kernels/memory_kernel.h"

namespace titans::kernels {

struct PoolShape {
  MemoryShape memory;
  int layers = 1;  // model layers, each with its own memory
  int heads = 1;
};

class StatePool {
 public:
  // Reserves capacity * SlotBytes() bytes up front.
  StatePool(const PoolShape& shape, int64_t capacity);
  ~StatePool();
  StatePool(const StatePool&) = delete;
  StatePool& operator=(const StatePool&) = delete;

  const PoolShape& shape() const { return shape_; }
  int64_t capacity() const { return capacity_; }
  int64_t in_use() const { return in_use_; }
  int64_t SlotBytes() const { return slot_floats_ * int64_t{sizeof(float)}; }

  // A free slot, or nullopt when all are taken. The slot's contents are undefined until Reset.
  std::optional<int64_t> Allocate();
  void Free(int64_t slot);

  // Starts a session in `slot`: weights = initial[layer][l] (each [heads, out, in] floats),
  // momentum 0, nothing pending.
  void Reset(int64_t slot, const std::vector<std::vector<const float*>>& initial);

  float* weights(int64_t slot, int layer, int head, int l);
  float* momentum(int64_t slot, int layer, int head, int l);
  float* pending_inputs(int64_t slot, int layer, int head, int l);  // [chunk, in_l]
  float* pending_deltas(int64_t slot, int layer, int head, int l);  // [chunk, out_l]
  float* pending_gates(int64_t slot, int layer, int head);          // [chunk, 3]
  int pending(int64_t slot, int layer) const { return pending_[slot * shape_.layers + layer]; }

  // Builds the kernel task of (slot, layer, head) for n new tokens, updating in place.
  MemoryTask Task(int64_t slot, int layer, int head, int n);
  // Records that `n` tokens were consumed by (slot, layer).
  void Advance(int64_t slot, int layer, int n);

 private:
  int64_t HeadOffset(int64_t slot, int layer, int head) const;

  PoolShape shape_;
  int64_t capacity_;
  int64_t head_floats_ = 0;  // floats of one (layer, head) block
  int64_t slot_floats_ = 0;
  std::vector<int64_t> weight_offset_, momentum_offset_, inputs_offset_, deltas_offset_;
  int64_t gates_offset_ = 0;
  float* data_ = nullptr;
  std::vector<int> pending_;
  std::vector<int64_t> free_;
  int64_t in_use_ = 0;
};

// One session's new tokens for one model layer. Inputs are token-major: keys, values, queries
// [n, heads, head_dim]; gates [n, heads]; output [n, heads, head_dim].
struct PoolWorkItem {
  int64_t slot = 0;
  int n = 0;
  const float* keys = nullptr;
  const float* values = nullptr;
  const float* queries = nullptr;
  const float* log_keep = nullptr;
  const float* log_eta = nullptr;
  const float* theta = nullptr;
  float* output = nullptr;
};

// Runs one model layer's memory update + read for a ragged batch of sessions (distinct slots),
// in place, and advances their pending counts.
void RunPoolLayer(StatePool& pool, int layer, const PoolWorkItem* items, int64_t count,
                  int num_threads = 0);

}  // namespace titans::kernels

#endif  // TITANS_KERNELS_STATE_POOL_H_
