// The memory kernel compiled for avx512 (flags set in kernels/CMakeLists.txt).
#define TITANS_KERNEL_ISA avx512
#include "kernels/memory_kernel_impl.h"
