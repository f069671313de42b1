// Buffers that states gave up, kept for the next step's new state buffers (issue 20: heap
// allocations per decode step must not grow with the number of sessions).
//
// A step replaces some of a session's tensors with new ones: every session's last-logits row, and
// at a chunk close the memory's weights, momentum and open-chunk buffers. The old ones are freed
// once the step commits (the working copy that held them is released). Instead of freeing and
// allocating again, ForwardMany gives the buffers it drops to the current pool and the next new
// buffer of the same shape is taken from it: a decode step then allocates no state buffer at all.
//
// Only a buffer nothing else refers to is kept: its TensorImpl and storage each have one owner
// (the argument), so no state, snapshot, rewind point or view can see it being written. A buffer
// still held elsewhere (e.g. by a rewind point) is simply dropped, as before.
//
// Written here rather than taken from LibTorch: its CPU allocator has no cache, and each Tensor
// also costs a TensorImpl; recycling whole tensors saves both.
//
// Which pool: the one a BufferPool::Use on the calling thread names (ModelRunner::Step uses its
// own), else none: code outside such a scope (training, tools, tests) allocates as usual, and no
// thread keeps buffers nobody will clear.
// Memory: a pool keeps at most kMaxBytes; beyond that, given buffers are freed. Clear() frees
// them all (the engine has its runner do so when it falls idle, before returning freed memory).
// Thread safety: none; a pool is used by one thread at a time (the runner's, under its lock).
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

  // The pool the innermost Use on this thread names, or nullptr.
  static BufferPool* Current();
  // Makes `pool` the calling thread's current pool for its lifetime (nullptr: none).
  class Use {
   public:
    explicit Use(BufferPool* pool);
    ~Use();
    Use(const Use&) = delete;
    Use& operator=(const Use&) = delete;

   private:
    BufferPool* previous_;
  };

  // Keeps `t` for a later Take if nothing else holds it (see above) and it is a contiguous,
  // whole-storage tensor of at most 4 dimensions; otherwise drops it. Leaves `t` undefined.
  void Give(at::Tensor& t);
  // Keeps `chunk` (with its buffers) for a later TakeChunk if nothing else holds it or any of its
  // buffers; otherwise drops it. Leaves `chunk` null.
  void GiveChunk(std::shared_ptr<PendingChunk>& chunk);

  // A kept tensor of exactly these sizes, dtype, device and inference-ness (that of the current
  // InferenceMode), or an undefined tensor. Its values are stale.
  at::Tensor Take(at::IntArrayRef sizes, const at::TensorOptions& options);
  // Take from `pool`, or a new at::empty when it keeps none (or is nullptr).
  static at::Tensor TakeOrEmpty(BufferPool* pool, at::IntArrayRef sizes,
                                const at::TensorOptions& options);
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
