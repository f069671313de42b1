#include "kernels/cpu_isa.h"

namespace titans::kernels {

bool CpuHasIsa(const std::string& isa) {
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (isa == "avx512") {
    return avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
           __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
  }
  if (isa == "avx2") return avx2;
  return isa == "generic";
}

const char* BestCpuIsa() {
  static const char* const best = CpuHasIsa("avx512") ? "avx512"
                                  : CpuHasIsa("avx2") ? "avx2"
                                                      : "generic";
  return best;
}

}  // namespace titans::kernels
