// A slow, plain per-token reference of the neural memory, written straight from the equations
// (paper eqs. 13-14 with chunk-start gradients, titans-model.md section 2). It materialises the
// weights after every token and takes each gradient with autograd, so it shares no algebra with
// model/memory_math.cc. Test-only.
#ifndef TITANS_TESTS_MODEL_MEMORY_REFERENCE_H_
#define TITANS_TESTS_MODEL_MEMORY_REFERENCE_H_

#include <torch/torch.h>

#include <vector>

#include "model/memory_math.h"

namespace titans::testing {

struct ReferenceMemory {
  std::vector<at::Tensor> weights;               // Phi_{t}, per layer [G, out, in]
  std::vector<at::Tensor> momentum;              // S_{t}
  std::vector<at::Tensor> chunk_start;           // Phi at the current chunk's start
  std::vector<at::Tensor> chunk_start_momentum;  // S at the current chunk's start
  int64_t position = 0;                          // tokens written so far
};

inline ReferenceMemory NewReferenceMemory(const std::vector<at::Tensor>& init) {
  ReferenceMemory r;
  for (const auto& w : init) {
    r.weights.push_back(w);
    r.momentum.push_back(torch::zeros_like(w));
  }
  r.chunk_start = r.weights;
  r.chunk_start_momentum = r.momentum;
  return r;
}

inline at::Tensor ReferenceMlp(const MemorySpec& spec, const std::vector<at::Tensor>& w,
                               const at::Tensor& x /* [G, d] */) {
  at::Tensor h = x;
  for (int l = 0; l < spec.depth; ++l) {
    h = torch::einsum("goi,gi->go", {w[l], h});
    if (l + 1 < spec.depth) {
      h = spec.activation == Activation::kSiLU ? torch::silu(h) : torch::gelu(h);
    }
  }
  return spec.residual ? h + x : h;
}

// Writes token t (k, v, q: [G, d]; gates: [G]) and returns y_t = M_{Phi_t}(q_t).
inline at::Tensor ReferenceStep(const MemorySpec& spec, ReferenceMemory* r, const at::Tensor& k,
                                const at::Tensor& v, const at::Tensor& q, const at::Tensor& alpha,
                                const at::Tensor& eta, const at::Tensor& theta) {
  if (r->position % spec.chunk_size == 0) {
    r->chunk_start = r->weights;
    r->chunk_start_momentum = r->momentum;
  }
  // u_t = grad of 1/2 ||M_{Phi_0}(k_t) - v_t||^2 at the chunk-start weights Phi_0. The graph is
  // kept (create_graph) so that training tests can differentiate through the update.
  std::vector<at::Tensor> phi0;
  for (const auto& w : r->chunk_start) {
    phi0.push_back(w.requires_grad() ? w : w.detach().requires_grad_(true));
  }
  torch::AutoGradMode enable(true);
  at::Tensor loss = 0.5 * (ReferenceMlp(spec, phi0, k) - v).pow(2).sum();
  std::vector<at::Tensor> grads =
      torch::autograd::grad({loss}, phi0, {}, /*retain_graph=*/true, /*create_graph=*/true);
  for (size_t l = 0; l < r->weights.size(); ++l) {
    auto e = eta.view({-1, 1, 1}), th = theta.view({-1, 1, 1}), a = alpha.view({-1, 1, 1});
    r->momentum[l] = e * r->momentum[l] - th * grads[l];       // eq. 14: S_t
    r->weights[l] = (1 - a) * r->weights[l] + r->momentum[l];  // eq. 13: Phi_t
  }
  r->position += 1;
  return ReferenceMlp(spec, r->weights, q);
}

}  // namespace titans::testing

#endif  // TITANS_TESTS_MODEL_MEMORY_REFERENCE_H_
