// Which of the kernels' per-ISA builds this CPU can run. Every kernel (memory, linear, sequence)
// is compiled three times: "avx512" (-mavx512f/vl/bw/dq with AVX2 and FMA), "avx2" (-mavx2
// -mfma) and "generic" (the x86-64 baseline); one answer for all of them, so no build is chosen
// on a CPU that lacks an instruction its flags allow.
// Thread safety: safe to call from any thread.
#ifndef TITANS_KERNELS_CPU_ISA_H_
#define TITANS_KERNELS_CPU_ISA_H_

#include <string>

namespace titans::kernels {

// Whether this CPU has every instruction set the kernels' build `isa` was compiled for; false
// for an unknown name.
bool CpuHasIsa(const std::string& isa);

// The best build this CPU runs: "avx512", "avx2" or "generic".
const char* BestCpuIsa();

// Of one thing's three per-ISA builds (a function pointer, a table of them), the one for `isa`;
// T{} (nullptr) where this CPU lacks that build or the name is unknown.
template <typename T>
T PickIsaBuild(const std::string& isa, T avx512, T avx2, T generic) {
  if (!CpuHasIsa(isa)) return T{};
  if (isa == "avx512") return avx512;
  if (isa == "avx2") return avx2;
  return generic;
}

}  // namespace titans::kernels

#endif  // TITANS_KERNELS_CPU_ISA_H_
