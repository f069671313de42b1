// The sequence kernels built for avx2 (see sequence_kernels_impl.h).
#define TITANS_KERNEL_ISA avx2
#include "kernels/sequence_kernels_impl.h"
