// CUDA memory kernel: the algorithm of memory_kernel_impl.h (read that file first), with one
// thread block per task and the per-piece scratch in dynamic shared memory. Each phase
// parallelises over output elements; __syncthreads() separates the phases.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>
#include <vector>

#include "kernels/memory_kernel_cuda.h"

namespace titans::kernels {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ float Sigmoid(float a) { return 1.0f / (1.0f + __expf(-a)); }

__device__ __forceinline__ float Act(bool gelu, float a) {
  return gelu ? 0.5f * a * (1.0f + erff(a * 0.70710678118654752f)) : a * Sigmoid(a);
}

__device__ __forceinline__ float ActGrad(bool gelu, float a) {
  if (gelu) {
    return 0.5f * (1.0f + erff(a * 0.70710678118654752f)) +
           a * expf(-0.5f * a * a) * 0.39894228040143268f;
  }
  const float s = Sigmoid(a);
  return s * (1.0f + a * (1.0f - s));
}

// Shared-memory layout of one block's scratch (floats, then doubles).
struct Layout {
  int pre[kMaxMemoryDepth];  // [b x out_l]
  int hq, next, scores;      // [b x wide], [b x wide], [b x b]
  int floats;
  int keep, eta, beta, f, E, R, G;  // doubles, offsets in doubles after the floats
  int doubles;
  size_t bytes;
};

__host__ __device__ Layout MakeLayout(const MemoryShape& s) {
  Layout lay{};
  const int b = s.chunk, wide = s.head_dim > s.hidden ? s.head_dim : s.hidden;
  int off = 0;
  for (int l = 0; l < s.depth; ++l) {
    lay.pre[l] = off;
    off += b * s.out(l);
  }
  lay.hq = off;
  off += b * wide;
  lay.next = off;
  off += b * wide;
  lay.scores = off;
  off += b * b;
  lay.floats = (off + 1) / 2 * 2;  // keep the doubles 8-byte aligned
  int d = 0;
  lay.keep = d;
  d += b;
  lay.eta = d;
  d += b;
  lay.beta = d;
  d += b;
  lay.f = d;
  d += b;
  lay.E = d;
  d += b * b;
  lay.R = d;
  d += b * b;
  lay.G = d;
  d += b * b;
  lay.doubles = d;
  lay.bytes = sizeof(float) * lay.floats + sizeof(double) * lay.doubles;
  return lay;
}

__global__ void MemoryKernel(MemoryShape s, const MemoryTask* __restrict__ tasks) {
  extern __shared__ float smem[];
  const MemoryTask& task = tasks[blockIdx.x];
  const Layout lay = MakeLayout(s);
  double* dsm = reinterpret_cast<double*>(smem + lay.floats);
  const int L = s.depth, b = s.chunk, dh = s.head_dim, tid = threadIdx.x, nt = blockDim.x;

  const float* W[kMaxMemoryDepth];
  const float* S[kMaxMemoryDepth];
  float* Z[kMaxMemoryDepth];
  float* D[kMaxMemoryDepth];
  for (int l = 0; l < L; ++l) {
    W[l] = task.weights_in[l];
    S[l] = task.momentum_in[l];
    Z[l] = task.pending_inputs_out[l];
    D[l] = task.pending_deltas_out[l];
  }
  float* gates = task.pending_gates_out;
  int p = task.pending_in;
  if (p > 0) {
    for (int l = 0; l < L; ++l) {
      if (Z[l] != task.pending_inputs_in[l]) {
        for (int i = tid; i < p * s.in(l); i += nt) Z[l][i] = task.pending_inputs_in[l][i];
      }
      if (D[l] != task.pending_deltas_in[l]) {
        for (int i = tid; i < p * s.out(l); i += nt) D[l][i] = task.pending_deltas_in[l][i];
      }
    }
    if (gates != task.pending_gates_in) {
      for (int i = tid; i < p * 3; i += nt) gates[i] = task.pending_gates_in[i];
    }
  }
  __syncthreads();

  for (int t0 = 0; t0 < task.n;) {
    const int cnt = min(task.n - t0, b - p), m = p + cnt;
    // 1. Keys forward at Phi_0.
    for (int i = tid; i < cnt * dh; i += nt) {
      const int t = i / dh, c = i % dh;
      Z[0][(p + t) * dh + c] = task.keys[(t0 + t) * task.kvq_stride + c];
    }
    __syncthreads();
    for (int l = 0; l < L; ++l) {
      const int in = s.in(l), out = s.out(l);
      float* pre = smem + lay.pre[l];
      for (int i = tid; i < cnt * out; i += nt) {
        const int t = i / out, o = i % out;
        const float* z = Z[l] + (p + t) * in;
        const float* w = W[l] + o * in;
        float acc = 0;
        for (int k = 0; k < in; ++k) acc += z[k] * w[k];
        pre[i] = acc;
        if (l + 1 < L) Z[l + 1][(p + t) * out + o] = Act(s.gelu, acc);
      }
      __syncthreads();
    }
    // 2. Deltas backward.
    for (int i = tid; i < cnt * dh; i += nt) {
      const int t = i / dh, c = i % dh;
      const float k = task.keys[(t0 + t) * task.kvq_stride + c];
      const float v = task.values[(t0 + t) * task.kvq_stride + c];
      D[L - 1][(p + t) * dh + c] = smem[lay.pre[L - 1] + i] + (s.residual ? k : 0.0f) - v;
    }
    __syncthreads();
    for (int l = L - 2; l >= 0; --l) {
      const int out = s.out(l), out_next = s.out(l + 1);
      for (int i = tid; i < cnt * out; i += nt) {
        const int t = i / out, o = i % out;
        const float* dn = D[l + 1] + (p + t) * out_next;
        float acc = 0;
        for (int k = 0; k < out_next; ++k) acc += dn[k] * W[l + 1][k * out + o];
        D[l][(p + t) * out + o] = acc * ActGrad(s.gelu, smem[lay.pre[l] + i]);
      }
      __syncthreads();
    }
    // 3. Gates and coefficients (running products, as on the CPU).
    for (int t = tid; t < cnt; t += nt) {
      gates[(p + t) * 3 + 0] = task.log_keep[(t0 + t) * task.gate_stride];
      gates[(p + t) * 3 + 1] = task.log_eta[(t0 + t) * task.gate_stride];
      gates[(p + t) * 3 + 2] = task.theta[(t0 + t) * task.gate_stride];
    }
    __syncthreads();
    double* keep = dsm + lay.keep;
    double* eta = dsm + lay.eta;
    double* beta = dsm + lay.beta;
    double* fc = dsm + lay.f;
    double* E = dsm + lay.E;
    double* R = dsm + lay.R;
    double* G = dsm + lay.G;
    for (int i = tid; i < m; i += nt) {
      keep[i] = exp(static_cast<double>(gates[i * 3 + 0]));
      eta[i] = exp(static_cast<double>(gates[i * 3 + 1]));
    }
    __syncthreads();
    for (int i = tid; i < m; i += nt) {
      R[i * b + i] = 1.0;
      for (int j = i - 1; j >= 0; --j) R[i * b + j] = R[i * b + j + 1] * eta[j + 1];
      double bt = 1.0;
      for (int u = 0; u <= i; ++u) bt *= keep[u];
      beta[i] = bt;
    }
    __syncthreads();
    for (int t = p + tid; t < m; t += nt) {
      double* e = E + t * b;
      e[t] = 1.0;
      for (int i = t - 1; i >= 0; --i) e[i] = e[i + 1] * keep[i + 1];
      double f = 0;
      for (int i = 0; i <= t; ++i) f += e[i] * R[i * b] * eta[0];
      fc[t] = f;
      for (int j = 0; j < m; ++j) {
        double g = 0;
        for (int i = j; i <= t; ++i) g += e[i] * R[i * b + j];
        G[t * b + j] = j <= t ? g * gates[j * 3 + 2] : 0.0;
      }
    }
    __syncthreads();
    // 4. Queries through the dual form.
    float* hq = smem + lay.hq;
    float* a = smem + lay.next;
    float* scores = smem + lay.scores;
    for (int i = tid; i < cnt * dh; i += nt) {
      const int t = i / dh, c = i % dh;
      hq[i] = task.queries[(t0 + t) * task.kvq_stride + c];
    }
    __syncthreads();
    for (int l = 0; l < L; ++l) {
      const int in = s.in(l), out = s.out(l);
      for (int i = tid; i < cnt * m; i += nt) {
        const int t = i / m, j = i % m;
        float acc = 0;
        for (int k = 0; k < in; ++k) acc += hq[t * in + k] * Z[l][j * in + k];
        scores[i] = acc * static_cast<float>(G[(p + t) * b + j]);
      }
      __syncthreads();
      for (int i = tid; i < cnt * out; i += nt) {
        const int t = i / out, o = i % out;
        float aw = 0, as = 0;
        for (int k = 0; k < in; ++k) {
          aw += hq[t * in + k] * W[l][o * in + k];
          as += hq[t * in + k] * S[l][o * in + k];
        }
        float acc = static_cast<float>(beta[p + t]) * aw + static_cast<float>(fc[p + t]) * as;
        for (int j = 0; j < m; ++j) acc -= scores[t * m + j] * D[l][j * out + o];
        a[i] = acc;
      }
      __syncthreads();
      if (l + 1 < L) {
        for (int i = tid; i < cnt * out; i += nt) hq[i] = Act(s.gelu, a[i]);
      } else {
        for (int i = tid; i < cnt * dh; i += nt) {
          const int t = i / dh, c = i % dh;
          const float q = task.queries[(t0 + t) * task.kvq_stride + c];
          task.output[(t0 + t) * task.output_stride + c] = a[i] + (s.residual ? q : 0.0f);
        }
      }
      __syncthreads();
    }
    // 5. Close the chunk, element by element (safe in place).
    if (m == b) {
      const float beta_b = static_cast<float>(beta[m - 1]), f_b = static_cast<float>(fc[m - 1]);
      const float m_b = static_cast<float>(R[(m - 1) * b] * eta[0]);
      for (int l = 0; l < L; ++l) {
        const int in = s.in(l), out = s.out(l);
        float* w_out = task.weights_out[l];
        float* s_out = task.momentum_out[l];
        for (int i = tid; i < out * in; i += nt) {
          const int o = i / in, c = i % in;
          float nw = beta_b * W[l][i] + f_b * S[l][i];
          float ns = m_b * S[l][i];
          for (int j = 0; j < m; ++j) {
            const float dz = D[l][j * out + o] * Z[l][j * in + c];
            nw -= static_cast<float>(G[(m - 1) * b + j]) * dz;
            ns -= static_cast<float>(gates[j * 3 + 2] * R[(m - 1) * b + j]) * dz;
          }
          w_out[i] = nw;
          s_out[i] = ns;
        }
        __syncthreads();
        if (s.max_weight_rms > 0) {  // the weight bound: a fixed-order tree sum of squares
          __shared__ double sum_sq[kThreads];
          double acc = 0;
          for (int i = tid; i < out * in; i += nt) acc += double(w_out[i]) * w_out[i];
          sum_sq[tid] = acc;
          __syncthreads();
          for (int stride = nt / 2; stride > 0; stride >>= 1) {
            if (tid < stride) sum_sq[tid] += sum_sq[tid + stride];
            __syncthreads();
          }
          const double limit = double(s.max_weight_rms) * sqrt(double(out * in));
          if (sum_sq[0] > limit * limit) {
            const float scale = float(limit / sqrt(sum_sq[0]));
            for (int i = tid; i < out * in; i += nt) w_out[i] *= scale;
          }
          __syncthreads();
        }
        W[l] = w_out;
        S[l] = s_out;
      }
      p = 0;
    } else {
      p = m;
    }
    t0 += cnt;
    __syncthreads();
  }
}

}  // namespace

bool CudaKernelsBuilt() { return true; }

std::string RunMemoryTasksCuda(const MemoryShape& shape, const MemoryTask* host_tasks,
                               int64_t count, void* cuda_stream) {
  if (count == 0) return "";
  cudaStream_t stream = static_cast<cudaStream_t>(cuda_stream);
  const Layout lay = MakeLayout(shape);
  if (lay.bytes > 48 * 1024) {
    cudaError_t err = cudaFuncSetAttribute(
        MemoryKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(lay.bytes));
    if (err != cudaSuccess) {
      return std::string("memory kernel needs ") + std::to_string(lay.bytes) +
             " bytes of shared memory: " + cudaGetErrorString(err);
    }
  }
  MemoryTask* device_tasks = nullptr;
  const size_t bytes = sizeof(MemoryTask) * static_cast<size_t>(count);
  cudaError_t err = cudaMallocAsync(reinterpret_cast<void**>(&device_tasks), bytes, stream);
  if (err == cudaSuccess) {
    err = cudaMemcpyAsync(device_tasks, host_tasks, bytes, cudaMemcpyHostToDevice, stream);
  }
  if (err == cudaSuccess) {
    MemoryKernel<<<static_cast<unsigned>(count), kThreads, lay.bytes, stream>>>(shape,
                                                                                device_tasks);
    err = cudaGetLastError();
  }
  if (device_tasks != nullptr) cudaFreeAsync(device_tasks, stream);
  // Kernel time here is the launch (asynchronous); the engine's step time covers execution.
  return err == cudaSuccess ? "" : std::string("memory kernel: ") + cudaGetErrorString(err);
}

}  // namespace titans::kernels
