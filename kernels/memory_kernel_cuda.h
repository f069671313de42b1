// The CUDA build of the memory kernel: the same MemoryTask API as memory_kernel.h, with every
// data pointer in device memory. One thread block per task; each output element is computed by
// one thread in a fixed order, so results are batch-invariant as on the CPU.
//
// This header has no CUDA includes; it is usable from g++ translation units.
#ifndef TITANS_KERNELS_MEMORY_KERNEL_CUDA_H_
#define TITANS_KERNELS_MEMORY_KERNEL_CUDA_H_

#include <cstdint>
#include <string>

#include "kernels/memory_kernel.h"

namespace titans::kernels {

// Whether this build compiled the CUDA kernels (nvcc was found; see kernels/CMakeLists.txt).
bool CudaKernelsBuilt();

// Runs `count` tasks (the array itself in host memory, its pointers in device memory) on
// `cuda_stream` (a cudaStream_t; nullptr = the default stream). Asynchronous: the caller
// synchronises the stream before reading results. Returns "" on success, else the error.
std::string RunMemoryTasksCuda(const MemoryShape& shape, const MemoryTask* host_tasks,
                               int64_t count, void* cuda_stream);

}  // namespace titans::kernels

#endif  // TITANS_KERNELS_MEMORY_KERNEL_CUDA_H_
