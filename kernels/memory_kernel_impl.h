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

// C[M x N] (+)= alpha * A[M x K] * B[K x N] for the rows / columns outside full 4 x 32 tiles.
// Each element takes exactly the tile's steps (acc += (alpha a_k) b_k for k = 0, 1, ...), so a
// row gives the same bits in a tile or outside one: a token's results do not depend on how many
// tokens share its piece (split invariance).
inline void MatMulNNSimple(int M, int N, int K, const float* __restrict A, int lda,
                           const float* __restrict B, int ldb, float* __restrict C, int ldc,
                           float alpha, bool accumulate) {
  for (int m = 0; m < M; ++m) {
    float* __restrict c = C + int64_t{m} * ldc;
    const float* a = A + int64_t{m} * lda;
    if (!accumulate) std::fill(c, c + N, 0.0f);
    for (int k = 0; k < K; ++k) {
      const float a0 = alpha * a[k];
      const float* __restrict b0 = B + int64_t{k} * ldb;
      for (int n = 0; n < N; ++n) c[n] += a0 * b0[n];
    }
  }
}

// One 4 x 32 tile of C kept in registers across the whole K loop: each row of B loaded once
// feeds four rows of FMAs (constant bounds, so the compiler unrolls into vector registers).
constexpr int kTileRows = 4, kTileCols = 32;
inline void MatMulNNTile(int K, const float* __restrict A, int lda, const float* __restrict B,
                         int ldb, float* __restrict C, int ldc, float alpha, bool accumulate) {
  float acc[kTileRows][kTileCols];
  for (int r = 0; r < kTileRows; ++r) {
    for (int j = 0; j < kTileCols; ++j) acc[r][j] = accumulate ? C[int64_t{r} * ldc + j] : 0.0f;
  }
  for (int k = 0; k < K; ++k) {
    const float* __restrict b = B + int64_t{k} * ldb;
    for (int r = 0; r < kTileRows; ++r) {
      const float a = alpha * A[int64_t{r} * lda + k];
      for (int j = 0; j < kTileCols; ++j) acc[r][j] += a * b[j];
    }
  }
  for (int r = 0; r < kTileRows; ++r) {
    for (int j = 0; j < kTileCols; ++j) C[int64_t{r} * ldc + j] = acc[r][j];
  }
}

// C[M x N] (+)= alpha * A[M x K] * B[K x N]; all row-major with leading dimensions. The result
// of each element depends only on (M, N, K) and the data, never on other tasks.
inline void MatMulNN(int M, int N, int K, const float* __restrict A, int lda,
                     const float* __restrict B, int ldb, float* __restrict C, int ldc, float alpha,
                     bool accumulate) {
  const int m_tiles = M / kTileRows * kTileRows, n_tiles = N / kTileCols * kTileCols;
  // Column panels outside, row tiles inside: a K x 32 panel of B stays in L1 for all rows.
  for (int n = 0; n < n_tiles; n += kTileCols) {
    for (int m = 0; m < m_tiles; m += kTileRows) {
      MatMulNNTile(K, A + int64_t{m} * lda, lda, B + n, ldb, C + int64_t{m} * ldc + n, ldc, alpha,
                   accumulate);
    }
  }
  if (n_tiles < N && m_tiles > 0) {
    MatMulNNSimple(m_tiles, N - n_tiles, K, A, lda, B + n_tiles, ldb, C + n_tiles, ldc, alpha,
                   accumulate);
  }
  if (m_tiles < M) {
    MatMulNNSimple(M - m_tiles, N, K, A + int64_t{m_tiles} * lda, lda, B, ldb,
                   C + int64_t{m_tiles} * ldc, ldc, alpha, accumulate);
  }
}

// C[M x N] = A[M x K] * B[N x K]^T (dot form; for few rows, avoids transposing B). Sixteen
// independent partial sums per dot product, so the compiler can vectorise it without
// reassociating (the order of additions is fixed by this code, not by the ISA): each element is
// 0 + the products past the last full group of sixteen, in order, then the sixteen partial sums,
// in order.
//
// That last sum is a chain of sixteen dependent additions per element, and for the model's short
// rows (K = 32 or 128) the chains, not the products, were the kernel's hottest loops (perf). So
// the elements are done sixteen at a time: their partial sums are transposed, and
// the sixteen chains advance together in one vector, each lane adding exactly the terms of its
// own element in the same order (the same bits as one element at a time).
inline void MatMulNT(int M, int N, int K, const float* __restrict A, int lda,
                     const float* __restrict B, int ldb, float* __restrict C, int ldc) {
  constexpr int kLanes = 16;
  const int full = K / kLanes * kLanes;
  // One element's partial sums and its sum of the products past `full` (from 0, in order).
  auto partial_sums = [&](const float* __restrict a, const float* __restrict b,
                          float* __restrict lanes, float* __restrict rest) {
    for (int j = 0; j < kLanes; ++j) lanes[j] = 0;
    for (int k = 0; k < full; k += kLanes) {
      for (int j = 0; j < kLanes; ++j) lanes[j] += a[k + j] * b[k + j];
    }
    float acc = 0;
    for (int k = full; k < K; ++k) acc += a[k] * b[k];
    *rest = acc;
  };
  for (int m = 0; m < M; ++m) {
    const float* __restrict a = A + int64_t{m} * lda;
    float* __restrict c = C + int64_t{m} * ldc;
    int n = 0;
    for (; n + kLanes <= N; n += kLanes) {
      float lanes[kLanes][kLanes];   // [element][partial sum]
      float by_sum[kLanes][kLanes];  // [partial sum][element]
      float acc[kLanes];
      for (int e = 0; e < kLanes; ++e) {
        partial_sums(a, B + int64_t{n + e} * ldb, lanes[e], &acc[e]);
      }
      for (int j = 0; j < kLanes; ++j) {
        for (int e = 0; e < kLanes; ++e) by_sum[j][e] = lanes[e][j];
      }
      for (int j = 0; j < kLanes; ++j) {
        for (int e = 0; e < kLanes; ++e) acc[e] += by_sum[j][e];
      }
      for (int e = 0; e < kLanes; ++e) c[n + e] = acc[e];
    }
    for (; n < N; ++n) {
      float lanes[kLanes], acc;
      partial_sums(a, B + int64_t{n} * ldb, lanes, &acc);
      for (int j = 0; j < kLanes; ++j) acc += lanes[j];
      c[n] = acc;
    }
  }
}

// C[M x N] = A[M x K] * W^T for W [N x K], in the dot form for any M: each element's sum has
// one fixed order whatever M is, so a token's key and query products are the same bits whether
// it arrives alone (decode) or among a piece's tokens (append), and results do not depend on how
// a stream is split. (The tiled NN GEMM over W^T is faster for appends, but gives other bits than
// the dot form, which decode needs: a transposed copy per token costs more than the product.)
inline void TimesTransposed(int M, int N, int K, const float* A, int lda, const float* W, float* C,
                            int ldc) {
  MatMulNT(M, N, K, A, lda, W, K, C, ldc);
}

// exp(x) for float, branch-free so the loops that call it vectorise (libm's expf does not):
// x = n ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial, 2^n through the exponent bits.
// Relative error < 3e-7 over the float range; inputs below -87 flush to 0, above 88 saturate.
inline float FastExp(float x) {
  x = std::min(88.0f, std::max(-87.0f, x));
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = x - n * 0.693145751953125f - n * 1.428606765330187e-06f;
  float p = 1.0f / 720;
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  int32_t bits;
  std::memcpy(&bits, &p, sizeof(bits));
  bits += static_cast<int32_t>(n) * (1 << 23);  // add n to the exponent (|n| <= 127, no overflow)
  float out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

inline float Sigmoid(float a) { return 1.0f / (1.0f + FastExp(-a)); }

inline float Activate(bool gelu, float a) {
  if (gelu) return 0.5f * a * (1.0f + std::erf(a * 0.70710678118654752f));
  return a * Sigmoid(a);
}

inline float ActivationGrad(bool gelu, float a) {
  if (gelu) {
    return 0.5f * (1.0f + std::erf(a * 0.70710678118654752f)) +
           a * std::exp(-0.5f * a * a) * 0.39894228040143268f;
  }
  const float s = Sigmoid(a);
  return s * (1.0f + a * (1.0f - s));
}

// act(x) over n values (the SiLU branch is a separate loop so it vectorises).
inline void ActivateAll(bool gelu, const float* __restrict in, float* __restrict out, int64_t n) {
  if (gelu) {
    for (int64_t i = 0; i < n; ++i) out[i] = Activate(true, in[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) out[i] = in[i] * Sigmoid(in[i]);
  }
}

// d[i] *= act'(pre[i]).
inline void MultiplyActivationGrad(bool gelu, const float* __restrict pre, float* __restrict d,
                                   int64_t n) {
  if (gelu) {
    for (int64_t i = 0; i < n; ++i) d[i] *= ActivationGrad(true, pre[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) {
      const float s = Sigmoid(pre[i]);
      d[i] *= s * (1.0f + pre[i] * (1.0f - s));
    }
  }
}

struct Scratch {
  std::vector<float> pre[kMaxMemoryDepth];  // [b x out_l] key pre-activations
  std::vector<float> hq, next;              // [b x max width] query activations
  std::vector<float> tmp_w, tmp_s;          // [b x max width]
  std::vector<float> scores;                // [b x b]
  std::vector<float> coef_w, coef_s;        // [max out x b] close coefficients (Delta^T scaled)
  std::vector<float> new_w, new_s;          // [max weight] the closed chunk's matrices
  std::vector<double> keep, eta, E, R, G, beta, f;  // gates in linear space, coefficients

  void Resize(const MemoryShape& s) {
    const int b = s.chunk, wide = std::max(s.head_dim, s.hidden);
    for (int l = 0; l < s.depth; ++l) pre[l].resize(int64_t{b} * s.out(l));
    for (auto* v : {&hq, &next, &tmp_w, &tmp_s}) v->resize(int64_t{b} * wide);
    scores.resize(int64_t{b} * b);
    coef_w.resize(int64_t{wide} * b);
    coef_s.resize(int64_t{wide} * b);
    new_w.resize(int64_t{wide} * wide);
    new_s.resize(int64_t{wide} * wide);
    for (auto* v : {&keep, &eta, &beta, &f}) v->resize(b);
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
      TimesTransposed(cnt, out, in, Z[l] + int64_t{p} * in, in, W[l], pre, out);
      if (l + 1 < L) {
        ActivateAll(s.gelu, pre, Z[l + 1] + int64_t{p} * out, int64_t{cnt} * out);
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
      MultiplyActivationGrad(s.gelu, sc.pre[l].data(), d, int64_t{cnt} * out);
    }
    // 3. Gates and coefficients over the m rows of the open chunk.
    for (int t = 0; t < cnt; ++t) {
      gates[(p + t) * 3 + 0] = task.log_keep[(t0 + t) * task.gate_stride];
      gates[(p + t) * 3 + 1] = task.log_eta[(t0 + t) * task.gate_stride];
      gates[(p + t) * 3 + 2] = task.theta[(t0 + t) * task.gate_stride];
    }
    // E[t, i] = prod_{i < u <= t} (1 - alpha_u) and R[i, j] = prod_{j < u <= i} eta_u as running
    // products (every factor in (0, 1], no division); f_t = sum_i E[t, i] m_i, m_i = R[i, 0] eta_0.
    for (int i = 0; i < m; ++i) {
      sc.keep[i] = std::exp(static_cast<double>(gates[i * 3 + 0]));  // 1 - alpha_i
      sc.eta[i] = std::exp(static_cast<double>(gates[i * 3 + 1]));   // eta_i
    }
    for (int i = 0; i < m; ++i) {
      double* R = &sc.R[i * b];
      R[i] = 1.0;
      for (int j = i - 1; j >= 0; --j) R[j] = R[j + 1] * sc.eta[j + 1];
    }
    for (int i = 0; i < m; ++i) sc.beta[i] = (i ? sc.beta[i - 1] : 1.0) * sc.keep[i];  // beta_i
    for (int t = p; t < m; ++t) {  // rows read now; row m-1 also closes the chunk
      double* E = &sc.E[t * b];
      E[t] = 1.0;
      for (int i = t - 1; i >= 0; --i) E[i] = E[i + 1] * sc.keep[i + 1];
      double f = 0;
      for (int i = 0; i <= t; ++i) f += E[i] * sc.R[i * b] * sc.eta[0];
      sc.f[t] = f;
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
      TimesTransposed(cnt, out, in, hq, in, W[l], sc.tmp_w.data(), out);
      TimesTransposed(cnt, out, in, hq, in, S[l], sc.tmp_s.data(), out);
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
        ActivateAll(s.gelu, a, hq, int64_t{cnt} * out);
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
      const double beta_b = sc.beta[m - 1], f_b = sc.f[m - 1];
      const double m_b = sc.R[(m - 1) * b] * sc.eta[0];
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
        // Build the new matrices in scratch, then copy: the output may alias W / S.
        float* nw = sc.new_w.data();
        float* ns = sc.new_s.data();
        const int64_t size = int64_t{out} * in;
        const float bb = static_cast<float>(beta_b), fb = static_cast<float>(f_b),
                    mb = static_cast<float>(m_b);
        const float* __restrict w = W[l];
        const float* __restrict sm = S[l];
        for (int64_t i = 0; i < size; ++i) {
          nw[i] = bb * w[i] + fb * sm[i];
          ns[i] = mb * sm[i];
        }
        MatMulNN(out, in, m, sc.coef_w.data(), m, Z[l], in, nw, in, -1.0f, true);
        MatMulNN(out, in, m, sc.coef_s.data(), m, Z[l], in, ns, in, -1.0f, true);
        if (s.max_weight_rms > 0) {  // the weight bound, summed in a fixed order
          double sum_sq = 0;
          for (int64_t i = 0; i < size; ++i) sum_sq += double{nw[i]} * nw[i];
          const double limit = double{s.max_weight_rms} * std::sqrt(static_cast<double>(size));
          if (sum_sq > limit * limit) {
            const float scale = static_cast<float>(limit / std::sqrt(sum_sq));
            for (int64_t i = 0; i < size; ++i) nw[i] *= scale;
          }
        }
        std::memcpy(w_out, nw, sizeof(float) * size);
        std::memcpy(s_out, ns, sizeof(float) * size);
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
