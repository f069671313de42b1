// Small tensor operations shared by the model's layers (shapes in comments: B batch, T tokens,
// H heads, dh head dim, d model width). Pure functions; none modifies its inputs.
#ifndef TITANS_MODEL_OPS_H_
#define TITANS_MODEL_OPS_H_

#include <ATen/ATen.h>

#include <cstdint>
#include <string>

namespace titans {

// Whether an op on x with `weight` records no autograd graph (grad mode off, or neither needs a
// gradient): where the inference kernels (kernels/) may replace LibTorch's form.
bool NoGradNeeded(const at::Tensor& x, const at::Tensor& weight);

// y = x W^T for W [out, in]. Float CPU inference (no autograd) runs the batch-invariant kernel
// (kernels/linear.h): each row's result is independent of the other rows; otherwise at::matmul.
at::Tensor Linear(const at::Tensor& x, const at::Tensor& weight);

// RMSNorm over the last dimension: x / sqrt(mean(x^2) + eps) * weight.
at::Tensor RmsNorm(const at::Tensor& x, const at::Tensor& weight, double eps);

// SwiGLU feed-forward: W_down (SiLU(W_gate x) * W_up x).
at::Tensor SwiGlu(const at::Tensor& x, const at::Tensor& gate, const at::Tensor& up,
                  const at::Tensor& down);

// Causal depthwise 1-D convolution over time. x [B, T, C], taps [C, K] (tap K-1 is the current
// token), *tail [B, K-1, C] holds the inputs of the K-1 tokens before x and is replaced by the
// last K-1 inputs (so a stream split anywhere gives the same outputs).
at::Tensor CausalConv(const at::Tensor& x, const at::Tensor& taps, at::Tensor* tail);

// Rotary position embedding (rotate-half pairs (i, i + dh/2)) for x [B, H, T, dh] at positions
// start, start+1, ... Angles are computed in double precision: fp32 angles lose the relative
// phase beyond ~10^6 positions (docs/model.md, "Positions").
at::Tensor Rotary(const at::Tensor& x, int64_t start, double theta);

// Softmax attention of rotated queries q [B, H, T, dh] over rotated keys / values k, v
// [B, H, S, dh] (visible [T, S], bool) and over position-free persistent keys / values pk, pv
// [B, H, N_p, dh] (always visible; undefined tensors for none). Persistent keys are scored with
// the unrotated queries q_plain, so their weight does not depend on the absolute position.
// Every row must see at least one key. Returns [B, H, T, dh].
at::Tensor Attend(const at::Tensor& q_plain, const at::Tensor& q, const at::Tensor& pk,
                  const at::Tensor& pv, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& visible);

// "[2, 3]": shapes in error messages.
std::string ShapeString(at::IntArrayRef shape);

// [B, T, H*dh] <-> [B, H, T, dh].
at::Tensor SplitHeads(const at::Tensor& x, int64_t heads);
at::Tensor MergeHeads(const at::Tensor& x);

}  // namespace titans

#endif  // TITANS_MODEL_OPS_H_
