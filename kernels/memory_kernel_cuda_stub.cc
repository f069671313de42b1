// Built instead of memory_kernel_cuda.cu when no CUDA compiler is available.
#include "kernels/memory_kernel_cuda.h"

namespace titans::kernels {

bool CudaKernelsBuilt() { return false; }

std::string RunMemoryTasksCuda(const MemoryShape&, const MemoryTask*, int64_t, void*) {
  return "this build has no CUDA kernels (configure with nvcc available, see "
         "kernels/CMakeLists.txt)";
}

}  // namespace titans::kernels
