// The callback front end (server/service.cc, server/stream_reactors.h): open calls hold no
// thread, a slow reader loses nothing, a cancel reaches a long append, and a request cannot
// forge the parse error a handler reports.
#include <dirent.h>

#include <thread>
#include <vector>

#include "proto/request_traits.h"
#include "tests/server/server_fixture.h"

namespace titans::testing {
namespace {

using grpc::StatusCode;

int ThreadsOfThisProcess() {
  int n = 0;
  if (DIR* d = opendir("/proc/self/task")) {
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
  }
  return n;
}

// Hundreds of Generate calls open at once, each waiting on a long generation (one running per
// session, the others queued behind it): the process's thread count must not grow with them, as
// it did with a thread per call. Then every call is cancelled and finishes CANCELLED, and the
// sessions still take work.
TEST_F(ServerTest, OpenGenerateStreamsDoNotTakeAThreadEach) {
  options_.max_generate_tokens = 1 << 20;  // no generation ends before the cancel
  options_.max_queued_tokens = int64_t{1} << 30;
  Start();
  constexpr int kSessions = 16;
  constexpr int kStreams = 320;
  for (int s = 0; s < kSessions; ++s) Create("s" + std::to_string(s));
  const int threads_before = ThreadsOfThisProcess();
  struct Call {
    std::unique_ptr<grpc::ClientContext> ctx;
    std::unique_ptr<grpc::ClientReader<pb::GenerateResponse>> reader;
  };
  std::vector<Call> calls(kStreams);
  for (int i = 0; i < kStreams; ++i) {
    calls[i].ctx = Ctx();
    calls[i].reader =
        StartGeneration("s" + std::to_string(i % kSessions), 1 << 20, calls[i].ctx.get());
  }
  // Every call has reached the engine: each session holds its calls (the running one included;
  // the server may take calls on different threads, so not necessarily in the order sent).
  pb::GenerateResponse msg;
  for (int s = 0; s < kSessions; ++s) {
    pb::GetSessionRequest get;
    get.set_session_id("s" + std::to_string(s));
    pb::Session info;
    for (int i = 0; i < 1000; ++i) {
      ASSERT_TRUE(stub_->GetSession(Ctx().get(), get, &info).ok());
      if (info.queued_operations() >= kStreams / kSessions) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    ASSERT_EQ(info.queued_operations(), static_cast<uint32_t>(kStreams / kSessions)) << s;
  }
  const int threads_open = ThreadsOfThisProcess();
  std::printf("threads: %d before, %d with %d Generate calls open\n", threads_before, threads_open,
              kStreams);
  EXPECT_LT(threads_open - threads_before, kStreams / 4);
  for (Call& c : calls) c.ctx->TryCancel();
  for (Call& c : calls) {
    while (c.reader->Read(&msg)) {
    }
    EXPECT_EQ(c.reader->Finish().error_code(), StatusCode::CANCELLED);
  }
  for (int s = 0; s < kSessions; ++s) {
    const std::string id = "s" + std::to_string(s);
    int64_t pos = Position(id);
    ASSERT_TRUE(AppendText(id, "more").ok());
    // Stopped generations may still finish a step in between; the append itself is 4 bytes.
    EXPECT_GE(Position(id), pos + 4);
  }
}

// A reader that falls behind gets the same tokens as one that keeps up, in fewer messages. The
// slow client's channel takes 1 KiB ahead of its reads (HTTP/2 flow control), so the server's
// writes wait on it as soon as it stops reading; it reads nothing until the generation is over.
TEST_F(ServerTest, SlowReaderGetsEveryTokenInFewerMessages) {
  Start();
  grpc::ChannelArguments small_window;
  small_window.SetInt(GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES, 1024);
  small_window.SetInt(GRPC_ARG_HTTP2_BDP_PROBE, 0);
  auto slow_stub = pb::Titans::NewStub(grpc::CreateCustomChannel(
      "127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials(), small_window));
  Create("fast");
  Create("slow");
  ASSERT_TRUE(AppendText("fast", "the same prompt").ok());
  ASSERT_TRUE(AppendText("slow", "the same prompt").ok());
  auto generate = [&](const std::string& id, bool slow, std::vector<int32_t>* tokens,
                      std::string* text, int* messages) {
    pb::GenerateRequest req;
    req.set_session_id(id);
    req.set_max_tokens(1000);
    req.mutable_sampling()->set_temperature(0);
    req.set_stop_at_eos(false);
    auto ctx = Ctx();
    auto reader = (slow ? slow_stub : stub_)->Generate(ctx.get(), req);
    pb::GenerateResponse msg;
    int64_t last_position = 0;
    if (slow) {
      // Stalled until the whole generation is done: everything past the first window's worth
      // of messages has to queue behind a write. Waiting on the position, not a fixed sleep,
      // keeps this independent of how fast the machine generates.
      const auto give_up = std::chrono::steady_clock::now() + std::chrono::seconds(120);
      while (Position(id) < 15 + 1000 && std::chrono::steady_clock::now() < give_up) {
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
    }
    while (reader->Read(&msg)) {
      ++*messages;
      tokens->insert(tokens->end(), msg.token_ids().begin(), msg.token_ids().end());
      *text += msg.text();
      EXPECT_EQ(static_cast<int64_t>(msg.position()), 15 + static_cast<int64_t>(tokens->size()));
      EXPECT_GT(static_cast<int64_t>(msg.position()), last_position);
      last_position = static_cast<int64_t>(msg.position());
    }
    grpc::Status st = reader->Finish();
    EXPECT_TRUE(st.ok()) << st.error_message();
  };
  std::vector<int32_t> fast_tokens, slow_tokens;
  std::string fast_text, slow_text;
  int fast_messages = 0, slow_messages = 0;
  generate("fast", false, &fast_tokens, &fast_text, &fast_messages);
  generate("slow", true, &slow_tokens, &slow_text, &slow_messages);
  ASSERT_EQ(fast_tokens.size(), 1000u);
  EXPECT_EQ(slow_tokens, fast_tokens);
  EXPECT_EQ(slow_text, fast_text);
  EXPECT_LT(slow_messages, 500) << "events queued behind a write leave as one message";
  std::printf("messages: %d for a reader that keeps up, %d for a slow one\n", fast_messages,
              slow_messages);
}

// A passed deadline reaches an append that is still queued: DEADLINE_EXCEEDED, and the session
// is not changed by it.
TEST_F(ServerTest, DeadlineStopsAQueuedAppend) {
  options_.step_token_budget = 16;
  Start();
  Create("s");
  // A long generation holds the session, so the append waits behind it.
  auto gen_ctx = Ctx();
  auto reader = StartGeneration("s", 4096, gen_ctx.get());
  pb::GenerateResponse msg;
  ASSERT_TRUE(reader->Read(&msg));
  pb::AppendRequest req;
  req.set_session_id("s");
  req.set_text("appended late");
  pb::AppendResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  EXPECT_EQ(stub_->Append(&ctx, req, &resp).error_code(), StatusCode::DEADLINE_EXCEEDED);
  gen_ctx->TryCancel();
  while (reader->Read(&msg)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), StatusCode::CANCELLED);
  // The cancelled append never ran: what follows lands right after the generated tokens.
  pb::GetSessionRequest get;
  get.set_session_id("s");
  pb::Session before, after;
  for (int i = 0; i < 100; ++i) {  // the engine answers the cancels between steps
    ASSERT_TRUE(stub_->GetSession(Ctx().get(), get, &before).ok());
    if (before.queued_operations() == 0) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  ASSERT_EQ(before.queued_operations(), 0u);
  ASSERT_TRUE(AppendText("s", "x").ok());
  ASSERT_TRUE(stub_->GetSession(Ctx().get(), get, &after).ok());
  EXPECT_EQ(after.position(), before.position() + 1);
}

// The field that carries a parse error inside an emptied request cannot be sent by a client: a
// request that holds it is served as usual.
TEST_F(ServerTest, AForgedParseErrorFieldIsIgnored) {
  Start();
  pb::CreateSessionRequest create;
  create.set_session_id("s");
  create.GetReflection()->MutableUnknownFields(&create)->AddLengthDelimited(
      536870911, std::string(1, static_cast<char>(StatusCode::PERMISSION_DENIED)) + "forged");
  pb::Session session;
  grpc::Status st = stub_->CreateSession(Ctx().get(), create, &session);
  ASSERT_TRUE(st.ok()) << st.error_code() << ": " << st.error_message();
  pb::StreamRequest command;
  command.set_request_id(7);
  command.mutable_append()->set_session_id("s");
  command.mutable_append()->set_text("abc");
  command.GetReflection()->MutableUnknownFields(&command)->AddLengthDelimited(
      536870911, std::string(1, static_cast<char>(StatusCode::INTERNAL)) + "forged");
  auto ctx = Ctx();
  auto stream = stub_->Stream(ctx.get());
  ASSERT_TRUE(stream->Write(command));
  pb::StreamResponse answer;
  ASSERT_TRUE(stream->Read(&answer));
  EXPECT_EQ(answer.request_id(), 7u);
  EXPECT_EQ(answer.append().position(), 3u);
  stream->WritesDone();
  st = stream->Finish();
  EXPECT_TRUE(st.ok()) << st.error_message();
}

// A request that does not parse is answered with its reason, by unary and streaming calls alike,
// and RequestError reads back what ParseRequest stored.
TEST(RequestTraits, AnUnparsableRequestCarriesItsErrorAndAParsedOneNone) {
  pb::AppendRequest good;
  good.set_session_id("s");
  good.set_text("hello");
  grpc::ByteBuffer buffer;
  bool own = false;
  ASSERT_TRUE(grpc::SerializationTraits<pb::AppendRequest>::Serialize(good, &buffer, &own).ok());
  pb::AppendRequest parsed;
  ASSERT_TRUE(titans::proto::ParseRequest(&buffer, &parsed).ok());
  EXPECT_TRUE(titans::proto::RequestError(parsed).ok());
  EXPECT_EQ(parsed.text(), "hello");

  // Field 1 (session_id, a string) = 0xff 0xfe, then field 2 (text, bytes) = "x".
  const std::string bad_utf8("\x0a\x02\xff\xfe\x12\x01x", 7);
  grpc::Slice slice(bad_utf8);
  grpc::ByteBuffer bad(&slice, 1);
  pb::AppendRequest failed;
  ASSERT_TRUE(titans::proto::ParseRequest(&bad, &failed).ok());
  grpc::Status error = titans::proto::RequestError(failed);
  EXPECT_EQ(error.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(error.error_message(), "session_id is not valid UTF-8");
  EXPECT_EQ(failed.text(), "") << "the message is emptied";
}

}  // namespace
}  // namespace titans::testing
