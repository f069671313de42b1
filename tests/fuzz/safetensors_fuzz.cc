// The safetensors parser (model loading): never crashes on raw or mutated files.
#include <ATen/ATen.h>

#include <cstdlib>

#include "model/safetensors.h"
#include "tests/fuzz/fuzz_util.h"

namespace {

const std::string& Seed() {
  static const std::string* seed = [] {
    std::vector<std::pair<std::string, at::Tensor>> tensors = {
        {"a", at::arange(6, at::kFloat).reshape({2, 3})},
        {"b.weight", at::ones({4}, at::kBFloat16)},
        {"c", at::zeros({0}, at::kLong)}};
    return new std::string(*titans::SerializeSafetensors(tensors, {{"format", "titans"}}));
  }();
  return *seed;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string input = titans::fuzz::InputFrom(data, size, Seed());
  auto file = titans::ParseSafetensors(input);
  if (file.ok()) {
    for (auto& [name, t] : file->tensors) {
      if (!t.defined() || !t.is_contiguous()) std::abort();
    }
  }
  return 0;
}
