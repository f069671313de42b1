// The sequence kernels built for generic (see sequence_kernels_impl.h).
#define TITANS_KERNEL_ISA generic
#include "kernels/sequence_kernels_impl.h"
