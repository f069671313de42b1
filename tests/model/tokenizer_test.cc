#include "model/tokenizer.h"

#include <dlfcn.h>
#include <link.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "model/sentencepiece_loader.h"
#include "model/utf8.h"

namespace titans {
namespace {

std::unique_ptr<Tokenizer> MakeByteTokenizer() {
  auto tok = CreateTokenizer(TokenizerConfig{}, "");
  EXPECT_TRUE(tok.ok()) << tok.status();
  return std::move(tok).value();
}

TEST(ByteTokenizerTest, RoundTripsArbitraryBytes) {
  auto tok = MakeByteTokenizer();
  EXPECT_EQ(tok->type(), "byte");
  EXPECT_EQ(tok->vocab_size(), 260);
  std::string text;
  for (int i = 0; i < 256; ++i) text += static_cast<char>(i);
  text += "\xff\xfe\xc3";  // Invalid UTF-8 is fine.
  for (bool parse_special : {false, true}) {
    auto ids = tok->Encode(text, parse_special);
    ASSERT_TRUE(ids.ok());
    ASSERT_EQ(ids->size(), text.size());
    for (size_t i = 0; i < text.size(); ++i) {
      EXPECT_EQ((*ids)[i], static_cast<unsigned char>(text[i]));
    }
    auto decoded = tok->Decode(*ids);
    ASSERT_TRUE(decoded.ok());
    EXPECT_EQ(*decoded, text);
  }
  auto empty = tok->Encode("", true);
  ASSERT_TRUE(empty.ok());
  EXPECT_TRUE(empty->empty());
}

TEST(ByteTokenizerTest, SpecialTokens) {
  auto tok = MakeByteTokenizer();
  EXPECT_EQ(tok->bos_id(), 256);
  EXPECT_EQ(tok->eos_id(), 257);
  EXPECT_EQ(tok->pad_id(), 258);
  const std::string text = "a<|bos|><|eos|>b<|pad|><|sep|><|eos|<|x|>";
  auto parsed = tok->Encode(text, /*parse_special=*/true);
  ASSERT_TRUE(parsed.ok());
  std::vector<int32_t> expected = {'a', 256, 257, 'b', 258, 259};
  for (char c : std::string("<|eos|<|x|>")) expected.push_back(c);
  EXPECT_EQ(*parsed, expected);
  auto decoded = tok->Decode(*parsed);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, text);

  auto plain = tok->Encode(text, /*parse_special=*/false);
  ASSERT_TRUE(plain.ok());
  EXPECT_EQ(plain->size(), text.size());
  for (int32_t id : *plain) EXPECT_FALSE(tok->IsSpecial(id));

  EXPECT_FALSE(tok->IsSpecial(255));
  EXPECT_TRUE(tok->IsSpecial(256));
  EXPECT_TRUE(tok->IsSpecial(259));
  EXPECT_FALSE(tok->IsSpecial(260));
  EXPECT_FALSE(tok->IsSpecial(-1));
}

TEST(ByteTokenizerTest, RejectsOutOfRangeIds) {
  auto tok = MakeByteTokenizer();
  for (int32_t bad : {-1, 260, 1 << 30}) {
    auto decoded = tok->Decode({'a', bad});
    EXPECT_EQ(decoded.status().code(), absl::StatusCode::kInvalidArgument) << bad;
  }
}

TEST(ByteTokenizerTest, TokenBytes) {
  auto tok = MakeByteTokenizer();
  EXPECT_EQ(tok->TokenBytes('A'), "A");
  EXPECT_EQ(tok->TokenBytes(0), std::string(1, '\0'));
  EXPECT_EQ(tok->TokenBytes(0xE2), "\xe2");
  EXPECT_EQ(tok->TokenBytes(256), "<|bos|>");
  EXPECT_EQ(tok->TokenBytes(257), "<|eos|>");
  EXPECT_EQ(tok->TokenBytes(258), "<|pad|>");
  EXPECT_EQ(tok->TokenBytes(259), "<|sep|>");
  EXPECT_EQ(tok->TokenBytes(260), "");
  EXPECT_EQ(tok->TokenBytes(-5), "");
}

TEST(CreateTokenizerTest, Errors) {
  TokenizerConfig config;
  config.type = "wordpiece";
  EXPECT_EQ(CreateTokenizer(config, "/tmp").status().code(), absl::StatusCode::kInvalidArgument);
  config.type = "sentencepiece";
  EXPECT_EQ(CreateTokenizer(config, "/tmp").status().code(), absl::StatusCode::kInvalidArgument);
  config.model_file = "definitely_missing_titans.model";
  auto missing = CreateTokenizer(config, "/nonexistent-titans-dir");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("definitely_missing_titans.model"), std::string::npos);
}

TEST(CompleteUtf8PrefixTest, SplitsMultiByteSequencesAtEveryPosition) {
  const std::vector<std::string> chars = {
      "a", "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80", "\xed\x9f\xbf", "\xf4\x8f\xbf\xbf"};
  for (const std::string& prefix : {std::string(), std::string("xy"), std::string("\xc3\xa9")}) {
    for (const std::string& c : chars) {
      const std::string full = prefix + c;
      EXPECT_EQ(CompleteUtf8Prefix(full), full.size());
      for (size_t cut = 1; cut < c.size(); ++cut) {
        EXPECT_EQ(CompleteUtf8Prefix(full.substr(0, prefix.size() + cut)), prefix.size())
            << "char of " << c.size() << " bytes cut at " << cut;
      }
    }
  }
  EXPECT_EQ(CompleteUtf8Prefix(""), 0u);
}

TEST(CompleteUtf8PrefixTest, InvalidBytesNeverStall) {
  EXPECT_EQ(CompleteUtf8Prefix("\x80"), 1u);               // Stray continuation.
  EXPECT_EQ(CompleteUtf8Prefix("a\x80\x80\x80\x80"), 5u);  // Many stray continuations.
  EXPECT_EQ(CompleteUtf8Prefix("a\xff"), 2u);              // Never valid.
  EXPECT_EQ(CompleteUtf8Prefix("a\xc0"), 2u);              // Overlong lead.
  EXPECT_EQ(CompleteUtf8Prefix("a\xf5"), 2u);              // Above U+10FFFF.
  EXPECT_EQ(CompleteUtf8Prefix("a\xe0\x80"), 3u);          // Overlong 3-byte form.
  EXPECT_EQ(CompleteUtf8Prefix("a\xed\xa0"), 3u);          // Surrogate.
  EXPECT_EQ(CompleteUtf8Prefix("a\xf0\x80"), 3u);          // Overlong 4-byte form.
  EXPECT_EQ(CompleteUtf8Prefix("a\xf4\x90"), 3u);          // Above U+10FFFF.
  EXPECT_EQ(CompleteUtf8Prefix("a\xc3\xa9\xa9"), 4u);      // Extra continuation byte.
  EXPECT_EQ(CompleteUtf8Prefix("\xe2\x82\xac\xe2"), 3u);   // Valid start is held back.
}

// Trains a tiny BPE model once for all SentencePiece tests.
class SentencePieceTokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    std::string pattern = (std::filesystem::temp_directory_path() / "titans_sp_XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = new std::string(pattern);
    const std::string input = *dir_ + "/corpus.txt";
    {
      const std::vector<std::string> words = {
          "the",   "model",  "learns", "to",     "remember", "a",     "long",   "context",
          "while", "memory", "is",     "small",  "and",      "fast",  "titans", "neural",
          "token", "stream", "server", "answer", "question", "every", "day",    "with"};
      std::mt19937 gen(7);
      std::ofstream out(input);
      for (int line = 0; line < 300; ++line) {
        for (int w = 0; w < 10; ++w) out << (w ? " " : "") << words[gen() % words.size()];
        out << ".\n";
      }
    }
    // Trained through the plug-in: this binary must not link SentencePiece (see
    // model/sentencepiece_shim.h).
    auto shim = LoadSentencePieceShim();
    ASSERT_TRUE(shim.ok()) << shim.status();
    const std::string args = "--input=" + input + " --model_prefix=" + *dir_ +
                             "/sp --vocab_size=100 --model_type=bpe --minloglevel=2"
                             " --user_defined_symbols=<|user|>";
    char* error = nullptr;
    const int rc = (*shim)->train(args.c_str(), &error);
    const std::string message = error != nullptr ? error : "";
    (*shim)->free(error);
    ASSERT_EQ(rc, 0) << message;
  }

  static void TearDownTestSuite() {
    std::error_code ec;
    std::filesystem::remove_all(*dir_, ec);
    delete dir_;
  }

  std::unique_ptr<Tokenizer> Load() {
    TokenizerConfig config;
    config.type = "sentencepiece";
    config.model_file = "sp.model";
    auto tok = CreateTokenizer(config, *dir_);
    EXPECT_TRUE(tok.ok()) << tok.status();
    return tok.ok() ? std::move(tok).value() : nullptr;
  }

  static std::string* dir_;
};

std::string* SentencePieceTokenizerTest::dir_ = nullptr;

TEST_F(SentencePieceTokenizerTest, RoundTrip) {
  auto tok = Load();
  ASSERT_NE(tok, nullptr);
  EXPECT_EQ(tok->type(), "sentencepiece");
  EXPECT_EQ(tok->vocab_size(), 100);
  EXPECT_EQ(tok->bos_id(), 1);
  EXPECT_EQ(tok->eos_id(), 2);
  EXPECT_EQ(tok->pad_id(), -1);  // Not defined by default.
  const std::string text = "the titans model learns to remember a long context.";
  auto ids = tok->Encode(text, /*parse_special=*/false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_LT(ids->size(), text.size());  // Merges happened.
  std::string streamed;
  for (int32_t id : *ids) {
    EXPECT_GE(id, 0);
    EXPECT_LT(id, tok->vocab_size());
    streamed += tok->TokenBytes(id);
  }
  auto decoded = tok->Decode(*ids);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, text);
  EXPECT_EQ(streamed, " " + text);  // TokenBytes keeps the dummy-prefix space.
  EXPECT_EQ(tok->Decode({0, 100}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(tok->Decode({-1}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(SentencePieceTokenizerTest, SpecialTokens) {
  auto tok = Load();
  ASSERT_NE(tok, nullptr);
  const std::string text = "<s>the model</s>";
  auto parsed = tok->Encode(text, /*parse_special=*/true);
  ASSERT_TRUE(parsed.ok());
  ASSERT_GE(parsed->size(), 3u);
  EXPECT_EQ(parsed->front(), tok->bos_id());
  EXPECT_EQ(parsed->back(), tok->eos_id());
  auto decoded = tok->Decode(*parsed);
  ASSERT_TRUE(decoded.ok());
  EXPECT_EQ(*decoded, text);
  EXPECT_TRUE(tok->IsSpecial(tok->bos_id()));
  EXPECT_TRUE(tok->IsSpecial(tok->eos_id()));
  EXPECT_EQ(tok->TokenBytes(tok->eos_id()), "</s>");

  auto plain = tok->Encode(text, /*parse_special=*/false);
  ASSERT_TRUE(plain.ok());
  for (int32_t id : *plain) EXPECT_FALSE(tok->IsSpecial(id)) << id;

  // User-defined symbols are always matched by SentencePiece and count as special.
  auto user = tok->Encode("a<|user|>b", /*parse_special=*/false);
  ASSERT_TRUE(user.ok());
  int specials = 0;
  for (int32_t id : *user) {
    if (tok->IsSpecial(id)) {
      ++specials;
      EXPECT_EQ(tok->TokenBytes(id), "<|user|>");
    }
  }
  EXPECT_EQ(specials, 1);
  EXPECT_FALSE(tok->IsSpecial(0));  // <unk>
}

// Regression test: Debian's libsentencepiece embeds its own protobuf; linked directly next to
// the system libprotobuf (pulled in by LibTorch) the binary crashed before main. Reaching this
// test at all shows the binary starts; here libprotobuf is demonstrably loaded and a SentencePiece
// model still loads and works in the same process.
TEST_F(SentencePieceTokenizerTest, SentencePieceCoexistsWithProtobuf) {
  bool protobuf_loaded = false;
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void* found) {
        if (info->dlpi_name != nullptr && std::strstr(info->dlpi_name, "libprotobuf") != nullptr) {
          *static_cast<bool*>(found) = true;
        }
        return 0;
      },
      &protobuf_loaded);
  // Informational only: a LibTorch build that links protobuf statically loads no libprotobuf.so.
  RecordProperty("libprotobuf_loaded", protobuf_loaded ? "true" : "false");
  auto tok = Load();
  ASSERT_NE(tok, nullptr);
  auto ids = tok->Encode("every day the server answers a question", /*parse_special=*/false);
  ASSERT_TRUE(ids.ok()) << ids.status();
  auto decoded = tok->Decode(*ids);
  ASSERT_TRUE(decoded.ok()) << decoded.status();
  EXPECT_EQ(*decoded, "every day the server answers a question");
  // The plug-in and SentencePiece (with its protobuf copy) stay out of the global scope.
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "titans_sp_create"), nullptr);
  EXPECT_EQ(dlsym(RTLD_DEFAULT, "_ZN13sentencepiece22SentencePieceProcessorC1Ev"), nullptr);
}

TEST_F(SentencePieceTokenizerTest, CorruptModelFileIsInvalidArgument) {
  std::ofstream(*dir_ + "/bad.model") << "not a sentencepiece model";
  TokenizerConfig config;
  config.type = "sentencepiece";
  config.model_file = "bad.model";
  auto tok = CreateTokenizer(config, *dir_);
  EXPECT_EQ(tok.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(tok.status().message().find("bad.model"), std::string::npos) << tok.status();
  config.model_file = "missing.model";
  EXPECT_EQ(CreateTokenizer(config, *dir_).status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace titans

namespace titans {
namespace {

TEST(Utf8, StrictValidation) {
  EXPECT_TRUE(IsValidUtf8("plain ascii"));
  EXPECT_TRUE(IsValidUtf8("\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80"));  // é € 😀
  EXPECT_FALSE(IsValidUtf8("\xff"));
  EXPECT_FALSE(IsValidUtf8("\xc0\x80"));          // overlong NUL
  EXPECT_FALSE(IsValidUtf8("\xe0\x80\xaf"));      // overlong '/'
  EXPECT_FALSE(IsValidUtf8("\xed\xa0\x80"));      // surrogate
  EXPECT_FALSE(IsValidUtf8("\xf4\x90\x80\x80"));  // above U+10FFFF
  EXPECT_FALSE(IsValidUtf8("\xe2\x82"));          // truncated
  EXPECT_EQ(ToValidUtf8("a\xffz\xc3\xa9"), "a\xef\xbf\xbdz\xc3\xa9");
}

}  // namespace
}  // namespace titans
