#include "model/memory_math.h"

#include <cmath>

#include "kernels/memory_kernel.h"
#include "kernels/memory_kernel_cuda.h"
#include "model/buffer_pool.h"

#ifdef TITANS_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#endif

namespace titans {
namespace {

at::Tensor Activate(Activation act, const at::Tensor& a) {
  return act == Activation::kSiLU ? at::silu(a) : at::gelu(a);
}

// d activation / d a, written out so that the key-side backward pass is explicit (and itself
// differentiable for training).
at::Tensor ActivationGrad(Activation act, const at::Tensor& a) {
  if (act == Activation::kSiLU) {
    at::Tensor s = at::sigmoid(a);
    return s * (1 + a * (1 - s));
  }
  // GELU (erf form): Phi(a) + a * phi(a).
  const double inv_sqrt2 = 1.0 / std::sqrt(2.0);
  const double inv_sqrt2pi = 1.0 / std::sqrt(2.0 * M_PI);
  return 0.5 * (1 + at::erf(a * inv_sqrt2)) + a * at::exp(-0.5 * a * a) * inv_sqrt2pi;
}

// x [G, r, in] times W^T for W [G, out, in] -> [G, r, out].
at::Tensor ApplyT(const at::Tensor& x, const at::Tensor& w) {
  return at::matmul(x, w.transpose(1, 2));
}

// Cumulative-gate coefficients over the m tokens of the open chunk (positions 1..m):
//   E[t,i] = beta_t / beta_i (i <= t),  R[i,j] = m_i / m_j (j <= i),
//   G[t,j] = theta_j * sum_{i=j..t} E[t,i] R[i,j],  f_t = sum_{i<=t} E[t,i] m_i.
// Every ratio is formed as exp(difference of log cumulative sums) and is <= 1.
struct ChunkCoefficients {
  at::Tensor beta;   // [G, m]
  at::Tensor f;      // [G, m]
  at::Tensor G;      // [G, m, m] lower triangular
  at::Tensor R;      // [G, m, m] lower triangular
  at::Tensor log_m;  // [G, m]
};

ChunkCoefficients Coefficients(const MemoryGates& g) {
  const int64_t m = g.theta.size(1);
  at::Tensor lb = at::cumsum(g.log_keep, 1);  // log beta_t   [G, m]
  at::Tensor lm = at::cumsum(g.log_eta, 1);   // log m_t      [G, m]
  at::Tensor lower = at::ones({m, m}, g.theta.options().dtype(at::kBool)).tril();
  const double neg_inf = -std::numeric_limits<double>::infinity();
  // [G, t, i]: lb_t - lb_i, masked to i <= t.
  at::Tensor e_log = (lb.unsqueeze(2) - lb.unsqueeze(1)).masked_fill(lower.logical_not(), neg_inf);
  at::Tensor r_log = (lm.unsqueeze(2) - lm.unsqueeze(1)).masked_fill(lower.logical_not(), neg_inf);
  ChunkCoefficients c;
  at::Tensor E = at::exp(e_log);
  c.R = at::exp(r_log);
  c.beta = at::exp(lb);
  c.log_m = lm;
  c.f = at::matmul(E, at::exp(lm).unsqueeze(2)).squeeze(2);
  c.G = at::matmul(E, c.R) * g.theta.unsqueeze(1);
  return c;
}

MemoryGates CatGates(const MemoryGates& a, const MemoryGates& b) {
  return MemoryGates{at::cat({a.log_keep, b.log_keep}, 1), at::cat({a.log_eta, b.log_eta}, 1),
                     at::cat({a.theta, b.theta}, 1)};
}

MemoryGates SliceGates(const MemoryGates& g, int64_t begin, int64_t end) {
  return MemoryGates{g.log_keep.slice(1, begin, end), g.log_eta.slice(1, begin, end),
                     g.theta.slice(1, begin, end)};
}

// Processes n tokens that all lie in the open chunk (p + n <= chunk_size).
at::Tensor ChunkPiece(const MemorySpec& spec, MemoryState* st, const at::Tensor& k,
                      const at::Tensor& v, const at::Tensor& q, const MemoryGates& gates) {
  const int L = spec.depth;
  const int64_t p = st->pending();
  const int64_t n = k.size(1);
  const int64_t m = p + n;

  // Forward pass of the new keys at Phi_0, keeping each layer's input and pre-activation.
  std::vector<at::Tensor> inputs(L), pre(L);
  at::Tensor h = k;
  for (int l = 0; l < L; ++l) {
    inputs[l] = h;
    pre[l] = ApplyT(h, st->weights[l]);  // [G, n, out_l]
    if (l + 1 < L) h = Activate(spec.activation, pre[l]);
  }
  at::Tensor prediction = spec.residual ? pre[L - 1] + k : pre[L - 1];
  // Backward pass of l_t = 1/2 ||M(k_t) - v_t||^2 at Phi_0: delta_l = dl/d(pre_l).
  std::vector<at::Tensor> deltas(L);
  deltas[L - 1] = prediction - v;
  for (int l = L - 2; l >= 0; --l) {
    deltas[l] =
        at::matmul(deltas[l + 1], st->weights[l + 1]) * ActivationGrad(spec.activation, pre[l]);
  }

  // The open chunk now holds m = p + n tokens.
  std::vector<at::Tensor> all_inputs(L), all_deltas(L);
  for (int l = 0; l < L; ++l) {
    all_inputs[l] = p > 0 ? at::cat({st->pending_inputs[l], inputs[l]}, 1) : inputs[l];
    all_deltas[l] = p > 0 ? at::cat({st->pending_deltas[l], deltas[l]}, 1) : deltas[l];
  }
  MemoryGates all_gates = p > 0 ? CatGates(st->pending_gates, gates) : gates;
  ChunkCoefficients c = Coefficients(all_gates);

  // Read the new queries through Phi_t = beta_t Phi_0 + f_t S_0 - sum_j G_tj u_j (dual form):
  //   A_l = diag(beta) H W_0^T + diag(f) H S_0^T - (G o (H Z_l^T)) Delta_l
  at::Tensor beta = c.beta.slice(1, p, m).unsqueeze(2);  // [G, n, 1]
  at::Tensor f = c.f.slice(1, p, m).unsqueeze(2);        // [G, n, 1]
  at::Tensor g_rows = c.G.slice(1, p, m);                // [G, n, m]
  at::Tensor hq = q;
  for (int l = 0; l < L; ++l) {
    at::Tensor attn = g_rows * at::matmul(hq, all_inputs[l].transpose(1, 2));  // [G, n, m]
    at::Tensor a = beta * ApplyT(hq, st->weights[l]) + f * ApplyT(hq, st->momentum[l]) -
                   at::matmul(attn, all_deltas[l]);  // [G, n, out_l]
    hq = (l + 1 < L) ? Activate(spec.activation, a) : a;
  }
  at::Tensor y = spec.residual ? hq + q : hq;

  if (m == spec.chunk_size) {
    // Close the chunk: W_b = beta_b W_0 + f_b S_0 - Delta^T diag(G_b.) Z,
    //                  S_b = m_b S_0 - Delta^T diag(theta_j m_b / m_j) Z.
    at::Tensor beta_b = c.beta.select(1, m - 1).view({-1, 1, 1});
    at::Tensor f_b = c.f.select(1, m - 1).view({-1, 1, 1});
    at::Tensor m_b = at::exp(c.log_m.select(1, m - 1)).view({-1, 1, 1});
    at::Tensor g_last = c.G.select(1, m - 1).unsqueeze(2);                      // [G, m, 1]
    at::Tensor s_last = (all_gates.theta * c.R.select(1, m - 1)).unsqueeze(2);  // [G, m, 1]
    for (int l = 0; l < L; ++l) {
      at::Tensor d_t = all_deltas[l].transpose(1, 2);  // [G, out_l, m]
      at::Tensor w_new =
          beta_b * st->weights[l] + f_b * st->momentum[l] - at::matmul(d_t, g_last * all_inputs[l]);
      at::Tensor s_new = m_b * st->momentum[l] - at::matmul(d_t, s_last * all_inputs[l]);
      if (spec.max_weight_rms > 0) {
        // The bound (MemoryConfig::max_weight_rms): scale each group's matrix down to it.
        const double limit =
            spec.max_weight_rms * std::sqrt(static_cast<double>(w_new.size(1) * w_new.size(2)));
        // In double, like the kernels: a diverging matrix's sum of squares overflows float
        // (norm = inf), which made the forward silently saturate and backward produce NaN.
        at::Tensor norm = w_new.to(at::kDouble).pow(2).sum({1, 2}, /*keepdim=*/true).sqrt();
        w_new = w_new * at::clamp_max(limit / norm, 1.0).to(w_new.scalar_type());
      }
      st->weights[l] = w_new;
      st->momentum[l] = s_new;
      st->pending_inputs[l] = all_inputs[l].slice(1, 0, 0);
      st->pending_deltas[l] = all_deltas[l].slice(1, 0, 0);
    }
    st->pending_gates = SliceGates(all_gates, 0, 0);
  } else {
    st->pending_inputs = std::move(all_inputs);
    st->pending_deltas = std::move(all_deltas);
    st->pending_gates = std::move(all_gates);
  }
  return y;
}

// Inference in float32 runs the fused kernels: on CPU always, on CUDA when this build has them
// (and LibTorch has CUDA). Training (autograd), double precision and anything else run the
// plain LibTorch form.
bool KernelApplies(const MemoryState& st, const at::Tensor& k) {
  const at::Tensor& pending = st.chunk ? st.chunk->inputs[0] : st.pending_inputs[0];
  if (at::GradMode::is_enabled() || k.scalar_type() != at::kFloat ||
      st.weights[0].scalar_type() != at::kFloat || pending.scalar_type() != at::kFloat ||
      st.weights[0].device() != k.device()) {
    return false;
  }
  if (k.device().is_cpu()) return true;
#ifdef TITANS_WITH_CUDA
  return k.device().is_cuda() && kernels::CudaKernelsBuilt();
#else
  return false;
#endif
}

void RunTasks(const kernels::MemoryShape& shape, const std::vector<kernels::MemoryTask>& tasks,
              const at::Device& device) {
  if (device.is_cpu()) {
    kernels::RunMemoryTasks(shape, tasks.data(), static_cast<int64_t>(tasks.size()));
    return;
  }
#ifdef TITANS_WITH_CUDA
  const std::string error =
      kernels::RunMemoryTasksCuda(shape, tasks.data(), static_cast<int64_t>(tasks.size()),
                                  c10::cuda::getCurrentCUDAStream(device.index()).stream());
  TORCH_CHECK(error.empty(), error);
#else
  TORCH_CHECK(false, "no CUDA kernels in this build");
#endif
}

// Where group g's rows of one input lie in a tensor: g = b * heads + h starts at
// data + b * batch_step + h * head_step, and token t follows at + t * row_stride. The packed
// layout [B, T, H * d] reads each head in place; the grouped one [G, n, d] is heads = 1.
struct GroupLayout {
  int64_t heads = 1, batch_step = 0, head_step = 0, row_stride = 0;
  int64_t Offset(int64_t g) const { return (g / heads) * batch_step + (g % heads) * head_step; }
};

// Inference: the fused kernel (kernels/memory_kernel.h), one task per group, over any number
// of memory states at once (the server batches sessions this way). The old states stay intact:
// weights / momentum go to new tensors when a chunk closes (recycled ones no state holds, or
// fresh); the open chunk's new rows are appended in place to the state's PendingChunk when it may
// claim them, else written with the carried-over rows into another chunk-sized PendingChunk.
class KernelBatch {
 private:
  using LayerTensors = std::array<at::Tensor, kernels::kMaxMemoryDepth>;
  struct Entry {
    MemoryState* state;
    std::vector<at::Tensor> inputs;  // Add's contiguous copies, alive until Run
    at::Tensor gates_prev, gates_out, y;
    LayerTensors w_in, s_in, w_out, s_out, z_in, d_in, z_out, d_out;
    std::shared_ptr<PendingChunk> chunk;  // the state's open chunk after Run
    int64_t p_out = 0;
  };

 public:
  // `streams`: how many states will be queued (reserves room; any number may be).
  KernelBatch(const MemorySpec& spec, size_t streams) : spec_(spec) { entries_.reserve(streams); }

  // Queues n tokens of `st` (k, v, q [G, n, d], gates [G, n]); Run() returns its y [G, n, d].
  // The grouped layout is the packed one with one head per "batch row": g's rows are row g.
  void Add(MemoryState* st, const at::Tensor& k_in, const at::Tensor& v_in, const at::Tensor& q_in,
           const MemoryGates& gates_in) {
    Entry e;
    e.inputs = {k_in.contiguous(),
                v_in.contiguous(),
                q_in.contiguous(),
                gates_in.log_keep.contiguous(),
                gates_in.log_eta.contiguous(),
                gates_in.theta.contiguous()};
    e.y = at::empty_like(e.inputs[0]);
    const std::vector<at::Tensor>& in = e.inputs;
    const int64_t n = in[0].size(1);
    const at::Tensor k = in[0], v = in[1], q = in[2], y = e.y;  // before e moves
    const MemoryGates gates{in[3], in[4], in[5]};
    QueuePacked(st, 0, n, 1, k, v, q, gates, y, std::move(e));
  }

  // Queues rows [begin, begin + n) of packed inputs that hold many streams along time: k, v, q
  // and y [B, T, H * d] (contiguous), gates [B, T, H] (contiguous); st has G = B * H groups.
  // The kernel reads the inputs and writes y in place (no per-stream copies).
  void AddPacked(MemoryState* st, int64_t begin, int64_t n, int64_t heads, const at::Tensor& k,
                 const at::Tensor& v, const at::Tensor& q, const MemoryGates& gates,
                 const at::Tensor& y) {
    QueuePacked(st, begin, n, heads, k, v, q, gates, y, Entry());
  }

  // Runs every queued task in one kernel call and updates the states. Returns each Add()'s y
  // (undefined for AddPacked entries, whose y is the caller's tensor).
  std::vector<at::Tensor> Run() {
    RunTasks(shape_, tasks_, device_);
    std::vector<at::Tensor> ys;
    ys.reserve(entries_.size());
    for (Entry& e : entries_) {
      MemoryState* st = e.state;
      for (int l = 0; l < spec_.depth; ++l) {
        st->weights[l] = e.w_out[l];
        st->momentum[l] = e.s_out[l];
      }
      // Empty, so that copying the state (a rollback point every step) allocates nothing here.
      st->pending_inputs.clear();
      st->pending_deltas.clear();
      st->pending_gates = MemoryGates{};
      st->chunk = std::move(e.chunk);  // the rows are its first p_out (MemoryState)
      st->chunk_pending = e.p_out;
      ys.push_back(e.y);
    }
    return ys;
  }

 private:
  // AddPacked, with `e` holding what must stay alive until Run: allocates the state's outputs
  // and queues one task per group.
  void QueuePacked(MemoryState* st, int64_t begin, int64_t n, int64_t heads, const at::Tensor& k,
                   const at::Tensor& v, const at::Tensor& q, const MemoryGates& gates,
                   const at::Tensor& y, Entry e) {
    const int L = spec_.depth;
    e.state = st;
    const at::TensorOptions options = k.options();
    const int64_t T = k.size(1), hd = k.size(2), d = hd / heads;
    const GroupLayout kvq{heads, T * hd, d, hd}, gate_rows{heads, T * heads, 1, heads};
    const float* keys = k.data_ptr<float>() + begin * hd;
    const float* values = v.data_ptr<float>() + begin * hd;
    const float* queries = q.data_ptr<float>() + begin * hd;
    const float* log_keep = gates.log_keep.data_ptr<float>() + begin * heads;
    const float* log_eta = gates.log_eta.data_ptr<float>() + begin * heads;
    const float* theta = gates.theta.data_ptr<float>() + begin * heads;
    float* output = y.data_ptr<float>() + begin * hd;
    const int64_t G = st->weights[0].size(0);
    const int64_t p = st->pending(), b = spec_.chunk_size;
    shape_.depth = L;
    shape_.head_dim = static_cast<int>(d);
    shape_.hidden = L > 1 ? static_cast<int>(st->weights[0].size(1)) : static_cast<int>(d);
    shape_.chunk = spec_.chunk_size;
    shape_.gelu = spec_.activation == Activation::kGELU;
    shape_.residual = spec_.residual;
    shape_.max_weight_rms = static_cast<float>(spec_.max_weight_rms);
    device_ = options.device();

    const bool closes = p + n >= b;
    e.p_out = (p + n) % b;
    // Append in place when the state's rows are its chunk's latest (the claim fails for an older
    // copy of the state, which then copies its rows instead).
    if (!closes && st->chunk != nullptr) {
      int64_t expected = p;
      if (st->chunk->rows.compare_exchange_strong(expected, p + n)) e.chunk = st->chunk;
    }
    const bool in_place = e.chunk != nullptr;
    // New buffers (chunk, and weights and momentum at a close) come from buffers earlier states
    // gave up where the current pool has them (model/buffer_pool.h): none is held by anyone else.
    BufferPool* const pool = BufferPool::Current();
    bool chunk_has_buffers = in_place;
    if (!in_place) {  // also when nothing stays pending: the next step appends there in place
      widths_.clear();
      for (int l = 0; l < L; ++l) {
        widths_.emplace_back(st->weights[l].size(2), st->weights[l].size(1));
      }
      if (pool != nullptr) e.chunk = pool->TakeChunk(G, b, widths_, options);
      chunk_has_buffers = e.chunk != nullptr;
      if (!chunk_has_buffers) e.chunk = std::make_shared<PendingChunk>();
      e.chunk->rows.store(e.p_out);
    }
    for (int l = 0; l < L; ++l) {
      e.w_in[l] = st->weights[l].contiguous();
      e.s_in[l] = st->momentum[l].contiguous();
      e.w_out[l] = closes ? BufferPool::TakeOrEmpty(pool, e.w_in[l].sizes(), options) : e.w_in[l];
      e.s_out[l] = closes ? BufferPool::TakeOrEmpty(pool, e.s_in[l].sizes(), options) : e.s_in[l];
      // The kernel uses these as the open chunk's rows, room for a whole chunk.
      if (chunk_has_buffers) {
        e.z_out[l] = e.chunk->inputs[l];
        e.d_out[l] = e.chunk->deltas[l];
      } else {
        e.z_out[l] = at::empty({G, b, e.w_in[l].size(2)}, options);
        e.d_out[l] = at::empty({G, b, e.w_in[l].size(1)}, options);
        e.chunk->inputs[l] = e.z_out[l];
        e.chunk->deltas[l] = e.d_out[l];
      }
      // The carried-over rows: the state's chunk (row-contiguous by construction) or its own
      // tensors.
      if (st->chunk != nullptr) {
        e.z_in[l] = st->chunk->inputs[l];
        e.d_in[l] = st->chunk->deltas[l];
      } else if (p > 0) {
        e.z_in[l] = st->pending_inputs[l];
        e.d_in[l] = st->pending_deltas[l];
        TORCH_CHECK(e.z_in[l].stride(2) == 1 && e.z_in[l].stride(1) == e.z_in[l].size(2) &&
                        e.d_in[l].stride(2) == 1 && e.d_in[l].stride(1) == e.d_in[l].size(2),
                    "pending rows must be row-contiguous");
      }
    }
    const float* gates_in = nullptr;  // [p, 3] rows of group 0, then groups at gates_step
    int64_t gates_step = 0;
    if (p > 0) {
      if (st->chunk != nullptr) {  // the [G, chunk, 3] buffer the kernel wrote: read in place
        e.gates_prev = st->chunk->gates;
      } else {  // e.g. a state read from a snapshot: three separate tensors
        const MemoryGates& pg = st->pending_gates;
        e.gates_prev = at::stack({pg.log_keep, pg.log_eta, pg.theta}, 2).contiguous();  // [G, p, 3]
      }
      gates_in = e.gates_prev.data_ptr<float>();
      gates_step = e.gates_prev.stride(0);
    }
    if (chunk_has_buffers) {
      e.gates_out = e.chunk->gates;
    } else {
      e.gates_out = at::empty({G, b, 3}, options);
      e.chunk->gates = e.gates_out;
    }

    if (tasks_.empty()) tasks_.reserve(entries_.capacity() * G);
    for (int64_t g = 0; g < G; ++g) {
      kernels::MemoryTask t;
      for (int l = 0; l < L; ++l) {
        t.weights_in[l] = e.w_in[l].data_ptr<float>() + g * e.w_in[l].stride(0);
        t.momentum_in[l] = e.s_in[l].data_ptr<float>() + g * e.s_in[l].stride(0);
        t.weights_out[l] = e.w_out[l].data_ptr<float>() + g * e.w_out[l].stride(0);
        t.momentum_out[l] = e.s_out[l].data_ptr<float>() + g * e.s_out[l].stride(0);
        if (p > 0) {
          t.pending_inputs_in[l] = e.z_in[l].data_ptr<float>() + g * e.z_in[l].stride(0);
          t.pending_deltas_in[l] = e.d_in[l].data_ptr<float>() + g * e.d_in[l].stride(0);
        }
        t.pending_inputs_out[l] = e.z_out[l].data_ptr<float>() + g * e.z_out[l].stride(0);
        t.pending_deltas_out[l] = e.d_out[l].data_ptr<float>() + g * e.d_out[l].stride(0);
      }
      if (p > 0) t.pending_gates_in = gates_in + g * gates_step;
      t.pending_gates_out = e.gates_out.data_ptr<float>() + g * e.gates_out.stride(0);
      t.pending_in = static_cast<int>(p);
      t.n = static_cast<int>(n);
      t.keys = keys + kvq.Offset(g);
      t.values = values + kvq.Offset(g);
      t.queries = queries + kvq.Offset(g);
      t.kvq_stride = kvq.row_stride;
      t.log_keep = log_keep + gate_rows.Offset(g);
      t.log_eta = log_eta + gate_rows.Offset(g);
      t.theta = theta + gate_rows.Offset(g);
      t.gate_stride = gate_rows.row_stride;
      t.output = output + kvq.Offset(g);
      t.output_stride = kvq.row_stride;
      tasks_.push_back(t);
    }
    entries_.push_back(std::move(e));
  }

  MemorySpec spec_;
  kernels::MemoryShape shape_;
  at::Device device_ = at::kCPU;
  std::vector<Entry> entries_;
  std::vector<kernels::MemoryTask> tasks_;
  std::vector<std::pair<int64_t, int64_t>> widths_;  // QueuePacked's scratch: layer widths
};

}  // namespace

std::vector<std::pair<int64_t, int64_t>> MemoryLayerShapes(int depth, int64_t head_dim,
                                                           int64_t hidden) {
  std::vector<std::pair<int64_t, int64_t>> shapes;
  for (int l = 0; l < depth; ++l) {
    const int64_t in = l == 0 ? head_dim : hidden;
    const int64_t out = l + 1 == depth ? head_dim : hidden;
    shapes.emplace_back(in, out);
  }
  return shapes;
}

at::Tensor PendingInputs(const MemoryState& st, int l) {
  return st.chunk ? st.chunk->inputs[l].slice(1, 0, st.chunk_pending) : st.pending_inputs[l];
}

at::Tensor PendingDeltas(const MemoryState& st, int l) {
  return st.chunk ? st.chunk->deltas[l].slice(1, 0, st.chunk_pending) : st.pending_deltas[l];
}

MemoryGates PendingGates(const MemoryState& st) {
  if (!st.chunk) return st.pending_gates;
  const at::Tensor rows = st.chunk->gates.slice(1, 0, st.chunk_pending);  // [G, p, 3]
  return MemoryGates{rows.select(2, 0), rows.select(2, 1), rows.select(2, 2)};
}

int64_t PendingBytes(const MemoryState& st) {
  if (!st.chunk) return 0;
  // A buffer [G, chunk, width] holds G * p * width of the state's values.
  auto rows_of = [&](const at::Tensor& buffer) {
    if (!buffer.defined()) return int64_t{0};
    return buffer.size(0) * st.chunk_pending * buffer.size(2) *
           static_cast<int64_t>(buffer.element_size());
  };
  int64_t bytes = rows_of(st.chunk->gates);
  for (size_t l = 0; l < st.weights.size(); ++l) {
    bytes += rows_of(st.chunk->inputs[l]) + rows_of(st.chunk->deltas[l]);
  }
  return bytes;
}

void MaterializePending(MemoryState* st) {
  if (!st->chunk) return;
  const size_t depth = st->weights.size();
  st->pending_inputs.resize(depth);
  st->pending_deltas.resize(depth);
  for (size_t l = 0; l < depth; ++l) {
    st->pending_inputs[l] = PendingInputs(*st, static_cast<int>(l));
    st->pending_deltas[l] = PendingDeltas(*st, static_cast<int>(l));
  }
  st->pending_gates = PendingGates(*st);
  st->chunk.reset();
  st->chunk_pending = 0;
}

MemoryState NewMemoryState(const std::vector<at::Tensor>& initial_weights) {
  MemoryState st;
  const int64_t groups = initial_weights.at(0).size(0);
  for (const at::Tensor& w : initial_weights) {
    st.weights.push_back(w);
    st.momentum.push_back(at::zeros_like(w));
    st.pending_inputs.push_back(at::zeros({groups, 0, w.size(2)}, w.options()));
    st.pending_deltas.push_back(at::zeros({groups, 0, w.size(1)}, w.options()));
  }
  at::Tensor empty = at::zeros({groups, 0}, initial_weights[0].options());
  st.pending_gates = MemoryGates{empty, empty, empty};
  return st;
}

at::Tensor MemoryRead(const MemorySpec& spec, const std::vector<at::Tensor>& weights,
                      const at::Tensor& x) {
  at::Tensor h = x;
  for (int l = 0; l < spec.depth; ++l) {
    h = ApplyT(h, weights[l]);
    if (l + 1 < spec.depth) h = Activate(spec.activation, h);
  }
  return spec.residual ? h + x : h;
}

at::Tensor MemoryWriteRead(const MemorySpec& spec, MemoryState* state, const at::Tensor& k,
                           const at::Tensor& v, const at::Tensor& q, const MemoryGates& gates) {
  return MemoryWriteReadMany(spec, {state}, {MemoryInputs{k, v, q, gates}})[0];
}

std::vector<at::Tensor> MemoryWriteReadMany(const MemorySpec& spec,
                                            const std::vector<MemoryState*>& states,
                                            const std::vector<MemoryInputs>& inputs) {
  bool kernel = true;
  for (size_t i = 0; i < states.size(); ++i) {
    kernel = kernel && KernelApplies(*states[i], inputs[i].k) &&
             inputs[i].k.device() == inputs[0].k.device();
  }
  std::vector<at::Tensor> ys;
  if (kernel) {
    KernelBatch batch(spec, states.size());
    for (size_t i = 0; i < states.size(); ++i) {
      batch.Add(states[i], inputs[i].k, inputs[i].v, inputs[i].q, inputs[i].gates);
    }
    return batch.Run();
  }
  for (size_t i = 0; i < states.size(); ++i) {
    const MemoryInputs& in = inputs[i];
    ys.push_back(MemoryWriteReadTorch(spec, states[i], in.k, in.v, in.q, in.gates));
  }
  return ys;
}

bool MemoryKernelApplies(const std::vector<MemoryState*>& states, const at::Tensor& k) {
  for (const MemoryState* st : states) {
    if (!KernelApplies(*st, k)) return false;
  }
  return true;
}

at::Tensor MemoryWriteReadPacked(const MemorySpec& spec, int64_t heads,
                                 const std::vector<MemoryState*>& states,
                                 const std::vector<PackedRows>& rows, const at::Tensor& k,
                                 const at::Tensor& v, const at::Tensor& q,
                                 const MemoryGates& gates) {
  TORCH_CHECK(states.size() == rows.size(), "one row range per state");
  TORCH_CHECK(MemoryKernelApplies(states, k), "MemoryWriteReadPacked needs the fused kernel");
  const at::Tensor kc = k.contiguous(), vc = v.contiguous(), qc = q.contiguous();
  const MemoryGates gc{gates.log_keep.contiguous(), gates.log_eta.contiguous(),
                       gates.theta.contiguous()};
  at::Tensor y = at::empty_like(kc);
  KernelBatch batch(spec, states.size());
  for (size_t i = 0; i < states.size(); ++i) {
    batch.AddPacked(states[i], rows[i].begin, rows[i].length, heads, kc, vc, qc, gc, y);
  }
  batch.Run();
  return y;
}

at::Tensor MemoryWriteReadTorch(const MemorySpec& spec, MemoryState* state, const at::Tensor& k,
                                const at::Tensor& v, const at::Tensor& q,
                                const MemoryGates& gates) {
  const int64_t n = k.size(1);
  std::vector<at::Tensor> outputs;
  int64_t begin = 0;
  while (begin < n) {
    MaterializePending(state);  // the pending rows below are LibTorch's own tensors
    const int64_t room = spec.chunk_size - state->pending();
    const int64_t end = std::min(n, begin + room);
    outputs.push_back(ChunkPiece(spec, state, k.slice(1, begin, end), v.slice(1, begin, end),
                                 q.slice(1, begin, end), SliceGates(gates, begin, end)));
    begin = end;
  }
  if (outputs.size() == 1) return outputs[0];
  return at::cat(outputs, 1);
}

}  // namespace titans
