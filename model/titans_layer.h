// One Titans block per variant (paper section 4; docs/model.md section 3):
//   MAC  x += combine(y, LMM(y)),  y = Attn([P || M_seg(q) || segment])    then SwiGLU
//   MAG  x += combine(SWA(n), LMM(n)), n = norm(x)                           then SwiGLU
//   MAL  x += LMM(norm(x)); x += SWA(norm(x))                                then SwiGLU
//   LMM  x += LMM(norm(x))                                                   then SwiGLU
// with combine(y, m) = norm(y) * sigmoid(norm(m)), pre-RMSNorm residual blocks throughout.
#ifndef TITANS_MODEL_TITANS_LAYER_H_
#define TITANS_MODEL_TITANS_LAYER_H_

#include <ATen/ATen.h>

#include "model/config.h"
#include "model/params.h"
#include "model/session_state.h"

namespace titans {

// Runs x [B, T, d] (tokens at absolute positions position .. position+T-1) through one block and
// advances *state. For MAC the T tokens must lie inside one segment. Returns [B, T, d].
at::Tensor LayerForward(const ModelConfig& config, const LayerParams& params, LayerState* state,
                        const at::Tensor& x, int64_t position);

// The long-term memory module alone (section 1): q/k/v projections, causal conv, SiLU, L2-norm of
// q and k, data-dependent gates, the chunked memory update with read-after-write retrieval, then
// per-head RMSNorm, SiLU output gate and projection. x [B, T, d] -> [B, T, d].
at::Tensor NeuralMemoryForward(const ModelConfig& config, const NeuralMemoryParams& params,
                               LayerState* state, const at::Tensor& x);

}  // namespace titans

#endif  // TITANS_MODEL_TITANS_LAYER_H_
