#include "model/buffer_pool.h"

#include <c10/core/InferenceMode.h>

#include <algorithm>

namespace titans {

namespace {
thread_local BufferPool* current_pool = nullptr;
}  // namespace

BufferPool* BufferPool::Current() { return current_pool; }

BufferPool::Use::Use(BufferPool* pool) : previous_(current_pool) { current_pool = pool; }

BufferPool::Use::~Use() { current_pool = previous_; }

BufferPool::Key BufferPool::TensorKey(at::IntArrayRef sizes, const at::TensorOptions& options,
                                      bool inference) {
  Key key;
  key.ndim = static_cast<int>(sizes.size());
  std::copy(sizes.begin(), sizes.end(), key.dims.begin());
  key.dtype = options.dtype().toScalarType();
  key.device = options.device();
  key.inference = inference;
  return key;
}

bool BufferPool::Unshared(const at::Tensor& t) {
  return t.defined() && t.use_count() == 1 && t.storage().use_count() == 1 &&
         t.storage_offset() == 0 && t.is_contiguous() &&
         t.storage().nbytes() == static_cast<size_t>(Bytes(t));
}

int64_t BufferPool::Bytes(const at::Tensor& t) {
  return t.numel() * static_cast<int64_t>(t.element_size());
}

int64_t BufferPool::ChunkBytes(const PendingChunk& c) {
  int64_t bytes = Bytes(c.gates);
  for (size_t l = 0; l < c.inputs.size() && c.inputs[l].defined(); ++l) {
    bytes += Bytes(c.inputs[l]) + Bytes(c.deltas[l]);
  }
  return bytes;
}

void BufferPool::Give(at::Tensor& t) {
  if (!Unshared(t) || t.dim() > 4 || bytes_ + Bytes(t) > kMaxBytes) {
    t.reset();
    return;
  }
  const Key key = TensorKey(t.sizes(), t.options(), t.is_inference());
  auto it = std::find_if(tensors_.begin(), tensors_.end(),
                         [&](const Bucket<at::Tensor>& b) { return b.key == key; });
  if (it == tensors_.end()) it = tensors_.insert(tensors_.end(), Bucket<at::Tensor>{key, {}});
  bytes_ += Bytes(t);
  it->items.push_back(std::move(t));
  t.reset();
}

void BufferPool::GiveChunk(std::shared_ptr<PendingChunk>& chunk) {
  std::shared_ptr<PendingChunk> c = std::move(chunk);
  chunk.reset();
  if (c == nullptr || c.use_count() != 1 || !Unshared(c->gates)) return;
  Key key;
  key.dims[0] = c->gates.size(0);
  key.dims[1] = c->gates.size(1);
  int depth = 0;
  for (; depth < static_cast<int>(c->inputs.size()) && c->inputs[depth].defined(); ++depth) {
    if (!Unshared(c->inputs[depth]) || !Unshared(c->deltas[depth])) return;
    key.dims[2 + 2 * depth] = c->inputs[depth].size(2);
    key.dims[3 + 2 * depth] = c->deltas[depth].size(2);
  }
  key.ndim = 2 + 2 * depth;
  key.dtype = c->gates.scalar_type();
  key.device = c->gates.device();
  key.inference = c->gates.is_inference();
  const int64_t bytes = ChunkBytes(*c);
  if (bytes_ + bytes > kMaxBytes) return;
  auto it =
      std::find_if(chunks_.begin(), chunks_.end(), [&](const auto& b) { return b.key == key; });
  if (it == chunks_.end()) {
    it = chunks_.insert(chunks_.end(), Bucket<std::shared_ptr<PendingChunk>>{key, {}});
  }
  bytes_ += bytes;
  it->items.push_back(std::move(c));
}

at::Tensor BufferPool::Take(at::IntArrayRef sizes, const at::TensorOptions& options) {
  if (sizes.size() > 4) return at::Tensor();
  const Key key = TensorKey(sizes, options, c10::InferenceMode::is_enabled());
  for (Bucket<at::Tensor>& b : tensors_) {
    if (!(b.key == key) || b.items.empty()) continue;
    at::Tensor t = std::move(b.items.back());
    b.items.pop_back();
    bytes_ -= Bytes(t);
    ++taken_;
    return t;
  }
  return at::Tensor();
}

at::Tensor BufferPool::TakeOrEmpty(BufferPool* pool, at::IntArrayRef sizes,
                                   const at::TensorOptions& options) {
  at::Tensor t = pool != nullptr ? pool->Take(sizes, options) : at::Tensor();
  return t.defined() ? t : at::empty(sizes, options);
}

std::shared_ptr<PendingChunk> BufferPool::TakeChunk(
    int64_t groups, int64_t chunk, const std::vector<std::pair<int64_t, int64_t>>& widths,
    const at::TensorOptions& options) {
  if (widths.size() > 4) return nullptr;
  Key key;
  key.dims[0] = groups;
  key.dims[1] = chunk;
  for (size_t l = 0; l < widths.size(); ++l) {
    key.dims[2 + 2 * l] = widths[l].first;
    key.dims[3 + 2 * l] = widths[l].second;
  }
  key.ndim = 2 + 2 * static_cast<int>(widths.size());
  key.dtype = options.dtype().toScalarType();
  key.device = options.device();
  key.inference = c10::InferenceMode::is_enabled();
  for (auto& b : chunks_) {
    if (!(b.key == key) || b.items.empty()) continue;
    std::shared_ptr<PendingChunk> c = std::move(b.items.back());
    b.items.pop_back();
    bytes_ -= ChunkBytes(*c);
    c->rows.store(0);
    ++taken_;
    return c;
  }
  return nullptr;
}

void BufferPool::Clear() {
  tensors_.clear();
  chunks_.clear();
  bytes_ = 0;
}

}  // namespace titans
