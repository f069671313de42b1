#include "model/safetensors.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <new>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "model/file_util.h"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes little-endian");

namespace titans {
namespace {

using Json = nlohmann::json;

constexpr char kMetadataKey[] = "__metadata__";
constexpr int kMaxJsonDepth = 16;
constexpr size_t kMaxDims = 64;

struct DtypeInfo {
  const char* name;
  at::ScalarType type;
  size_t size;
};

constexpr DtypeInfo kDtypes[] = {
    {"F64", at::kDouble, 8},    {"F32", at::kFloat, 4}, {"F16", at::kHalf, 2},
    {"BF16", at::kBFloat16, 2}, {"I64", at::kLong, 8},  {"I32", at::kInt, 4},
    {"I16", at::kShort, 2},     {"I8", at::kChar, 1},   {"U8", at::kByte, 1},
    {"BOOL", at::kBool, 1},
};

// Dtypes defined by the safetensors format that this implementation does not support.
constexpr const char* kUnsupportedDtypes[] = {
    "F8_E4M3", "F8_E5M2", "U16", "U32", "U64", "C64", "F4", "F6_E2M3", "F6_E3M2", "F8_E8M0"};

const DtypeInfo* FindDtype(const std::string& name) {
  for (const DtypeInfo& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

const DtypeInfo* FindDtype(at::ScalarType type) {
  for (const DtypeInfo& d : kDtypes) {
    if (type == d.type) return &d;
  }
  return nullptr;
}

// Quotes a (possibly hostile, huge) name for an error message.
std::string Quote(const std::string& name) {
  constexpr size_t kMax = 200;
  if (name.size() <= kMax) return absl::StrCat("'", name, "'");
  return absl::StrCat("'", name.substr(0, kMax), "...'");
}

absl::Status Invalid(const std::string& msg) {
  return absl::InvalidArgumentError(absl::StrCat("safetensors: ", msg));
}

absl::Status TensorError(const std::string& name, const std::string& msg) {
  return Invalid(absl::StrCat("tensor ", Quote(name), " ", msg));
}

std::string ShapeString(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Rejects JSON nested deeper than kMaxJsonDepth before handing it to the parser, which would
// otherwise allocate a node per bracket. Exact for valid JSON; for invalid JSON it may accept,
// and the parser then rejects.
bool NestingTooDeep(std::string_view text) {
  int depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > kMaxJsonDepth) return true;
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return false;
}

// Returns a JSON integer as int64 in [0, INT64_MAX], or nullopt.
std::optional<int64_t> NonNegativeInt(const Json& j) {
  if (j.is_number_unsigned()) {
    const uint64_t v = j.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return std::nullopt;
    return static_cast<int64_t>(v);
  }
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    if (v < 0) return std::nullopt;
    return v;
  }
  return std::nullopt;
}

struct Entry {
  std::string name;
  const DtypeInfo* dtype = nullptr;
  std::vector<int64_t> shape;
  uint64_t begin = 0;
  uint64_t end = 0;
};

absl::Status ParseEntry(const std::string& name, const Json& j, uint64_t data_size, Entry* out) {
  out->name = name;
  if (name.empty()) return Invalid("empty tensor name");
  if (!j.is_object()) return TensorError(name, "entry is not a JSON object");
  for (const auto& [key, value] : j.items()) {
    (void)value;
    if (key != "dtype" && key != "shape" && key != "data_offsets") {
      return TensorError(name, absl::StrCat("has unknown key ", Quote(key)));
    }
  }
  for (const char* key : {"dtype", "shape", "data_offsets"}) {
    if (!j.contains(key)) return TensorError(name, absl::StrCat("is missing '", key, "'"));
  }

  const Json& dtype = j["dtype"];
  if (!dtype.is_string()) return TensorError(name, "dtype is not a string");
  const std::string& dtype_name = dtype.get_ref<const std::string&>();
  out->dtype = FindDtype(dtype_name);
  if (out->dtype == nullptr) {
    for (const char* unsupported : kUnsupportedDtypes) {
      if (dtype_name == unsupported) {
        return absl::UnimplementedError(absl::StrCat("safetensors: tensor ", Quote(name),
                                                     " has unsupported dtype ", Quote(dtype_name)));
      }
    }
    return TensorError(name, absl::StrCat("has unknown dtype ", Quote(dtype_name)));
  }

  const Json& shape = j["shape"];
  if (!shape.is_array()) return TensorError(name, "shape is not an array");
  if (shape.size() > kMaxDims) {
    return TensorError(name, absl::StrCat("has ", shape.size(), " dims (max ", kMaxDims, ")"));
  }
  // Product of max(dim, 1) must fit int64 so that ATen's strides cannot overflow either.
  int64_t nonzero_product = 1;
  bool has_zero_dim = false;
  for (const Json& dim : shape) {
    const std::optional<int64_t> d = NonNegativeInt(dim);
    if (!d) return TensorError(name, "shape has an entry that is not a non-negative int64");
    out->shape.push_back(*d);
    has_zero_dim |= (*d == 0);
    if (__builtin_mul_overflow(nonzero_product, std::max<int64_t>(*d, 1), &nonzero_product)) {
      return TensorError(name, absl::StrCat("shape ", shape.dump(), " overflows int64"));
    }
  }
  const uint64_t numel = has_zero_dim ? 0 : static_cast<uint64_t>(nonzero_product);
  uint64_t nbytes = 0;
  if (__builtin_mul_overflow(numel, out->dtype->size, &nbytes)) {
    return TensorError(name, absl::StrCat("shape ", ShapeString(out->shape), " of ",
                                          out->dtype->name, " has more than 2^64 bytes"));
  }

  const Json& offsets = j["data_offsets"];
  std::optional<int64_t> begin, end;
  if (offsets.is_array() && offsets.size() == 2) {
    begin = NonNegativeInt(offsets[0]);
    end = NonNegativeInt(offsets[1]);
  }
  if (!begin || !end) {
    return TensorError(name, "data_offsets is not an array of two non-negative integers");
  }
  out->begin = static_cast<uint64_t>(*begin);
  out->end = static_cast<uint64_t>(*end);
  const std::string range = absl::StrCat("[", out->begin, ", ", out->end, ")");
  if (out->begin > out->end) {
    return TensorError(name, absl::StrCat("data_offsets ", range, " are reversed"));
  }
  if (out->end > data_size) {
    return absl::DataLossError(absl::StrCat("safetensors: tensor ", Quote(name), " data_offsets ",
                                            range, " extend past the end of the ", data_size,
                                            "-byte data buffer (truncated file?)"));
  }
  if (out->end - out->begin != nbytes) {
    return TensorError(
        name, absl::StrCat("data_offsets ", range, " do not match shape ", ShapeString(out->shape),
                           " of ", out->dtype->name, " (", nbytes, " bytes)"));
  }
  return absl::OkStatus();
}

absl::Status ParseMetadata(const Json& j, std::map<std::string, std::string>* out) {
  if (!j.is_object()) return Invalid("__metadata__ is not a JSON object");
  for (const auto& [key, value] : j.items()) {
    if (!value.is_string()) {
      return Invalid(absl::StrCat("__metadata__ value for ", Quote(key), " is not a string"));
    }
    (*out)[key] = value.get<std::string>();
  }
  return absl::OkStatus();
}

// Parses the JSON header, rejecting duplicate keys in any object (nlohmann keeps the last).
absl::StatusOr<Json> ParseHeaderJson(std::string_view header) {
  if (NestingTooDeep(header)) {
    return Invalid(absl::StrCat("header JSON is nested deeper than ", kMaxJsonDepth, " levels"));
  }
  std::vector<std::set<std::string>> keys_stack;
  std::string duplicate;  // First duplicate key, with a description of where it was found.
  Json::parser_callback_t callback = [&](int /*depth*/, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) {
      keys_stack.emplace_back();
    } else if (event == Json::parse_event_t::object_end) {
      if (!keys_stack.empty()) keys_stack.pop_back();
    } else if (event == Json::parse_event_t::key && !keys_stack.empty() && parsed.is_string() &&
               duplicate.empty()) {
      const std::string& key = parsed.get_ref<const std::string&>();
      if (!keys_stack.back().insert(key).second) {
        duplicate = absl::StrCat(
            keys_stack.size() == 1 ? "duplicate tensor name " : "duplicate key ", Quote(key));
      }
    }
    return true;
  };
  Json json;
  try {
    json = Json::parse(header.begin(), header.end(), callback);
  } catch (const Json::parse_error& e) {
    std::string what = e.what();
    if (what.size() > 300) what = what.substr(0, 300) + "...";
    return Invalid(absl::StrCat("header is not valid JSON: ", what));
  }
  if (!duplicate.empty()) return Invalid(duplicate);
  if (!json.is_object()) return Invalid("header is not a JSON object");
  return json;
}

absl::StatusOr<SafetensorsFile> ParseUnchecked(std::string_view bytes) {
  if (bytes.size() < 8) {
    return absl::DataLossError(absl::StrCat("safetensors: file is ", bytes.size(),
                                            " bytes, too short for the 8-byte header length"));
  }
  uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) {
    header_size = (header_size << 8) | static_cast<unsigned char>(bytes[i]);
  }
  if (header_size < 2) return Invalid(absl::StrCat("header length ", header_size, " is < 2"));
  if (header_size > kSafetensorsMaxHeaderBytes) {
    return Invalid(absl::StrCat("header length ", header_size, " exceeds the limit of ",
                                kSafetensorsMaxHeaderBytes, " bytes"));
  }
  if (header_size > bytes.size() - 8) {
    return absl::DataLossError(absl::StrCat("safetensors: header length ", header_size,
                                            " exceeds the ", bytes.size() - 8,
                                            " bytes after the length field (truncated file?)"));
  }
  absl::StatusOr<Json> json = ParseHeaderJson(bytes.substr(8, header_size));
  if (!json.ok()) return json.status();
  const std::string_view data = bytes.substr(8 + header_size);

  SafetensorsFile file;
  std::vector<Entry> entries;
  for (const auto& [name, value] : json->items()) {
    if (name == kMetadataKey) {
      if (absl::Status s = ParseMetadata(value, &file.metadata); !s.ok()) return s;
      continue;
    }
    Entry entry;
    if (absl::Status s = ParseEntry(name, value, data.size(), &entry); !s.ok()) return s;
    entries.push_back(std::move(entry));
  }

  // Overlap check over non-empty ranges sorted by start.
  std::vector<const Entry*> sorted;
  for (const Entry& e : entries) {
    if (e.end > e.begin) sorted.push_back(&e);
  }
  std::sort(sorted.begin(), sorted.end(),
            [](const Entry* a, const Entry* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < sorted.size(); ++i) {
    const Entry& prev = *sorted[i - 1];
    const Entry& cur = *sorted[i];
    if (cur.begin < prev.end) {
      return Invalid(absl::StrCat("tensors ", Quote(prev.name), " [", prev.begin, ", ", prev.end,
                                  ") and ", Quote(cur.name), " [", cur.begin, ", ", cur.end,
                                  ") overlap"));
    }
  }

  for (const Entry& e : entries) {
    const char* src = data.data() + e.begin;
    const size_t nbytes = e.end - e.begin;
    if (e.dtype->type == at::kBool) {
      for (size_t i = 0; i < nbytes; ++i) {
        if (static_cast<unsigned char>(src[i]) > 1) {
          return TensorError(e.name, absl::StrCat("BOOL element ", i, " is not 0 or 1"));
        }
      }
    }
    at::Tensor t = at::empty(e.shape, at::TensorOptions().dtype(e.dtype->type));
    if (nbytes > 0) std::memcpy(t.data_ptr(), src, nbytes);
    file.tensors.emplace(e.name, std::move(t));
  }
  return file;
}

// True when nlohmann can emit `s` as a JSON string (i.e. it is valid UTF-8).
bool IsValidUtf8(const std::string& s) {
  try {
    (void)Json(s).dump();
    return true;
  } catch (const Json::exception&) {
    return false;
  }
}

absl::StatusOr<std::string> SerializeUnchecked(
    const std::vector<std::pair<std::string, at::Tensor>>& tensors,
    const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  std::vector<at::Tensor> cpu_tensors;
  cpu_tensors.reserve(tensors.size());
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    if (name.empty()) return Invalid("empty tensor name");
    if (name == kMetadataKey) return Invalid("a tensor cannot be named '__metadata__'");
    if (!IsValidUtf8(name)) return TensorError(name, "name is not valid UTF-8");
    if (header.contains(name)) return TensorError(name, "appears more than once");
    if (!tensor.defined()) return TensorError(name, "is undefined");
    if (tensor.layout() != at::kStrided) return TensorError(name, "is not a dense tensor");
    const DtypeInfo* dtype = FindDtype(tensor.scalar_type());
    if (dtype == nullptr) {
      return TensorError(
          name, absl::StrCat("has unsupported dtype ", c10::toString(tensor.scalar_type())));
    }
    at::Tensor t = tensor.detach();
    if (!t.device().is_cpu()) t = t.to(at::kCPU);
    t = t.contiguous();
    const uint64_t nbytes = static_cast<uint64_t>(t.numel()) * dtype->size;
    header[name] = {{"dtype", dtype->name},
                    {"shape", t.sizes().vec()},
                    {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
    cpu_tensors.push_back(std::move(t));
  }
  if (!metadata.empty()) {
    Json meta = Json::object();
    for (const auto& [key, value] : metadata) {
      if (!IsValidUtf8(key) || !IsValidUtf8(value)) {
        return Invalid(absl::StrCat("__metadata__ entry ", Quote(key), " is not valid UTF-8"));
      }
      meta[key] = value;
    }
    header[kMetadataKey] = std::move(meta);
  }

  std::string header_text = header.dump();
  header_text.resize((header_text.size() + 7) / 8 * 8, ' ');  // Align the data buffer to 8.
  std::string out;
  out.reserve(8 + header_text.size() + offset);
  uint64_t header_size = header_text.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((header_size >> (8 * i)) & 0xFF));
  out += header_text;
  for (const at::Tensor& t : cpu_tensors) {
    const size_t nbytes = static_cast<size_t>(t.numel()) * t.element_size();
    if (nbytes > 0) out.append(static_cast<const char*>(t.data_ptr()), nbytes);
  }
  return out;
}

}  // namespace

absl::StatusOr<SafetensorsFile> ParseSafetensors(std::string_view bytes) {
  try {
    return ParseUnchecked(bytes);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("safetensors: out of memory while parsing");
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("safetensors: unexpected error: ", e.what()));
  }
}

absl::StatusOr<SafetensorsFile> ReadSafetensors(const std::string& path) {
  absl::StatusOr<std::string> bytes = ReadFileToString(path);
  if (!bytes.ok()) return bytes.status();
  absl::StatusOr<SafetensorsFile> file = ParseSafetensors(*bytes);
  if (!file.ok()) {
    return absl::Status(file.status().code(), absl::StrCat(path, ": ", file.status().message()));
  }
  return file;
}

absl::StatusOr<std::string> SerializeSafetensors(
    const std::vector<std::pair<std::string, at::Tensor>>& tensors,
    const std::map<std::string, std::string>& metadata) {
  try {
    return SerializeUnchecked(tensors, metadata);
  } catch (const std::bad_alloc&) {
    return absl::ResourceExhaustedError("safetensors: out of memory while serializing");
  } catch (const std::exception& e) {  // c10::Error, nlohmann::json::exception, ...
    return absl::InternalError(absl::StrCat("safetensors: unexpected error: ", e.what()));
  }
}

absl::Status WriteSafetensors(const std::string& path,
                              const std::vector<std::pair<std::string, at::Tensor>>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  absl::StatusOr<std::string> bytes = SerializeSafetensors(tensors, metadata);
  if (!bytes.ok()) return bytes.status();
  return WriteFileAtomic(path, *bytes);
}

}  // namespace titans
