#include "model/safetensors.h"

#include <gtest/gtest.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstring>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "model/file_util.h"

namespace titans {
namespace {

using TensorList = std::vector<std::pair<std::string, at::Tensor>>;

// Builds a raw file from a header text and a data buffer.
std::string RawFile(const std::string& header, const std::string& data = "") {
  std::string out;
  uint64_t n = header.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xFF));
  return out + header + data;
}

std::string Bytes(const at::Tensor& t) {
  return std::string(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
}

// A tensor with random bytes (valid 0/1 values for bool).
at::Tensor RandomTensor(at::ScalarType type, at::IntArrayRef shape, std::mt19937* rng) {
  at::Tensor t = at::empty(shape, at::TensorOptions().dtype(type));
  auto* p = static_cast<unsigned char*>(t.data_ptr());
  const size_t n = t.numel() * t.element_size();
  for (size_t i = 0; i < n; ++i) {
    p[i] = static_cast<unsigned char>(type == at::kBool ? (*rng)() & 1 : (*rng)());
  }
  return t;
}

std::string Repeat(const std::string& s, int n) {
  std::string out;
  for (int i = 0; i < n; ++i) out += s;
  return out;
}

absl::Status ParseStatus(const std::string& bytes) { return ParseSafetensors(bytes).status(); }

std::string Message(const absl::Status& s) { return std::string(s.message()); }

const char kOneTensorHeader[] = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";

TEST(SafetensorsTest, RoundTripEveryDtype) {
  std::mt19937 rng(1);
  const std::vector<at::ScalarType> types = {at::kDouble, at::kFloat, at::kHalf,  at::kBFloat16,
                                             at::kLong,   at::kInt,   at::kShort, at::kChar,
                                             at::kByte,   at::kBool};
  const std::vector<std::vector<int64_t>> shapes = {{}, {0}, {3, 0, 2}, {5}, {2, 3, 4}};
  TensorList tensors;
  for (at::ScalarType type : types) {
    for (size_t i = 0; i < shapes.size(); ++i) {
      tensors.emplace_back(std::string(c10::toString(type)) + "." + std::to_string(i),
                           RandomTensor(type, shapes[i], &rng));
    }
  }
  absl::StatusOr<std::string> bytes = SerializeSafetensors(tensors, {});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<SafetensorsFile> file = ParseSafetensors(*bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE(file->metadata.empty());
  ASSERT_EQ(file->tensors.size(), tensors.size());
  for (const auto& [name, expected] : tensors) {
    SCOPED_TRACE(name);
    const at::Tensor& got = file->tensors.at(name);
    EXPECT_EQ(got.scalar_type(), expected.scalar_type());
    EXPECT_EQ(got.sizes(), expected.sizes());
    EXPECT_TRUE(got.device().is_cpu());
    EXPECT_TRUE(got.is_contiguous());
    EXPECT_EQ(Bytes(got), Bytes(expected));  // Bit-exact, NaN payloads included.
  }
}

TEST(SafetensorsTest, HeaderIsAlignedAndDeterministic) {
  TensorList tensors = {{"b", at::arange(3, at::kFloat)}, {"a", at::arange(5, at::kLong)}};
  absl::StatusOr<std::string> first = SerializeSafetensors(tensors, {{"k", "v"}});
  absl::StatusOr<std::string> second = SerializeSafetensors(tensors, {{"k", "v"}});
  ASSERT_TRUE(first.ok() && second.ok());
  EXPECT_EQ(*first, *second);
  uint64_t n = 0;
  std::memcpy(&n, first->data(), 8);
  EXPECT_EQ((8 + n) % 8, 0u);
  // Tensors are laid out in the given order.
  const nlohmann::json header = nlohmann::json::parse(first->substr(8, n));
  EXPECT_EQ(header["b"]["data_offsets"], nlohmann::json({0, 12}));
  EXPECT_EQ(header["a"]["data_offsets"], nlohmann::json({12, 52}));
  EXPECT_EQ(first->size(), 8 + n + 52);
}

TEST(SafetensorsTest, MetadataRoundTrip) {
  const std::map<std::string, std::string> metadata = {
      {"format", "pt"}, {"empty", ""}, {"unicode", "h\xC3\xA9llo \xE2\x9C\x93"}, {"q", "\"\\\n"}};
  absl::StatusOr<std::string> bytes = SerializeSafetensors({{"x", at::ones({1})}}, metadata);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<SafetensorsFile> file = ParseSafetensors(*bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->metadata, metadata);
}

TEST(SafetensorsTest, EmptyFile) {
  absl::StatusOr<std::string> bytes = SerializeSafetensors({}, {});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<SafetensorsFile> file = ParseSafetensors(*bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE(file->tensors.empty());
}

TEST(SafetensorsTest, NonContiguousAndRequiresGradInputs) {
  at::Tensor base = at::arange(24, at::kFloat).reshape({4, 6});
  at::Tensor transposed = base.t();
  at::Tensor strided = base.slice(1, 0, 6, 2);
  at::Tensor expanded = at::arange(3, at::kInt).expand({2, 3});
  at::Tensor grad = at::ones({2, 2}, at::kFloat).set_requires_grad(true);
  ASSERT_FALSE(transposed.is_contiguous());
  TensorList tensors = {{"t", transposed}, {"s", strided}, {"e", expanded}, {"g", grad * 3}};
  absl::StatusOr<std::string> bytes = SerializeSafetensors(tensors, {});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  absl::StatusOr<SafetensorsFile> file = ParseSafetensors(*bytes);
  ASSERT_TRUE(file.ok()) << file.status();
  for (const auto& [name, expected] : tensors) {
    const at::Tensor& got = file->tensors.at(name);
    EXPECT_TRUE(at::equal(got, expected.detach())) << name;
    EXPECT_FALSE(got.requires_grad());
  }
}

TEST(SafetensorsTest, SerializeRejectsBadInput) {
  const at::Tensor t = at::zeros({2});
  const std::map<std::string, std::string> none;
  EXPECT_EQ(SerializeSafetensors({{"", t}}, none).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status dup = SerializeSafetensors({{"a", t}, {"b", t}, {"a", t}}, none).status();
  EXPECT_EQ(dup.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(Message(dup).find("'a'"), std::string::npos) << dup;
  EXPECT_EQ(SerializeSafetensors({{"__metadata__", t}}, none).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SerializeSafetensors({{"u", at::Tensor()}}, none).status().code(),
            absl::StatusCode::kInvalidArgument);
  absl::Status complex =
      SerializeSafetensors({{"c", at::zeros({2}, at::kComplexFloat)}}, none).status();
  EXPECT_EQ(complex.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(Message(complex).find("ComplexFloat"), std::string::npos) << complex;
  EXPECT_EQ(SerializeSafetensors({{"bad\xFF", t}}, none).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(SerializeSafetensors({{"x", t}}, {{"k", "\xC3"}}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SafetensorsTest, ReadWriteFile) {
  std::string dir = ::testing::TempDir() + "/safetensors_test.XXXXXX";
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  const std::string path = dir + "/model.safetensors";
  ASSERT_TRUE(WriteSafetensors(path, {{"w", at::arange(6, at::kShort)}}, {{"a", "b"}}).ok());
  absl::StatusOr<SafetensorsFile> file = ReadSafetensors(path);
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_TRUE(at::equal(file->tensors.at("w"), at::arange(6, at::kShort)));
  EXPECT_EQ(file->metadata.at("a"), "b");

  ASSERT_TRUE(WriteFileAtomic(path, "garbage!!").ok());
  absl::Status bad = ReadSafetensors(path).status();
  EXPECT_FALSE(bad.ok());
  EXPECT_NE(Message(bad).find(path), std::string::npos) << bad;

  ::unlink(path.c_str());
  absl::Status missing = ReadSafetensors(path).status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound) << missing;
  EXPECT_NE(Message(missing).find(path), std::string::npos) << missing;
  ::rmdir(dir.c_str());
}

TEST(SafetensorsTest, AcceptsSpacePaddedHeaderAndGaps) {
  std::string data(12, '\0');
  const float v[2] = {1.5f, -2.0f};
  std::memcpy(&data[4], v, 8);
  const std::string header = R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})";
  absl::StatusOr<SafetensorsFile> file = ParseSafetensors(RawFile(header + "      ", data));
  ASSERT_TRUE(file.ok()) << file.status();
  EXPECT_EQ(file->tensors.at("w")[1].item<float>(), -2.0f);
}

TEST(SafetensorsTest, TruncationAtEveryPositionFails) {
  absl::StatusOr<std::string> bytes = SerializeSafetensors(
      {{"a", at::arange(3, at::kFloat)}, {"b", at::arange(2, at::kByte)}}, {{"k", "v"}});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  ASSERT_TRUE(ParseSafetensors(*bytes).ok());
  for (size_t len = 0; len < bytes->size(); ++len) {
    absl::Status s = ParseStatus(bytes->substr(0, len));
    EXPECT_FALSE(s.ok()) << "len " << len;
    if (len >= 8) {
      EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << "len " << len << ": " << s;
    }
  }
}

TEST(SafetensorsTest, FlippedAndRandomBytesNeverCrash) {
  absl::StatusOr<std::string> bytes = SerializeSafetensors(
      {{"a", at::arange(3, at::kFloat)}, {"flag", at::ones({2}, at::kBool)}}, {{"k", "v"}});
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  uint64_t n = 0;
  std::memcpy(&n, bytes->data(), 8);
  for (size_t pos = 0; pos < 8 + n; ++pos) {
    for (unsigned mask : {0x01u, 0x20u, 0x80u, 0xFFu}) {
      std::string mutated = *bytes;
      mutated[pos] = static_cast<char>(mutated[pos] ^ mask);
      absl::StatusOr<SafetensorsFile> file = ParseSafetensors(mutated);
      if (file.ok()) {
        for (const auto& [name, t] : file->tensors) EXPECT_TRUE(t.is_contiguous()) << name;
      }
    }
  }
  std::mt19937 rng(3);
  for (int iter = 0; iter < 3000; ++iter) {
    std::string mutated = *bytes;
    const int edits = 1 + rng() % 4;
    for (int e = 0; e < edits; ++e) {
      const size_t pos = rng() % mutated.size();
      switch (rng() % 3) {
        case 0:
          mutated[pos] = static_cast<char>(rng());
          break;
        case 1:
          mutated.erase(pos, 1);
          break;
        default:
          mutated.insert(pos, 1, "{}[]\",:0-9e"[rng() % 11]);
      }
    }
    (void)ParseSafetensors(mutated);
  }
}

struct BadCase {
  const char* label;
  std::string header;
  std::string data;
  absl::StatusCode code;
  const char* message_part;
};

TEST(SafetensorsTest, RejectsMalformedHeaders) {
  const std::string d8(8, '\0');
  const std::vector<BadCase> cases = {
      {"not json", "{not json}", d8, absl::StatusCode::kInvalidArgument, "not valid JSON"},
      {"array", "[1, 2]", "", absl::StatusCode::kInvalidArgument, "not a JSON object"},
      {"trailing garbage", std::string(kOneTensorHeader) + "x", d8,
       absl::StatusCode::kInvalidArgument, "not valid JSON"},
      {"invalid utf8", "{\"\xFF\":1}", "", absl::StatusCode::kInvalidArgument, "JSON"},
      {"entry not object", R"({"w":[1]})", "", absl::StatusCode::kInvalidArgument,
       "'w' entry is not a JSON object"},
      {"missing dtype", R"({"w":{"shape":[2],"data_offsets":[0,8]}})", d8,
       absl::StatusCode::kInvalidArgument, "'w' is missing 'dtype'"},
      {"unknown key", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}})", d8,
       absl::StatusCode::kInvalidArgument, "unknown key 'x'"},
      {"dtype not string", R"({"w":{"dtype":4,"shape":[2],"data_offsets":[0,8]}})", d8,
       absl::StatusCode::kInvalidArgument, "dtype is not a string"},
      {"unknown dtype", R"({"w":{"dtype":"F33","shape":[2],"data_offsets":[0,8]}})", d8,
       absl::StatusCode::kInvalidArgument, "unknown dtype 'F33'"},
      {"unsupported dtype", R"({"w":{"dtype":"F8_E4M3","shape":[2],"data_offsets":[0,2]}})", d8,
       absl::StatusCode::kUnimplemented, "unsupported dtype 'F8_E4M3'"},
      {"negative dim", R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", d8,
       absl::StatusCode::kInvalidArgument, "non-negative"},
      {"float dim", R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", d8,
       absl::StatusCode::kInvalidArgument, "non-negative"},
      {"shape not array", R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", d8,
       absl::StatusCode::kInvalidArgument, "shape is not an array"},
      {"overflowing shape",
       R"({"w":{"dtype":"U8","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", "",
       absl::StatusCode::kInvalidArgument, "overflows int64"},
      {"overflowing bytes",
       R"({"w":{"dtype":"F64","shape":[4611686018427387904],"data_offsets":[0,0]}})", "",
       absl::StatusCode::kInvalidArgument, "more than 2^64 bytes"},
      {"huge dim", R"({"w":{"dtype":"U8","shape":[18446744073709551615],"data_offsets":[0,0]}})",
       "", absl::StatusCode::kInvalidArgument, "non-negative int64"},
      {"offsets wrong arity", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,4,8]}})", d8,
       absl::StatusCode::kInvalidArgument, "two non-negative integers"},
      {"negative offset", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", d8,
       absl::StatusCode::kInvalidArgument, "two non-negative integers"},
      {"reversed offsets", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", d8,
       absl::StatusCode::kInvalidArgument, "reversed"},
      {"offsets past end", R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", d8,
       absl::StatusCode::kDataLoss, "past the end"},
      {"wrong size", R"({"layers.0.w":{"dtype":"F32","shape":[4,8],"data_offsets":[0,96]}})",
       std::string(128, '\0'), absl::StatusCode::kInvalidArgument,
       "safetensors: tensor 'layers.0.w' data_offsets [0, 96) do not match shape [4, 8] of F32 "
       "(128 bytes)"},
      {"overlap",
       R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
       R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
       std::string(12, '\0'), absl::StatusCode::kInvalidArgument,
       "tensors 'a' [0, 8) and 'b' [4, 12) overlap"},
      {"duplicate name",
       R"({"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
       R"("a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
       std::string(2, '\0'), absl::StatusCode::kInvalidArgument, "duplicate tensor name 'a'"},
      {"duplicate entry key",
       R"({"a":{"dtype":"U8","dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x",
       absl::StatusCode::kInvalidArgument, "duplicate key 'dtype'"},
      {"empty name", R"({"":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}})", "x",
       absl::StatusCode::kInvalidArgument, "empty tensor name"},
      {"metadata not string", R"({"__metadata__":{"k":1}})", "", absl::StatusCode::kInvalidArgument,
       "'k' is not a string"},
      {"metadata not object", R"({"__metadata__":"x"})", "", absl::StatusCode::kInvalidArgument,
       "__metadata__ is not a JSON object"},
      {"bad bool", R"({"f":{"dtype":"BOOL","shape":[2],"data_offsets":[0,2]}})",
       std::string("\x01\x02", 2), absl::StatusCode::kInvalidArgument, "not 0 or 1"},
      {"deep nesting", std::string(100000, '[') + std::string(100000, ']'), "",
       absl::StatusCode::kInvalidArgument, "nested deeper"},
      {"too many dims",
       R"({"w":{"dtype":"U8","shape":[1)" + Repeat(",1", 64) + R"(],"data_offsets":[0,1]}})", "x",
       absl::StatusCode::kInvalidArgument, "has 65 dims"},
  };
  for (const BadCase& c : cases) {
    absl::Status s = ParseStatus(RawFile(c.header, c.data));
    EXPECT_EQ(s.code(), c.code) << c.label << ": " << s;
    EXPECT_NE(Message(s).find(c.message_part), std::string::npos) << c.label << ": " << s;
  }
}

TEST(SafetensorsTest, RejectsBadHeaderLength) {
  EXPECT_EQ(ParseStatus("").code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseStatus(std::string(7, '\0')).code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(ParseStatus(RawFile("{")).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ParseStatus(RawFile("")).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(ParseSafetensors(RawFile("{}")).ok());
  // Length field says more than the buffer holds.
  std::string truncated = RawFile(kOneTensorHeader);
  truncated[0] = static_cast<char>(truncated[0] + 1);
  EXPECT_EQ(ParseStatus(truncated).code(), absl::StatusCode::kDataLoss);
  // Huge lengths are rejected without allocating.
  for (uint64_t huge : {uint64_t{100'000'001}, uint64_t{1} << 40, ~uint64_t{0}}) {
    std::string file = RawFile("{}");
    std::memcpy(&file[0], &huge, 8);
    absl::Status s = ParseStatus(file);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_NE(Message(s).find("exceeds the limit"), std::string::npos) << s;
  }
}

// Checks that an independent reader (Python: struct + json + numpy) understands our output.
TEST(SafetensorsTest, ReadableByIndependentPythonReader) {
  if (::access("/usr/bin/python3", X_OK) != 0 ||
      std::system("/usr/bin/python3 -c 'import numpy' >/dev/null 2>&1") != 0) {
    GTEST_SKIP() << "/usr/bin/python3 with numpy is not available";
  }
  std::string dir = ::testing::TempDir() + "/safetensors_py.XXXXXX";
  ASSERT_NE(::mkdtemp(dir.data()), nullptr);
  const std::string path = dir + "/t.safetensors";
  const std::string script = dir + "/read.py";
  const TensorList tensors = {
      {"f32", at::arange(6, at::kFloat).reshape({2, 3}) * 0.5 - 1},
      {"f64", at::full({}, 3.25, at::kDouble)},
      {"f16", at::tensor({1.5, -0.25}, at::kDouble).to(at::kHalf)},
      {"bf16", at::tensor({1.0, -2.0}, at::kDouble).to(at::kBFloat16)},
      {"i64", at::tensor({int64_t{-5}, int64_t{1} << 40}, at::kLong)},
      {"i32", at::tensor({-7, 7}, at::kInt)},
      {"i16", at::tensor({-300, 300}, at::kShort)},
      {"i8", at::tensor({-128, 127}, at::kChar)},
      {"u8", at::tensor({0, 255}, at::kByte)},
      {"bool", at::tensor({1, 0, 1}, at::kByte).to(at::kBool)},
      {"empty", at::zeros({0, 3}, at::kFloat)},
  };
  ASSERT_TRUE(WriteSafetensors(path, tensors, {{"format", "pt"}}).ok());
  const char kScript[] = R"PY(
import json, struct, sys
import numpy as np
raw = open(sys.argv[1], 'rb').read()
(n,) = struct.unpack('<Q', raw[:8])
header = json.loads(raw[8:8 + n].decode('utf-8'))
data = raw[8 + n:]
types = {'F64': '<f8', 'F32': '<f4', 'F16': '<f2', 'BF16': '<u2', 'I64': '<i8', 'I32': '<i4',
         'I16': '<i2', 'I8': 'i1', 'U8': 'u1', 'BOOL': '?'}
print('aligned', (8 + n) % 8 == 0)
print('metadata', json.dumps(header.pop('__metadata__'), sort_keys=True))
spans = sorted(tuple(v['data_offsets']) for v in header.values())
print('contiguous', spans[0][0] == 0 and spans[-1][1] == len(data) and
      all(a[1] == b[0] for a, b in zip(spans, spans[1:])))
for name in sorted(header):
    e = header[name]
    b, end = e['data_offsets']
    arr = np.frombuffer(data[b:end], dtype=types[e['dtype']]).reshape(e['shape'])
    if e['dtype'] == 'BF16':
        arr = (arr.astype('<u4') << 16).view('<f4')
    print(name, e['dtype'], list(arr.shape), arr.flatten().tolist())
)PY";
  ASSERT_TRUE(WriteFileAtomic(script, kScript).ok());
  FILE* pipe = ::popen(("/usr/bin/python3 " + script + " " + path + " 2>&1").c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string output;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), pipe)) > 0) output.append(buf, n);
  const int rc = ::pclose(pipe);
  EXPECT_TRUE(WIFEXITED(rc) && WEXITSTATUS(rc) == 0) << output;
  EXPECT_EQ(output,
            "aligned True\n"
            "metadata {\"format\": \"pt\"}\n"
            "contiguous True\n"
            "bf16 BF16 [2] [1.0, -2.0]\n"
            "bool BOOL [3] [True, False, True]\n"
            "empty F32 [0, 3] []\n"
            "f16 F16 [2] [1.5, -0.25]\n"
            "f32 F32 [2, 3] [-1.0, -0.5, 0.0, 0.5, 1.0, 1.5]\n"
            "f64 F64 [] [3.25]\n"
            "i16 I16 [2] [-300, 300]\n"
            "i32 I32 [2] [-7, 7]\n"
            "i64 I64 [2] [-5, 1099511627776]\n"
            "i8 I8 [2] [-128, 127]\n"
            "u8 U8 [2] [0, 255]\n");
  ::unlink(path.c_str());
  ::unlink(script.c_str());
  ::rmdir(dir.c_str());
}

}  // namespace
}  // namespace titans
