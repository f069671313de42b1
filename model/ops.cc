#include "model/ops.h"

#include <cmath>
#include <vector>

#include "kernels/linear.h"

namespace titans {

bool NoGradNeeded(const at::Tensor& x, const at::Tensor& weight) {
  return !at::GradMode::is_enabled() || (!x.requires_grad() && !weight.requires_grad());
}

at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight) {
  if (NoGradNeeded(x, weight) && x.device().is_cpu() && weight.device().is_cpu() &&
      x.scalar_type() == at::kFloat && weight.scalar_type() == at::kFloat && x.dim() >= 1) {
    // Batch-invariant kernel: a row's result does not depend on the other rows (sessions) in
    // the call, so a session computes the same bits alone or in any scheduler step.
    const int64_t k = x.size(-1), n = weight.size(0);
    const at::Tensor x2 = x.reshape({-1, k}).contiguous();
    const at::Tensor w = weight.contiguous();
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
    shape.back() = n;
    at::Tensor y = at::empty(shape, x.options());
    kernels::InvariantLinear(x2.data_ptr<float>(), x2.size(0), k, w.data_ptr<float>(), n,
                             y.data_ptr<float>());
    return y;
  }
  return at::matmul(x, weight.t());
}

at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return x * at::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + eps) * weight;
}

at::Tensor SwiGlu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up,
                  const at::Tensor& down) {
  return Linear(at::silu(Linear(x, gate)) * Linear(x, up), down);
}

at::Tensor CausalConv(const at::Tensor& x, const at::Tensor& taps, at::Tensor* tail) {
  const int64_t T = x.size(1), K = taps.size(1);
  at::Tensor padded = at::cat({*tail, x}, 1);  // [B, K-1+T, C]
  at::Tensor out = padded.slice(1, 0, T) * taps.select(1, 0);
  for (int64_t k = 1; k < K; ++k) out = out + padded.slice(1, k, k + T) * taps.select(1, k);
  *tail = padded.slice(1, T, T + K - 1);
  return out;
}

at::Tensor Rotary(const at::Tensor& x, int64_t start, double theta) {
  const int64_t T = x.size(2), half = x.size(3) / 2;
  auto dbl = at::TensorOptions().dtype(at::kDouble).device(x.device());
  at::Tensor inv_freq = at::pow(theta, -at::arange(0, half, dbl) * (2.0 / x.size(3)));  // [half]
  at::Tensor pos = at::arange(start, start + T, dbl);                                   // [T]
  at::Tensor angle = pos.unsqueeze(1) * inv_freq.unsqueeze(0);                          // [T, half]
  at::Tensor cos = at::cos(angle).to(x.scalar_type());
  at::Tensor sin = at::sin(angle).to(x.scalar_type());
  at::Tensor x1 = x.slice(3, 0, half), x2 = x.slice(3, half, 2 * half);
  return at::cat({x1 * cos - x2 * sin, x2 * cos + x1 * sin}, 3);
}

at::Tensor Attend(const at::Tensor& q_plain, const at::Tensor& q, const at::Tensor& pk,
                  const at::Tensor& pv, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& visible) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(q.size(3)));
  at::Tensor scores = at::matmul(q, k.transpose(2, 3)) * scale;  // [B, H, T, S]
  scores = scores.masked_fill(visible.logical_not(), -std::numeric_limits<float>::infinity());
  at::Tensor values = v;
  if (pk.defined()) {
    scores = at::cat({at::matmul(q_plain, pk.transpose(2, 3)) * scale, scores}, 3);
    values = at::cat({pv, v}, 2);
  }
  return at::matmul(at::softmax(scores, -1), values);
}

std::string ShapeString(at::IntArrayRef shape) {
  std::string out = "[";
  for (size_t i = 0; i < shape.size(); ++i) out += (i ? ", " : "") + std::to_string(shape[i]);
  return out + "]";
}

at::Tensor SplitHeads(const at::Tensor& x, int64_t heads) {
  return x.reshape({x.size(0), x.size(1), heads, -1}).transpose(1, 2);
}

at::Tensor MergeHeads(const at::Tensor& x) {
  return x.transpose(1, 2).reshape({x.size(0), x.size(2), -1});
}

}  // namespace titans
