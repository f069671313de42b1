// The CUDA build of the sequence kernels (sequence_kernels.h): the same stream descriptions, with
// every data pointer in device memory (the stream arrays themselves in host memory; they are
// copied). Each output element is computed by one thread in an order fixed by its stream's data
// and its absolute position, so results are batch- and split-invariant on the GPU as on the CPU
// (not the same bits as the CPU: the GPU's libm differs). Products and sums round separately
// (__fmul_rn / __fadd_rn: nvcc would otherwise fuse them), so the conv matches the CPU bit for bit.
//
// Asynchronous on `cuda_stream` (a cudaStream_t; nullptr = the default stream); returns "" on
// success, else the error. Without a CUDA compiler the build has a stub that returns an error.
// No CUDA includes: usable from g++ translation units.
#ifndef TITANS_KERNELS_SEQUENCE_KERNELS_CUDA_H_
#define TITANS_KERNELS_SEQUENCE_KERNELS_CUDA_H_

#include <cstdint>
#include <string>

#include "kernels/sequence_kernels.h"

namespace titans::kernels {

std::string RaggedCausalConvCuda(const float* x, int64_t channels, const float* w, int taps,
                                 const ConvStream* host_streams, int64_t count, float* y,
                                 void* cuda_stream);

std::string RaggedWindowAttentionCuda(const WindowShape& shape, const float* q, const float* k,
                                      const float* v, const float* persistent_k,
                                      const float* persistent_v,
                                      const AttentionStream* host_streams, int64_t count,
                                      float* out, void* cuda_stream);

}  // namespace titans::kernels

#endif  // TITANS_KERNELS_SEQUENCE_KERNELS_CUDA_H_
