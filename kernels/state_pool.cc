#include "kernels/state_pool.h"

#include <cstdlib>
#include <cstring>
#include <new>

namespace titans::kernels {
namespace {

int64_t RoundUp16(int64_t floats) { return (floats + 15) / 16 * 16; }  // 64-byte multiples

}  // namespace

StatePool::StatePool(const PoolShape& shape, int64_t capacity)
    : shape_(shape), capacity_(capacity) {
  const MemoryShape& m = shape.memory;
  int64_t off = 0;
  for (int l = 0; l < m.depth; ++l) {
    weight_offset_.push_back(off);
    off += RoundUp16(m.weight_size(l));
    momentum_offset_.push_back(off);
    off += RoundUp16(m.weight_size(l));
  }
  for (int l = 0; l < m.depth; ++l) {
    inputs_offset_.push_back(off);
    off += RoundUp16(int64_t{m.chunk} * m.in(l));
    deltas_offset_.push_back(off);
    off += RoundUp16(int64_t{m.chunk} * m.out(l));
  }
  gates_offset_ = off;
  off += RoundUp16(int64_t{m.chunk} * 3);
  head_floats_ = off;
  slot_floats_ = head_floats_ * shape.layers * shape.heads;
  data_ = static_cast<float*>(std::aligned_alloc(
      64, static_cast<size_t>(std::max<int64_t>(1, slot_floats_ * capacity)) * sizeof(float)));
  if (data_ == nullptr) throw std::bad_alloc();
  pending_.assign(capacity * shape.layers, 0);
  for (int64_t s = capacity - 1; s >= 0; --s) free_.push_back(s);
}

StatePool::~StatePool() { std::free(data_); }

std::optional<int64_t> StatePool::Allocate() {
  if (free_.empty()) return std::nullopt;
  const int64_t slot = free_.back();
  free_.pop_back();
  ++in_use_;
  return slot;
}

void StatePool::Free(int64_t slot) {
  free_.push_back(slot);
  --in_use_;
}

int64_t StatePool::HeadOffset(int64_t slot, int layer, int head) const {
  return slot * slot_floats_ + (int64_t{layer} * shape_.heads + head) * head_floats_;
}

float* StatePool::weights(int64_t slot, int layer, int head, int l) {
  return data_ + HeadOffset(slot, layer, head) + weight_offset_[l];
}
float* StatePool::momentum(int64_t slot, int layer, int head, int l) {
  return data_ + HeadOffset(slot, layer, head) + momentum_offset_[l];
}
float* StatePool::pending_inputs(int64_t slot, int layer, int head, int l) {
  return data_ + HeadOffset(slot, layer, head) + inputs_offset_[l];
}
float* StatePool::pending_deltas(int64_t slot, int layer, int head, int l) {
  return data_ + HeadOffset(slot, layer, head) + deltas_offset_[l];
}
float* StatePool::pending_gates(int64_t slot, int layer, int head) {
  return data_ + HeadOffset(slot, layer, head) + gates_offset_;
}

void StatePool::Reset(int64_t slot, const std::vector<std::vector<const float*>>& initial) {
  const MemoryShape& m = shape_.memory;
  for (int layer = 0; layer < shape_.layers; ++layer) {
    for (int head = 0; head < shape_.heads; ++head) {
      for (int l = 0; l < m.depth; ++l) {
        const int64_t size = m.weight_size(l);
        std::memcpy(weights(slot, layer, head, l), initial[layer][l] + head * size,
                    sizeof(float) * size);
        std::memset(momentum(slot, layer, head, l), 0, sizeof(float) * size);
      }
    }
    pending_[slot * shape_.layers + layer] = 0;
  }
}

MemoryTask StatePool::Task(int64_t slot, int layer, int head, int n) {
  MemoryTask t;
  for (int l = 0; l < shape_.memory.depth; ++l) {
    t.weights_in[l] = t.weights_out[l] = weights(slot, layer, head, l);
    t.momentum_in[l] = t.momentum_out[l] = momentum(slot, layer, head, l);
    t.pending_inputs_in[l] = t.pending_inputs_out[l] = pending_inputs(slot, layer, head, l);
    t.pending_deltas_in[l] = t.pending_deltas_out[l] = pending_deltas(slot, layer, head, l);
  }
  t.pending_gates_in = t.pending_gates_out = pending_gates(slot, layer, head);
  t.pending_in = pending(slot, layer);
  t.n = n;
  return t;
}

void StatePool::Advance(int64_t slot, int layer, int n) {
  int& p = pending_[slot * shape_.layers + layer];
  p = static_cast<int>((p + int64_t{n}) % shape_.memory.chunk);
}

void RunPoolLayer(StatePool& pool, int layer, const PoolWorkItem* items, int64_t count,
                  int num_threads) {
  const int H = pool.shape().heads, dh = pool.shape().memory.head_dim;
  std::vector<MemoryTask> tasks;
  tasks.reserve(count * H);
  for (int64_t i = 0; i < count; ++i) {
    const PoolWorkItem& item = items[i];
    for (int h = 0; h < H; ++h) {
      MemoryTask t = pool.Task(item.slot, layer, h, item.n);
      t.keys = item.keys + h * dh;
      t.values = item.values + h * dh;
      t.queries = item.queries + h * dh;
      t.kvq_stride = int64_t{H} * dh;
      t.log_keep = item.log_keep + h;
      t.log_eta = item.log_eta + h;
      t.theta = item.theta + h;
      t.gate_stride = H;
      t.output = item.output + h * dh;
      t.output_stride = int64_t{H} * dh;
      tasks.push_back(t);
    }
  }
  RunMemoryTasks(pool.shape().memory, tasks.data(), static_cast<int64_t>(tasks.size()),
                 num_threads);
  for (int64_t i = 0; i < count; ++i) pool.Advance(items[i].slot, layer, items[i].n);
}

}  // namespace titans::kernels
