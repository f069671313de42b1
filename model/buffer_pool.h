// Buffers that states gave up, kept for the next step's new state buffers (issue 20: heap
// allocations per decode step must not grow with the number of sessions).
//
// A step replaces some of a session's tensors with new ones: every session's last-logits row, and
// at a chunk close the memory's weights, momentum and open-chunk buffers. The old ones are freed
// once the step commits (the working copy that held them is released). Instead of freeing and
// allocating again, ForwardMany gives the buffers it drops to this pool and the next new buffer
// of the same shape is taken from it: a decode step then allocates no state buffer at all.
//
// Only a buffer nothing else refers to is kept: its TensorImpl and storage each have one owner
// (the argument), so no state, snapshot, rewind point or view can see it being written. A buffer
// still held elsewhere (e.g. by a rewind point) is simply dropped, as before.
//
// Written here rather than taken from LibTorch: its CPU allocator has no cache, and each Tensor
// also costs a TensorImpl; recycling whole tensors saves both.
//
// Memory: at most kMaxBytes are kept per thread; beyond that, given buffers are freed. Clear()
// frees them all (the engine does so when it falls idle, before giving freed memory back).
// Thread safety: one pool per thread (ForThisThread); a pool is used by its own thread only.
#ifndef TITANS_MODEL_BUFFER_POOL_H_
#define TITANS_MODEL_BUFFER_POOL_H_

#include <ATen/ATen.h>

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "model/memory_math.h"

namespace titans {

class BufferPool {
 public:
  static constexpr int64_t kMaxBytes = int64_t{256} << 20;

  // The calling thread's pool.
  static BufferPool& ForThisThread();

  // Keeps `t` for a later Take if nothing else holds it (see above) and it is a contiguous,
  // whole-storage tensor of at most 4 dimensions; otherwise drops it. Leaves `t` undefined.
  void Give(at::Tensor& t);
  // Keeps `chunk` (with its buffers) for a later TakeChunk if nothing else holds it or any of its
  // buffers; otherwise drops it. Leaves `chunk` null.
  void GiveChunk(std::shared_ptr<PendingChunk>& chunk);

  // A kept tensor of exactly these sizes, dtype, device and inference-ness (that of the current
  // InferenceMode), or an undefined tensor. Its values are stale.
  at::Tensor Take(at::IntArrayRef sizes, const at::TensorOptions& options);
  // Take, or a new at::empty when none is kept.
  at::Tensor TakeOrEmpty(at::IntArrayRef sizes, const at::TensorOptions& options);
  // A kept chunk for `groups` groups, rows of `chunk` tokens and layer widths `widths` (in_l,
  // out_l per layer), with `options`; null if none. Its row count is 0 and its values stale.
  std::shared_ptr<PendingChunk> TakeChunk(int64_t groups, int64_t chunk,
                                          const std::vector<std::pair<int64_t, int64_t>>& widths,
                                          const at::TensorOptions& options);

  void Clear();
  int64_t bytes() const { return bytes_; }
  // How many buffers (tensors and chunks) Take / TakeChunk have handed out so far.
  int64_t taken() const { return taken_; }

 private:
  // What makes two buffers interchangeable. For a chunk, dims holds groups, chunk and the widths.
  struct Key {
    std::array<int64_t, 2 + 2 * 4> dims{};
    int ndim = 0;
    at::ScalarType dtype = at::kFloat;
    at::Device device = at::kCPU;
    bool inference = false;
    bool operator==(const Key& o) const {
      return dims == o.dims && ndim == o.ndim && dtype == o.dtype && device == o.device &&
             inference == o.inference;
    }
  };
  template <typename T>
  struct Bucket {
    Key key;
    std::vector<T> items;
  };
  static Key TensorKey(at::IntArrayRef sizes, const at::TensorOptions& options, bool inference);
  static bool Unshared(const at::Tensor& t);
  static int64_t Bytes(const at::Tensor& t);
  static int64_t ChunkBytes(const PendingChunk& c);

  // Few distinct shapes exist (a model has a handful of buffer shapes), so a linear search over
  // the buckets is cheap; each bucket's vector keeps its capacity (no allocation once warm).
  std::vector<Bucket<at::Tensor>> tensors_;
  std::vector<Bucket<std::shared_ptr<PendingChunk>>> chunks_;
  int64_t bytes_ = 0;
  int64_t taken_ = 0;
};

}  // namespace titans

#endif  // TITANS_MODEL_BUFFER_POOL_H_
