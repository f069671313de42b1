// Reader and writer for the safetensors format (https://github.com/huggingface/safetensors):
//
//   [8 bytes: little-endian uint64 N][N bytes: UTF-8 JSON header][data buffer]
//
// The header maps each tensor name to {"dtype": "F32", "shape": [...], "data_offsets": [b, e]}
// (offsets relative to the start of the data buffer, data little-endian and row-major), plus an
// optional "__metadata__" object of string -> string. Supported dtypes and their ATen types:
//   F64 kDouble, F32 kFloat, F16 kHalf, BF16 kBFloat16, I64 kLong, I32 kInt, I16 kShort,
//   I8 kChar, U8 kByte, BOOL kBool.
//
// All functions report failures as absl::Status values and never throw. They hold no global
// state and are safe to call concurrently (WriteSafetensors inherits WriteFileAtomic's rule that
// concurrent writes to the same path must be serialized by the caller).

#ifndef TITANS_MODEL_SAFETENSORS_H_
#define TITANS_MODEL_SAFETENSORS_H_

#include <ATen/ATen.h>

#include <map>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace titans {

struct SafetensorsFile {
  // Contiguous CPU tensors that own their memory (no aliasing of the parsed bytes).
  std::map<std::string, at::Tensor> tensors;
  std::map<std::string, std::string> metadata;
};

// Largest accepted JSON header, in bytes.
inline constexpr uint64_t kSafetensorsMaxHeaderBytes = 100 * 1000 * 1000;

// Parses a complete safetensors file held in `bytes`; the result does not reference `bytes`.
// Safe on arbitrary (hostile) input. Errors:
//   DATA_LOSS         the buffer is shorter than the header length or a tensor's data_offsets
//                     say (truncated file);
//   UNIMPLEMENTED     a dtype that safetensors defines but this reader does not support
//                     (e.g. F8_E4M3, U32);
//   INVALID_ARGUMENT  anything else malformed: header length < 2 or above
//                     kSafetensorsMaxHeaderBytes, invalid JSON or UTF-8, unknown or missing
//                     entry keys, unknown dtype, negative / overflowing shape, more than 64 dims,
//                     data_offsets not matching the shape, overlapping tensors, duplicate names,
//                     non-string metadata, BOOL bytes other than 0 / 1;
//   RESOURCE_EXHAUSTED / INTERNAL  allocation failure or an unexpected ATen error.
// Messages start with "safetensors: " and name the offending tensor. Gaps between tensors and
// trailing bytes after the last tensor are tolerated.
absl::StatusOr<SafetensorsFile> ParseSafetensors(std::string_view bytes);

// Reads and parses the file at `path`: ReadFileToString() errors (NOT_FOUND, ...) or
// ParseSafetensors() errors, with the path prepended to the message.
absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path);

// Serializes `tensors` (laid out in the given order, without gaps) and `metadata` (omitted from
// the header when empty). Tensors may live on any device, be non-contiguous or require grad:
// their values are detached, copied to the CPU and made contiguous; the inputs are not modified.
// The header is space-padded so the data buffer starts at an 8-byte-aligned offset. The output is
// deterministic (JSON keys sorted). INVALID_ARGUMENT for an empty, duplicate or "__metadata__"
// name, an undefined or non-strided tensor, an unsupported dtype, or a name / metadata string
// that is not valid UTF-8.
absl::StatusOr<std::string> SerializeSafetensors(
    const std::vector<std::pair<std::string, at::Tensor>>& tensors,
    const std::map<std::string, std::string>& metadata);

// SerializeSafetensors() followed by WriteFileAtomic(path, ...).
absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata);

}  // namespace titans

#endif  // TITANS_MODEL_SAFETENSORS_H_
