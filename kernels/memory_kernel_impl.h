// The CPU memory kernel, written once and compiled once per instruction set: each
// memory_kernel_<isa>.cc defines TITANS_KERNEL_ISA and includes this file with its own target
// flags (-mavx512f, -mavx2, or none), so the compiler vectorises the same loops for each ISA.
// Not a public header.
//
// Per task (one session x head) and per chunk piece, everything stays in the task's scratch:
//   1. keys forward at Phi_0, keeping each layer's input Z_l (appended to the pending rows)
//   2. loss deltas backward at Phi_0 (appended to the pending rows)
//   3. gate coefficients beta, f, G over the open chunk (double precision, log space)
//   4. queries read through the dual form: A_l = beta H W^T + f H S^T - (G o H Z_l^T) Delta_l
//   5. when the chunk fills: W_b = beta_b W + f_b S - Delta^T diag(G_b.) Z,
//                             S_b = m_b S - Delta^T diag(theta m_b / m) Z,   row by row, in place
// so each weight matrix is read from memory once per piece and written once per closed chunk.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/memory_kernel.h"

namespace titans::kernels::TITANS_KERNEL_ISA {
namespace {

// C[M x N] (+)= alpha * A[M x K] * B[K x N]; all row-major with leading dimensions.
// Four rows of B per pass so each load / store of a C row feeds four FMAs.
inline void MatMulNN(int M, int N, int K, const float* __restrict A, int lda,
                     const float* __restrict B, int ldb, float* __restrict C, int ldc, float alpha,
                     bool accumulate) {
  for (int m = 0; m < M; ++m) {
    float* __restrict c = C + int64_t{m} * ldc;
    const float* a = A + int64_t{m} * lda;
    if (!accumulate) std::fill(c, c + N, 0.0f);
    int k = 0;
    for (; k + 4 <= K; k += 4) {
      const float a0 = alpha * a[k], a1 = alpha * a[k + 1], a2 = alpha * a[k + 2],
                  a3 = alpha * a[k + 3];
      const float* __restrict b0 = B + int64_t{k} * ldb;
      const float* __restrict b1 = b0 + ldb;
      const float* __restrict b2 = b1 + ldb;
      const float* __restrict b3 = b2 + ldb;
      for (int n = 0; n < N; ++n) c[n] += a0 * b0[n] + a1 * b1[n] + a2 * b2[n] + a3 * b3[n];
    }
    for (; k < K; ++k) {
      const float a0 = alpha * a[k];
      const float* __restrict b0 = B + int64_t{k} * ldb;
      for (int n = 0; n < N; ++n) c[n] += a0 * b0[n];
    }
  }
}

// C[M x N] = A[M x K] * B[N x K]^T (dot form; for few rows, avoids transposing B).
inline void MatMulNT(int M, int N, int K, const float* __restrict A, int lda,
                     const float* __restrict B, int ldb, float* __restrict C, int ldc) {
  for (int m = 0; m < M; ++m) {
    const float* __restrict a = A + int64_t{m} * lda;
    for (int n = 0; n < N; ++n) {
      const float* __restrict b = B + int64_t{n} * ldb;
      float acc = 0;
      for (int k = 0; k < K; ++k) acc += a[k] * b[k];
      C[int64_t{m} * ldc + n] = acc;
    }
  }
}

// dst[cols x rows] = src[rows x cols]^T.
inline void Transpose(int rows, int cols, const float* __restrict src, float* __restrict dst) {
  for (int r = 0; r < rows; ++r) {
    for (int c = 0; c < cols; ++c) dst[int64_t{c} * rows + r] = src[int64_t{r} * cols + c];
  }
}

// C[M x N] = A[M x K] * W^T for W [N x K]: dot form for few rows, else transpose + NN.
inline void TimesTransposed(int M, int N, int K, const float* A, int lda, const float* W, float* C,
                            int ldc, float* transpose_scratch) {
  if (M < 4) {
    MatMulNT(M, N, K, A, lda, W, K, C, ldc);
  } else {
    Transpose(N, K, W, transpose_scratch);  // [K x N]
    MatMulNN(M, N, K, A, lda, transpose_scratch, N, C, ldc, 1.0f, false);
  }
}

inline float Activate(bool gelu, float a) {
  if (gelu) return 0.5f * a * (1.0f + std::erf(a * 0.70710678118654752f));
  return a / (1.0f + std::exp(-a));
}

inline float ActivationGrad(bool gelu, float a) {
  if (gelu) {
    return 0.5f * (1.0f + std::erf(a * 0.70710678118654752f)) +
           a * std::exp(-0.5f * a * a) * 0.39894228040143268f;
  }
  const float s = 1.0f / (1.0f + std::exp(-a));
  return s * (1.0f + a * (1.0f - s));
}

struct Scratch {
  std::vector<float> pre[kMaxMemoryDepth];  // [b x out_l] key pre-activations
  std::vector<float> hq, next;              // [b x max width] query activations
  std::vector<float> tmp_w, tmp_s;          // [b x max width]
  std::vector<float> scores;                // [b x b]
  std::vector<float> transposed;            // [max weight]
  std::vector<float> coef_w, coef_s;        // [max out x b] close coefficients (Delta^T scaled)
  std::vector<float> row_w, row_s;          // [max in]
  std::vector<double> lb, lm, E, R, G, beta, f;

  void Resize(const MemoryShape& s) {
    const int b = s.chunk, wide = std::max(s.head_dim, s.hidden);
    for (int l = 0; l < s.depth; ++l) pre[l].resize(int64_t{b} * s.out(l));
    for (auto* v : {&hq, &next, &tmp_w, &tmp_s}) v->resize(int64_t{b} * wide);
    scores.resize(int64_t{b} * b);
    transposed.resize(int64_t{wide} * wide);
    coef_w.resize(int64_t{wide} * b);
    coef_s.resize(int64_t{wide} * b);
    row_w.resize(wide);
    row_s.resize(wide);
    for (auto* v : {&lb, &lm, &beta, &f}) v->resize(b);
    for (auto* v : {&E, &R, &G}) v->resize(int64_t{b} * b);
  }
};

void RunTask(const MemoryShape& s, const MemoryTask& task, Scratch& sc) {
  const int L = s.depth, b = s.chunk, dh = s.head_dim;
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
  if (p > 0) {  // carry the open chunk's rows over (no-op when updating in place)
    for (int l = 0; l < L; ++l) {
      if (Z[l] != task.pending_inputs_in[l]) {
        std::memmove(Z[l], task.pending_inputs_in[l], sizeof(float) * p * s.in(l));
      }
      if (D[l] != task.pending_deltas_in[l]) {
        std::memmove(D[l], task.pending_deltas_in[l], sizeof(float) * p * s.out(l));
      }
    }
    if (gates != task.pending_gates_in) {
      std::memmove(gates, task.pending_gates_in, sizeof(float) * p * 3);
    }
  }

  for (int t0 = 0; t0 < task.n;) {
    const int cnt = std::min(task.n - t0, b - p);
    const int m = p + cnt;

    // 1. Keys forward at Phi_0; Z_l rows p..m-1 receive each layer's input.
    for (int t = 0; t < cnt; ++t) {
      std::memcpy(Z[0] + int64_t{p + t} * dh, task.keys + (t0 + t) * task.kvq_stride,
                  sizeof(float) * dh);
    }
    for (int l = 0; l < L; ++l) {
      const int in = s.in(l), out = s.out(l);
      float* pre = sc.pre[l].data();
      TimesTransposed(cnt, out, in, Z[l] + int64_t{p} * in, in, W[l], pre, out,
                      sc.transposed.data());
      if (l + 1 < L) {
        float* next_in = Z[l + 1] + int64_t{p} * out;
        for (int64_t i = 0; i < int64_t{cnt} * out; ++i) next_in[i] = Activate(s.gelu, pre[i]);
      }
    }
    // 2. Deltas of l = 1/2 ||M(k) - v||^2 at Phi_0, backward through the layers.
    {
      float* d = D[L - 1] + int64_t{p} * dh;
      const float* pre = sc.pre[L - 1].data();
      for (int t = 0; t < cnt; ++t) {
        const float* k = task.keys + (t0 + t) * task.kvq_stride;
        const float* v = task.values + (t0 + t) * task.kvq_stride;
        for (int i = 0; i < dh; ++i) {
          const float pred = pre[t * dh + i] + (s.residual ? k[i] : 0.0f);
          d[t * dh + i] = pred - v[i];
        }
      }
    }
    for (int l = L - 2; l >= 0; --l) {
      const int out = s.out(l), out_next = s.out(l + 1);
      float* d = D[l] + int64_t{p} * out;
      MatMulNN(cnt, out, out_next, D[l + 1] + int64_t{p} * out_next, out_next, W[l + 1], out, d,
               out, 1.0f, false);
      const float* pre = sc.pre[l].data();
      for (int64_t i = 0; i < int64_t{cnt} * out; ++i) d[i] *= ActivationGrad(s.gelu, pre[i]);
    }
    // 3. Gates and coefficients over the m rows of the open chunk.
    for (int t = 0; t < cnt; ++t) {
      gates[(p + t) * 3 + 0] = task.log_keep[(t0 + t) * task.gate_stride];
      gates[(p + t) * 3 + 1] = task.log_eta[(t0 + t) * task.gate_stride];
      gates[(p + t) * 3 + 2] = task.theta[(t0 + t) * task.gate_stride];
    }
    double acc_b = 0, acc_m = 0;
    for (int i = 0; i < m; ++i) {
      acc_b += gates[i * 3 + 0];
      acc_m += gates[i * 3 + 1];
      sc.lb[i] = acc_b;
      sc.lm[i] = acc_m;
    }
    for (int i = 0; i < m; ++i) {
      for (int j = 0; j <= i; ++j) sc.R[i * b + j] = std::exp(sc.lm[i] - sc.lm[j]);
    }
    for (int t = p; t < m; ++t) {  // rows read now; row m-1 also closes the chunk
      double* E = &sc.E[t * b];
      double f = 0;
      for (int i = 0; i <= t; ++i) {
        E[i] = std::exp(sc.lb[t] - sc.lb[i]);
        f += E[i] * std::exp(sc.lm[i]);
      }
      sc.f[t] = f;
      sc.beta[t] = std::exp(sc.lb[t]);
      for (int j = 0; j <= t; ++j) {
        double g = 0;
        for (int i = j; i <= t; ++i) g += E[i] * sc.R[i * b + j];
        sc.G[t * b + j] = g * gates[j * 3 + 2];
      }
      for (int j = t + 1; j < m; ++j) sc.G[t * b + j] = 0;  // causal: token t never sees j > t
    }

    // 4. Queries through the dual form.
    float* hq = sc.hq.data();
    for (int t = 0; t < cnt; ++t) {
      std::memcpy(hq + int64_t{t} * dh, task.queries + (t0 + t) * task.kvq_stride,
                  sizeof(float) * dh);
    }
    for (int l = 0; l < L; ++l) {
      const int in = s.in(l), out = s.out(l);
      float* a = sc.next.data();
      TimesTransposed(cnt, out, in, hq, in, W[l], sc.tmp_w.data(), out, sc.transposed.data());
      TimesTransposed(cnt, out, in, hq, in, S[l], sc.tmp_s.data(), out, sc.transposed.data());
      for (int t = 0; t < cnt; ++t) {
        const float bt = static_cast<float>(sc.beta[p + t]), ft = static_cast<float>(sc.f[p + t]);
        const float* tw = sc.tmp_w.data() + int64_t{t} * out;
        const float* ts = sc.tmp_s.data() + int64_t{t} * out;
        float* at = a + int64_t{t} * out;
        for (int o = 0; o < out; ++o) at[o] = bt * tw[o] + ft * ts[o];
      }
      // scores[t, j] = G[p+t, j] * (h_t . z_j), then A -= scores * Delta_l.
      MatMulNT(cnt, m, in, hq, in, Z[l], in, sc.scores.data(), m);
      for (int t = 0; t < cnt; ++t) {
        for (int j = 0; j < m; ++j) {
          sc.scores[t * m + j] *= static_cast<float>(sc.G[(p + t) * b + j]);
        }
      }
      MatMulNN(cnt, out, m, sc.scores.data(), m, D[l], out, a, out, -1.0f, true);
      if (l + 1 < L) {
        for (int64_t i = 0; i < int64_t{cnt} * out; ++i) hq[i] = Activate(s.gelu, a[i]);
      } else {
        for (int t = 0; t < cnt; ++t) {
          float* y = task.output + (t0 + t) * task.output_stride;
          const float* q = task.queries + (t0 + t) * task.kvq_stride;
          for (int i = 0; i < dh; ++i) y[i] = a[t * dh + i] + (s.residual ? q[i] : 0.0f);
        }
      }
    }

    // 5. Close the chunk: materialise Phi_b and S_b, row by row (safe in place).
    if (m == b) {
      const double beta_b = sc.beta[m - 1], f_b = sc.f[m - 1], m_b = std::exp(sc.lm[m - 1]);
      for (int l = 0; l < L; ++l) {
        const int in = s.in(l), out = s.out(l);
        // coef_w[o, j] = Delta[j, o] * G[b-1, j];  coef_s[o, j] = Delta[j, o] * theta_j m_b / m_j.
        for (int j = 0; j < m; ++j) {
          const float gw = static_cast<float>(sc.G[(m - 1) * b + j]);
          const float gs = static_cast<float>(gates[j * 3 + 2] * sc.R[(m - 1) * b + j]);
          for (int o = 0; o < out; ++o) {
            sc.coef_w[int64_t{o} * m + j] = D[l][int64_t{j} * out + o] * gw;
            sc.coef_s[int64_t{o} * m + j] = D[l][int64_t{j} * out + o] * gs;
          }
        }
        float* w_out = task.weights_out[l];
        float* s_out = task.momentum_out[l];
        for (int o = 0; o < out; ++o) {
          const float* w = W[l] + int64_t{o} * in;
          const float* sm = S[l] + int64_t{o} * in;
          float* rw = sc.row_w.data();
          float* rs = sc.row_s.data();
          for (int i = 0; i < in; ++i) {
            rw[i] = static_cast<float>(beta_b) * w[i] + static_cast<float>(f_b) * sm[i];
            rs[i] = static_cast<float>(m_b) * sm[i];
          }
          MatMulNN(1, in, m, &sc.coef_w[int64_t{o} * m], m, Z[l], in, rw, in, -1.0f, true);
          MatMulNN(1, in, m, &sc.coef_s[int64_t{o} * m], m, Z[l], in, rs, in, -1.0f, true);
          std::memcpy(w_out + int64_t{o} * in, rw, sizeof(float) * in);
          std::memcpy(s_out + int64_t{o} * in, rs, sizeof(float) * in);
        }
        W[l] = w_out;
        S[l] = s_out;
      }
      p = 0;
    } else {
      p = m;
    }
    t0 += cnt;
  }
}

}  // namespace

void RunTasks(const MemoryShape& shape, const MemoryTask* tasks, int64_t begin, int64_t end) {
  thread_local Scratch scratch;
  scratch.Resize(shape);
  for (int64_t i = begin; i < end; ++i) RunTask(shape, tasks[i], scratch);
}

}  // namespace titans::kernels::TITANS_KERNEL_ISA
