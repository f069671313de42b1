#include "model/determinism.h"

#include <cstdlib>
#include <cstring>

namespace titans {

void UseBatchInvariantCpuKernels() { setenv("ATEN_CPU_CAPABILITY", "default", /*overwrite=*/0); }

bool BatchInvariantCpuKernels() {
  const char* capability = std::getenv("ATEN_CPU_CAPABILITY");
  return capability != nullptr && std::strcmp(capability, "default") == 0;
}

}  // namespace titans
