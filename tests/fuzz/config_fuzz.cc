// config.json parsing: never crashes; whatever parses serialises and parses to the same thing.
#include <cstdlib>

#include "model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto config = titans::ParseModelConfig(text);
  if (config.ok()) {
    const std::string json = titans::ModelConfigToJson(*config);
    auto again = titans::ParseModelConfig(json);
    if (!again.ok() || titans::ModelConfigToJson(*again) != json) std::abort();
  }
  return 0;
}
