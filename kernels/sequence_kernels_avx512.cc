// The sequence kernels built for avx512 (see sequence_kernels_impl.h).
#define TITANS_KERNEL_ISA avx512
#include "kernels/sequence_kernels_impl.h"
