// The sequence kernels on CUDA (sequence_kernels_cuda.h). One thread block per stream; inside it
// each thread owns whole output elements (a conv output, or one token's head), computed in the
// CPU kernels' order, so nothing depends on the other streams or on how a stream was split.
#include <cuda_runtime.h>

#include "kernels/sequence_kernels_cuda.h"

namespace titans::kernels {
namespace {

constexpr int kThreads = 256;

__global__ void ConvKernel(const float* __restrict__ x, int64_t channels,
                           const float* __restrict__ w, int taps,
                           const ConvStream* __restrict__ streams, float* __restrict__ y) {
  const ConvStream s = streams[blockIdx.x];
  const int64_t before = taps - 1;
  auto input = [&](int64_t i, int64_t c) {
    if (i >= before) return x[(s.begin + i - before) * channels + c];
    return s.tail[(s.tail_capacity > 0 ? (s.tail_start + i) % s.tail_capacity : i) * channels + c];
  };
  for (int64_t e = threadIdx.x; e < s.length * channels; e += blockDim.x) {
    const int64_t t = e / channels, c = e % channels;
    float acc = __fmul_rn(input(t, c), w[c * taps]);
    for (int i = 1; i < taps; ++i)
      acc = __fadd_rn(acc, __fmul_rn(input(t + i, c), w[c * taps + i]));
    y[(s.begin + t) * channels + c] = acc;
  }
  if (s.in_place) {  // the stream's last rows into the ring's free rows after the old tail
    const int64_t first = s.length > before ? s.length - before : 0;
    float* ring = const_cast<float*>(s.tail);
    for (int64_t e = threadIdx.x; e < (s.length - first) * channels; e += blockDim.x) {
      const int64_t t = first + e / channels, c = e % channels;
      ring[((s.tail_start + before + t) % s.tail_capacity) * channels + c] =
          x[(s.begin + t) * channels + c];
    }
    return;
  }
  for (int64_t e = threadIdx.x; e < before * channels; e += blockDim.x) {
    const int64_t i = e / channels, c = e % channels;
    s.tail_out[i * channels + c] = input(s.length + i, c);
  }
}

__device__ inline float Dot(const float* a, const float* b, int n) {
  float acc = 0;
  for (int i = 0; i < n; ++i) acc = __fadd_rn(acc, __fmul_rn(a[i], b[i]));
  return acc;
}

__device__ inline double InvFreq(const WindowShape& sh, int i) {
  return pow(sh.rope_theta, -(static_cast<double>(i) * (2.0 / sh.head_dim)));
}

// Rotates row `x` (head_dim floats) at `position` into `out`.
__device__ inline void Rotate(const WindowShape& sh, const float* x, int64_t position, float* out) {
  const int half = sh.head_dim / 2;
  for (int i = 0; i < half; ++i) {
    const double angle = static_cast<double>(position) * InvFreq(sh, i);
    const float c = static_cast<float>(cos(angle)), s = static_cast<float>(sin(angle));
    const float x1 = x[i], x2 = x[half + i];
    out[i] = __fsub_rn(__fmul_rn(x1, c), __fmul_rn(x2, s));
    out[half + i] = __fadd_rn(__fmul_rn(x2, c), __fmul_rn(x1, s));
  }
}

// Where entry j of a stream's cache before the call lies, head h's element d (packed or ring:
// sequence_kernels.h).
__device__ inline int64_t CacheIndex(const AttentionStream& s, int64_t h, int64_t j, int dh) {
  if (s.cache_capacity == 0) return (h * s.cached + j) * dh;
  return (h * s.cache_capacity + (s.cache_start + j) % s.cache_capacity) * dh;
}

// Phase 1, one block per stream: the stream's new keys rotated into rotated_k (at its rows), then
// its cache after the call.
__global__ void RotateKernel(WindowShape sh, const float* __restrict__ k,
                             const float* __restrict__ v, const AttentionStream* streams,
                             float* __restrict__ rotated_k) {
  const AttentionStream s = streams[blockIdx.x];
  const int H = sh.heads, dh = sh.head_dim, E = sh.entries_per_token;
  const int64_t hd = static_cast<int64_t>(H) * dh;
  for (int64_t e = threadIdx.x; e < s.length * E * H; e += blockDim.x) {
    const int64_t entry = e / H, h = e % H;  // entry of the stream's new ones; token entry / E
    const int64_t row = (s.begin * E + entry) * hd + h * dh;
    Rotate(sh, k + row, s.position + entry / E, rotated_k + row);
  }
  __syncthreads();
  const int64_t total = s.cached + E * s.length;
  const int64_t most = static_cast<int64_t>(E) * (sh.window - 1);
  const int64_t keep = total < most ? total : most;
  for (int64_t e = threadIdx.x; e < H * keep * dh; e += blockDim.x) {
    const int64_t h = e / (keep * dh), i = (e / dh) % keep, d = e % dh;
    const int64_t j = total - keep + i;
    if (s.in_place && j < s.cached) continue;  // a kept entry stays in its ring slot
    float* k_out = s.in_place ? const_cast<float*>(s.cache_k) : s.cache_k_out;
    float* v_out = s.in_place ? const_cast<float*>(s.cache_v) : s.cache_v_out;
    const int64_t to = s.in_place ? CacheIndex(s, h, j, dh) + d
                                  : (h * (s.out_capacity > 0 ? s.out_capacity : keep) + i) * dh + d;
    if (j < s.cached) {
      k_out[to] = s.cache_k[CacheIndex(s, h, j, dh) + d];
      v_out[to] = s.cache_v[CacheIndex(s, h, j, dh) + d];
    } else {
      const int64_t row = (s.begin * E + j - s.cached) * hd + h * dh + d;
      k_out[to] = rotated_k[row];
      v_out[to] = v[row];
    }
  }
}

// Phase 2, one block per stream: each thread one (token, head): scores in three passes (max,
// exponentials' sum, weighted values), keys in position order after the persistent ones.
__global__ void AttendKernel(WindowShape sh, const float* __restrict__ q,
                             const float* __restrict__ rotated_k, const float* __restrict__ v,
                             const float* __restrict__ pk, const float* __restrict__ pv,
                             const AttentionStream* streams, float* __restrict__ out) {
  const AttentionStream s = streams[blockIdx.x];
  const int H = sh.heads, dh = sh.head_dim, P = sh.persistent, E = sh.entries_per_token;
  const int64_t hd = static_cast<int64_t>(H) * dh;
  const float scale = static_cast<float>(1.0 / sqrt(static_cast<double>(dh)));
  float q_rot[512];
  for (int64_t e = threadIdx.x; e < s.length * H; e += blockDim.x) {
    const int64_t t = e / H, h = e % H;
    const int64_t row = (s.begin + t) * hd + h * dh;
    const float* q_plain = q + row;
    Rotate(sh, q_plain, s.position + t, q_rot);
    // The entries of the last `window` tokens of cache ++ new, this token's E last.
    const int64_t end = s.cached + E * (t + 1);
    const int64_t span = static_cast<int64_t>(E) * sh.window;
    const int64_t first = end - span > 0 ? end - span : 0;
    const int64_t n = P + end - first;
    auto key = [&](int64_t i) {  // entry i of persistent ++ window
      if (i < P) return pk + (h * P + i) * dh;
      const int64_t j = first + i - P;
      return j < s.cached ? s.cache_k + CacheIndex(s, h, j, dh)
                          : rotated_k + (s.begin * E + j - s.cached) * hd + h * dh;
    };
    auto value = [&](int64_t i) {
      if (i < P) return pv + (h * P + i) * dh;
      const int64_t j = first + i - P;
      return j < s.cached ? s.cache_v + CacheIndex(s, h, j, dh)
                          : v + (s.begin * E + j - s.cached) * hd + h * dh;
    };
    auto score = [&](int64_t i) {
      return __fmul_rn(Dot(i < P ? q_plain : q_rot, key(i), dh), scale);
    };
    float max = -INFINITY;
    for (int64_t i = 0; i < n; ++i) max = fmaxf(max, score(i));
    float sum = 0;
    for (int64_t i = 0; i < n; ++i) sum = __fadd_rn(sum, expf(__fsub_rn(score(i), max)));
    float* o = out + row;
    for (int d = 0; d < dh; ++d) o[d] = 0;
    for (int64_t i = 0; i < n; ++i) {
      const float weight = __fdiv_rn(expf(__fsub_rn(score(i), max)), sum);
      const float* val = value(i);
      for (int d = 0; d < dh; ++d) o[d] = __fadd_rn(o[d], __fmul_rn(weight, val[d]));
    }
  }
}

template <typename T>
std::string ToDevice(const T* host, int64_t count, cudaStream_t stream, T** device) {
  const size_t bytes = sizeof(T) * static_cast<size_t>(count);
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(device), bytes, stream);
  if (err == cudaSuccess)
    err = cudaMemcpyAsync(*device, host, bytes, cudaMemcpyHostToDevice, stream);
  return err == cudaSuccess ? "" : cudaGetErrorString(err);
}

}  // namespace

std::string RaggedCausalConvCuda(const float* x, int64_t channels, const float* w, int taps,
                                 const ConvStream* host_streams, int64_t count, float* y,
                                 void* cuda_stream) {
  if (count == 0) return "";
  cudaStream_t stream = static_cast<cudaStream_t>(cuda_stream);
  ConvStream* streams = nullptr;
  std::string error = ToDevice(host_streams, count, stream, &streams);
  if (error.empty()) {
    ConvKernel<<<static_cast<unsigned>(count), kThreads, 0, stream>>>(x, channels, w, taps, streams,
                                                                      y);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) error = cudaGetErrorString(err);
  }
  if (streams != nullptr) cudaFreeAsync(streams, stream);
  return error.empty() ? "" : "causal conv kernel: " + error;
}

std::string RaggedWindowAttentionCuda(const WindowShape& shape, const float* q, const float* k,
                                      const float* v, const float* persistent_k,
                                      const float* persistent_v,
                                      const AttentionStream* host_streams, int64_t count,
                                      float* out, void* cuda_stream) {
  if (count == 0) return "";
  if (shape.head_dim <= 0 || shape.head_dim % 2 != 0 || shape.head_dim > 512 || shape.heads <= 0 ||
      shape.window < 1 || shape.persistent < 0 || shape.entries_per_token < 1) {
    return "window attention kernel: unsupported shape";
  }
  cudaStream_t stream = static_cast<cudaStream_t>(cuda_stream);
  int64_t rows = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t end = host_streams[i].begin + host_streams[i].length;
    rows = end > rows ? end : rows;
  }
  AttentionStream* streams = nullptr;
  float* rotated_k = nullptr;
  std::string error = ToDevice(host_streams, count, stream, &streams);
  if (error.empty()) {
    const size_t bytes = sizeof(float) * static_cast<size_t>(rows) * shape.entries_per_token *
                         shape.heads * shape.head_dim;
    const cudaError_t err =
        cudaMallocAsync(reinterpret_cast<void**>(&rotated_k), bytes > 0 ? bytes : 4, stream);
    if (err != cudaSuccess) error = cudaGetErrorString(err);
  }
  if (error.empty()) {
    RotateKernel<<<static_cast<unsigned>(count), kThreads, 0, stream>>>(shape, k, v, streams,
                                                                        rotated_k);
    AttendKernel<<<static_cast<unsigned>(count), kThreads, 0, stream>>>(
        shape, q, rotated_k, v, persistent_k, persistent_v, streams, out);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) error = cudaGetErrorString(err);
  }
  if (rotated_k != nullptr) cudaFreeAsync(rotated_k, stream);
  if (streams != nullptr) cudaFreeAsync(streams, stream);
  return error.empty() ? "" : "window attention kernel: " + error;
}

}  // namespace titans::kernels
