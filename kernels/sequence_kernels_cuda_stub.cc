// Built instead of sequence_kernels.cu when no CUDA compiler is available.
#include "kernels/sequence_kernels_cuda.h"

namespace titans::kernels {
namespace {
constexpr char kAbsent[] =
    "this build has no CUDA kernels (configure with nvcc available, see kernels/CMakeLists.txt)";
}  // namespace

std::string RaggedCausalConvCuda(const float*, int64_t, const float*, int, const ConvStream*,
                                 int64_t, float*, void*) {
  return kAbsent;
}

std::string RaggedWindowAttentionCuda(const WindowShape&, const float*, const float*, const float*,
                                      const float*, const float*, const AttentionStream*, int64_t,
                                      float*, void*) {
  return kAbsent;
}

}  // namespace titans::kernels
