// One Titans block per variant (paper section 4; docs/model.md section 3):
//   MAC  x += combine(y, LMM(y)),  y = Attn([P || M_seg(q) || segment])    then SwiGLU
//   MAG  x += combine(SWA(n), LMM(n)), n = norm(x)                           then SwiGLU
//   MAL  x += LMM(norm(x)); x += SWA(norm(x))                                then SwiGLU
//   LMM  x += LMM(norm(x))                                                   then SwiGLU
// with combine(y, m) = norm(y) * sigmoid(norm(m)), pre-RMSNorm residual blocks throughout.
//
// A call may carry several independent streams (sessions) packed along the time axis: each
// StreamSlice names its state and its rows. Token-wise work (norms, projections, feed-forward)
// runs once over all rows. In float32 CPU inference the state-dependent work also runs once for
// all slices: the conv over each slice's tail and the sliding-window attention over each slice's
// cache (kernels/sequence_kernels.h), and the memory update (one kernel call); otherwise (training,
// double, CUDA, and MAC's segment attention) it runs per slice in LibTorch.
#ifndef TITANS_MODEL_TITANS_LAYER_H_
#define TITANS_MODEL_TITANS_LAYER_H_

#include <ATen/ATen.h>

#include <vector>

#include "model/config.h"
#include "model/params.h"
#include "model/session_state.h"

namespace titans {

struct StreamSlice {
  LayerState* state;
  int64_t begin;     // first row (time index) of this stream in x
  int64_t length;    // rows
  int64_t position;  // absolute position of the first row in its stream
};

// Runs x [B, T, d] through one block and advances each slice's state. Slices partition [0, T);
// with B > 1 there is exactly one slice (the state then has batch B). For MAC each slice must lie
// inside one segment of its stream. Returns [B, T, d].
at::Tensor LayerForward(const ModelConfig& config, const LayerParams& params,
                        const std::vector<StreamSlice>& slices, const at::Tensor& x);

// The long-term memory module alone (section 1): q/k/v projections, causal conv, SiLU, L2-norm of
// q and k, data-dependent gates, the chunked memory update with read-after-write retrieval, then
// per-head RMSNorm, SiLU output gate and projection. x [B, T, d] -> [B, T, d].
at::Tensor NeuralMemoryForward(const ModelConfig& config, const NeuralMemoryParams& params,
                               const std::vector<StreamSlice>& slices, const at::Tensor& x);

}  // namespace titans

#endif  // TITANS_MODEL_TITANS_LAYER_H_
