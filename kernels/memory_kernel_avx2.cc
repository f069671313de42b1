// The memory kernel compiled for avx2 (flags set in kernels/CMakeLists.txt).
#define TITANS_KERNEL_ISA avx2
#include "kernels/memory_kernel_impl.h"
