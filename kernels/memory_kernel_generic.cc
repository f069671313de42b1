// The memory kernel compiled for generic (flags set in kernels/CMakeLists.txt).
#define TITANS_KERNEL_ISA generic
#include "kernels/memory_kernel_impl.h"
