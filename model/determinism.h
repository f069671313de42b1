// Batch invariance of the whole forward pass on CPU.
//
// The model's own kernels (linear layers, memory update) compute each session's rows the same way
// whatever else is in the call. LibTorch's vectorised elementwise kernels do not: an element near
// the end of a tensor (or of a thread's share of it) takes a scalar tail path whose exp / sigmoid
// can differ from the vector path in the last bit, so a session's results would depend on the
// other sessions packed into the same step. Running LibTorch with its portable (non-vectorised)
// CPU kernels removes that: every element takes the same path. Then a session computes the same
// bits alone or in any batch, and crash recovery (which replays a session alone) reproduces the
// state exactly. The cost is measured in docs/durability.md (about a fifth of CPU throughput).
#ifndef TITANS_MODEL_DETERMINISM_H_
#define TITANS_MODEL_DETERMINISM_H_

namespace titans {

// Selects LibTorch's portable CPU kernels (ATEN_CPU_CAPABILITY=default) unless the environment
// already chooses a capability. Must run before the process's first LibTorch operation (first
// thing in main, after flag parsing); later calls have no effect on LibTorch.
void UseBatchInvariantCpuKernels();

// Whether LibTorch runs its portable CPU kernels in this process (as far as the environment says).
bool BatchInvariantCpuKernels();

}  // namespace titans

#endif  // TITANS_MODEL_DETERMINISM_H_
