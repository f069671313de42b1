// The session service end to end through the generated C++ stubs: the happy paths and every
// kind of bad input the API must answer with a precise status, without corrupting sessions.
#include <grpcpp/generic/generic_stub.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "model/version.h"
#include "server/log.h"
#include "tests/server/server_fixture.h"

namespace titans::testing {
namespace {

using grpc::StatusCode;

TEST_F(ServerTest, AppendGenerateAndSessionInfo) {
  Start();
  pb::Session s = Create("", "");
  EXPECT_EQ(s.session_id().size(), 34u);  // "s-" + 128 random bits in hex
  pb::AppendResponse r;
  ASSERT_TRUE(AppendText(s.session_id(), "hello world", &r).ok());
  EXPECT_EQ(r.tokens_consumed(), 11u);
  EXPECT_EQ(r.position(), 11u);
  grpc::Status st;
  pb::GenerateResponse last;
  GenerateText(s.session_id(), 7, &st, &last);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(last.finish_reason(), pb::FINISH_REASON_LENGTH);
  EXPECT_EQ(last.timings().generated_tokens(), 7u);
  EXPECT_EQ(Position(s.session_id()), 18);
}

// The same context appended in one call or in many gives the same session: same position and the
// same continuation (greedy).
TEST_F(ServerTest, SplitAppendsMatchOneAppend) {
  Start();
  const std::string text = "The quick brown fox jumps over the lazy dog, again and again. ";
  std::string whole;
  for (int i = 0; i < 8; ++i) whole += text;
  pb::Session a = Create("one"), b = Create("many");
  ASSERT_TRUE(AppendText("one", whole).ok());
  for (int i = 0; i < 8; ++i) ASSERT_TRUE(AppendText("many", text).ok());
  EXPECT_EQ(Position("one"), Position("many"));
  grpc::Status s1, s2;
  EXPECT_EQ(GenerateText("one", 20, &s1), GenerateText("many", 20, &s2));
  EXPECT_TRUE(s1.ok() && s2.ok());
}

TEST_F(ServerTest, UnknownClosedAndDuplicateSessions) {
  Start();
  EXPECT_EQ(AppendText("nope", "x").error_code(), StatusCode::NOT_FOUND);
  Create("dup");
  pb::CreateSessionRequest req;
  req.set_session_id("dup");
  pb::Session out;
  EXPECT_EQ(stub_->CreateSession(Ctx().get(), req, &out).error_code(), StatusCode::ALREADY_EXISTS);
  req.set_session_id("bad id!");
  EXPECT_EQ(stub_->CreateSession(Ctx().get(), req, &out).error_code(),
            StatusCode::INVALID_ARGUMENT);
  req.set_session_id("..");  // ids become file names: no leading dot
  EXPECT_EQ(stub_->CreateSession(Ctx().get(), req, &out).error_code(),
            StatusCode::INVALID_ARGUMENT);
  pb::CloseSessionRequest close;
  close.set_session_id("dup");
  pb::CloseSessionResponse closed;
  ASSERT_TRUE(stub_->CloseSession(Ctx().get(), close, &closed).ok());
  EXPECT_EQ(AppendText("dup", "x").error_code(), StatusCode::NOT_FOUND);
  EXPECT_EQ(stub_->CloseSession(Ctx().get(), close, &closed).error_code(), StatusCode::NOT_FOUND);
}

// Client-supplied values come back bounded: a 10 KiB id is a precise NOT_FOUND whose message
// shows 64 bytes of it (not RESOURCE_EXHAUSTED from an oversized trailer), bytes that are not
// printable ASCII are escaped, and a 1 MiB model name or id gets a short message.
TEST_F(ServerTest, EchoedValuesAreBounded) {
  Start();
  pb::GetSessionRequest get;
  get.set_session_id(std::string(10240, 'a'));
  pb::Session out;
  grpc::Status st = stub_->GetSession(Ctx().get(), get, &out);
  EXPECT_EQ(st.error_code(), StatusCode::NOT_FOUND) << st.error_message();
  EXPECT_LT(st.error_message().size(), 200u) << st.error_message();
  EXPECT_NE(st.error_message().find(std::string(64, 'a') + "...(10240 bytes)"), std::string::npos)
      << st.error_message();
  get.set_session_id("x'\n\x01y");
  st = stub_->GetSession(Ctx().get(), get, &out);
  EXPECT_EQ(st.error_code(), StatusCode::NOT_FOUND);
  EXPECT_NE(st.error_message().find("x\\x27\\x0a\\x01y"), std::string::npos) << st.error_message();
  pb::CreateSessionRequest create;
  create.set_model(std::string(1 << 20, 'm'));
  st = stub_->CreateSession(Ctx().get(), create, &out);
  EXPECT_EQ(st.error_code(), StatusCode::NOT_FOUND);  // an unknown model
  EXPECT_LT(st.error_message().size(), 300u);
  create.clear_model();
  create.set_session_id(std::string(1 << 20, 'i'));
  st = stub_->CreateSession(Ctx().get(), create, &out);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_LT(st.error_message().size(), 300u);
}

// Raw request bytes, as a hostile client sends them: invalid UTF-8 in proto `string` fields is
// INVALID_ARGUMENT naming the field (not INTERNAL with no message), bytes that are no message are
// INVALID_ARGUMENT, and nothing is created.
TEST_F(ServerTest, InvalidUtf8InStringFieldsIsInvalidArgumentNamingTheField) {
  Start();
  grpc::GenericStub generic(channel_);
  auto call = [&](const std::string& method, const std::string& bytes) {
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1), response;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
    grpc::CompletionQueue cq;
    auto rpc = generic.PrepareUnaryCall(&ctx, "/titans.v1.Titans/" + method, request, &cq);
    rpc->StartCall();
    grpc::Status st;
    rpc->Finish(&response, &st, reinterpret_cast<void*>(1));
    void* tag;
    bool ok;
    EXPECT_TRUE(cq.Next(&tag, &ok));
    return st;
  };
  // session_id = "ab\xff\xfe": the reproduction.
  grpc::Status st = call("CreateSession", std::string("\x0a\x04"
                                                      "ab\xff\xfe",
                                                      6));
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "session_id is not valid UTF-8");
  // labels = {"k\xc3": "v"}: a map entry (field 5) whose key (field 1) is cut mid-character.
  st = call("CreateSession", std::string("\x2a\x07\x0a\x02k\xc3\x12\x01v", 9));
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "labels.key is not valid UTF-8");
  st = call("GetSession", std::string("\x0a\x02\xed\xa0", 4));  // half a surrogate
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "session_id is not valid UTF-8");
  // ListSessions: page_token (field 2) and a label_filter value (field 3, entry field 2).
  st = call("ListSessions", std::string("\x12\x01\x80", 3));
  EXPECT_EQ(st.error_message(), "page_token is not valid UTF-8");
  st = call("ListSessions", std::string("\x1a\x06\x0a\x01k\x12\x01\xff", 8));
  EXPECT_EQ(st.error_message(), "label_filter.value is not valid UTF-8");
  // Not a message at all: a length that runs past the end.
  st = call("GetSession", std::string("\x0a\x7f"
                                      "abc",
                                      5));
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("not a valid titans.v1.GetSessionRequest"), std::string::npos);
  // Valid requests still parse, and none of the above created anything.
  pb::ListSessionsRequest list;
  pb::ListSessionsResponse listed;
  ASSERT_TRUE(stub_->ListSessions(Ctx().get(), list, &listed).ok());
  EXPECT_EQ(listed.sessions_size(), 0);
}

// A stream whose second message does not parse fails with that message's error, and the part
// before it is not appended (an unparsable message is not the end of the stream).
TEST_F(ServerTest, AppendStreamWithAnUnparsableMessageFailsWholly) {
  Start();
  Create("s");
  grpc::GenericStub generic(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
  grpc::CompletionQueue cq;
  auto stream = generic.PrepareCall(&ctx, "/titans.v1.Titans/AppendStream", &cq);
  void* tag;
  bool ok;
  auto wait = [&] { return cq.Next(&tag, &ok) && ok; };
  stream->StartCall(reinterpret_cast<void*>(1));
  ASSERT_TRUE(wait());
  pb::AppendRequest good;
  good.set_session_id("s");
  good.set_text("hello");
  for (const std::string& bytes : {good.SerializeAsString(), std::string("\x0a\x02\xff\xff", 4)}) {
    grpc::Slice slice(bytes);
    grpc::ByteBuffer buffer(&slice, 1);
    stream->Write(buffer, reinterpret_cast<void*>(2));
    wait();  // the second write may already fail: the server has finished the call
  }
  stream->WritesDone(reinterpret_cast<void*>(3));
  wait();
  grpc::Status st;
  stream->Finish(&st, reinterpret_cast<void*>(4));
  cq.Next(&tag, &ok);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(st.error_message(), "session_id is not valid UTF-8");
  EXPECT_EQ(Position("s"), 0);
}

TEST_F(ServerTest, ExpiredSessionIsNotFound) {
  Start();
  pb::CreateSessionRequest req;
  req.set_session_id("short");
  req.set_idle_ttl_seconds(1);
  pb::Session out;
  ASSERT_TRUE(stub_->CreateSession(Ctx().get(), req, &out).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(2600));
  EXPECT_EQ(AppendText("short", "x").error_code(), StatusCode::NOT_FOUND);
  req.set_idle_ttl_seconds(uint64_t{1} << 40);  // absurd TTL
  req.set_session_id("long");
  EXPECT_EQ(stub_->CreateSession(Ctx().get(), req, &out).error_code(),
            StatusCode::INVALID_ARGUMENT);
}

TEST_F(ServerTest, BadInputsAreInvalidArgumentAndLeaveTheSessionIntact) {
  options_.max_tokens_per_request = 1000;
  Start();
  Create("s");
  ASSERT_TRUE(AppendText("s", "context").ok());
  const int64_t before = Position("s");
  EXPECT_EQ(AppendText("s", "").error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(AppendText("s", std::string(1001, 'a')).error_code(), StatusCode::INVALID_ARGUMENT);
  pb::AppendRequest req;
  req.set_session_id("s");
  pb::AppendResponse resp;
  EXPECT_EQ(stub_->Append(Ctx().get(), req, &resp).error_code(), StatusCode::INVALID_ARGUMENT);
  req.mutable_tokens()->add_ids(5);
  req.mutable_tokens()->add_ids(260);  // vocabulary is [0, 260)
  grpc::Status st = stub_->Append(Ctx().get(), req, &resp);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_NE(st.error_message().find("260"), std::string::npos);
  req.mutable_tokens()->set_ids(1, -3);
  EXPECT_EQ(stub_->Append(Ctx().get(), req, &resp).error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Position("s"), before);
}

TEST_F(ServerTest, InvalidUtf8TextIsRejected) {
  Start();
  Create("s");
  grpc::Status st = AppendText("s", std::string("ok \xff\xfe bad"));
  EXPECT_NE(st.error_code(), StatusCode::OK);
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_EQ(Position("s"), 0);
  EXPECT_TRUE(AppendText("s", "still serving").ok());
}

TEST_F(ServerTest, AbsurdSamplingParametersAreRejected) {
  Start();
  Create("s");
  auto generate = [&](const std::function<void(pb::GenerateRequest*)>& edit) {
    pb::GenerateRequest req;
    req.set_session_id("s");
    req.set_max_tokens(3);
    edit(&req);
    auto ctx = Ctx();
    auto reader = stub_->Generate(ctx.get(), req);
    pb::GenerateResponse msg;
    while (reader->Read(&msg)) {
    }
    return reader->Finish();
  };
  EXPECT_EQ(generate([](auto* r) { r->mutable_sampling()->set_temperature(-1); }).error_code(),
            StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(generate([](auto* r) { r->mutable_sampling()->set_top_p(2); }).error_code(),
            StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(generate([](auto* r) { r->mutable_sampling()->set_top_k(-5); }).error_code(),
            StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(generate([](auto* r) { r->mutable_sampling()->set_temperature(NAN); }).error_code(),
            StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(generate([](auto* r) { r->set_max_tokens(1000000); }).error_code(),
            StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(generate([](auto* r) { r->add_stop(""); }).error_code(), StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Position("s"), 0);
  EXPECT_TRUE(generate([](auto*) {}).ok());
}

TEST_F(ServerTest, UnknownModel) {
  Start();
  pb::CreateSessionRequest req;
  req.set_model("gpt-17");
  pb::Session out;
  EXPECT_EQ(stub_->CreateSession(Ctx().get(), req, &out).error_code(), StatusCode::NOT_FOUND);
  pb::GetModelRequest get;
  get.set_model("gpt-17");
  pb::ModelInfo info;
  EXPECT_EQ(stub_->GetModel(Ctx().get(), get, &info).error_code(), StatusCode::NOT_FOUND);
  get.set_model("");
  ASSERT_TRUE(stub_->GetModel(Ctx().get(), get, &info).ok());
  EXPECT_EQ(info.variant(), "mag");
  EXPECT_EQ(info.initialization(), "random");
  EXPECT_EQ(info.server_version(), ProjectVersion());  // VERSION, compiled in
  pb::ListModelsResponse models;
  ASSERT_TRUE(stub_->ListModels(Ctx().get(), pb::ListModelsRequest(), &models).ok());
  ASSERT_EQ(models.models_size(), 1);
  EXPECT_EQ(models.models(0).server_version(), ProjectVersion());
}

// Operations on one session from many threads run one at a time, in arrival order: nothing is
// lost or interleaved, and the final position is the sum.
TEST_F(ServerTest, ConcurrentOperationsOnOneSession) {
  options_.max_ops_per_session = 64;
  Start();
  Create("s");
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      if (AppendText("s", std::string(50 + i, 'a' + i)).ok()) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), 8);
  EXPECT_EQ(Position("s"), 8 * 50 + 28);
}

// Continuous batching: concurrent generations share engine steps (one batched forward pass per
// step), so the number of steps is far below the number of generated tokens.
TEST_F(ServerTest, ConcurrentGenerationsShareSteps) {
  Start();
  const int sessions = 8, tokens = 100;
  for (int i = 0; i < sessions; ++i) {
    Create("g" + std::to_string(i));
    ASSERT_TRUE(AppendText("g" + std::to_string(i), "prompt " + std::to_string(i)).ok());
  }
  const int64_t steps_before = engine_->stats().steps;
  std::vector<std::thread> threads;
  std::atomic<int> ok{0};
  for (int i = 0; i < sessions; ++i) {
    threads.emplace_back([&, i] {
      grpc::Status st;
      GenerateText("g" + std::to_string(i), tokens, &st);
      if (st.ok()) ++ok;
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(ok.load(), sessions);
  const int64_t steps = engine_->stats().steps - steps_before;
  RecordProperty("steps", static_cast<int>(steps));
  EXPECT_LE(steps, sessions * tokens / 2)
      << steps << " steps for " << sessions * tokens << " tokens";
  for (int i = 0; i < sessions; ++i) EXPECT_EQ(Position("g" + std::to_string(i)), 8 + tokens);
}

TEST_F(ServerTest, PerSessionQueueLimitIsResourceExhausted) {
  options_.max_ops_per_session = 1;
  options_.step_token_budget = 8;
  Start();
  Create("s");
  // A long append occupies the queue while a second one arrives.
  std::thread slow([&] { EXPECT_TRUE(AppendText("s", std::string(20000, 'x')).ok()); });
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(AppendText("s", "y").error_code(), StatusCode::RESOURCE_EXHAUSTED);
  slow.join();
  EXPECT_EQ(Position("s"), 20000);
}

TEST_F(ServerTest, SessionAndQueueCapacity) {
  options_.max_sessions = 2;
  options_.max_queued_tokens = 100;
  Start();
  Create("a");
  Create("b");
  pb::CreateSessionRequest req;
  pb::Session out;
  EXPECT_EQ(stub_->CreateSession(Ctx().get(), req, &out).error_code(),
            StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(AppendText("a", std::string(101, 'z')).error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_TRUE(AppendText("a", std::string(100, 'z')).ok());
}

// The queue's token budget is a running total: operations that finish, fail, are cancelled or
// are dropped with their closed session all give their tokens back.
TEST_F(ServerTest, QueueBudgetIsWholeAgainAfterEveryWayAnOperationEnds) {
  options_.max_queued_tokens = 2000;
  options_.step_token_budget = 16;
  Start();
  Create("done");
  ASSERT_TRUE(AppendText("done", std::string(500, 'a')).ok());
  Create("cancelled");
  {
    pb::AppendRequest req;
    req.set_session_id("cancelled");
    req.set_text(std::string(1500, 'c'));
    pb::AppendResponse resp;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(50));
    (void)stub_->Append(&ctx, req, &resp);  // deadline or done, either way it ends
  }
  Create("closed");
  std::thread queued([&] { (void)AppendText("closed", std::string(1000, 'q')); });
  std::thread more([&] { (void)AppendText("closed", std::string(400, 'r')); });
  pb::CloseSessionRequest close;
  close.set_session_id("closed");
  pb::CloseSessionResponse closed;
  (void)stub_->CloseSession(Ctx().get(), close, &closed);
  queued.join();
  more.join();
  // Whatever raced, nothing is left queued once the engine has drained.
  engine::Engine::Stats st = engine_->stats();
  for (int i = 0; i < 500 && (st.queued_tokens != 0 || st.queued_operations != 0); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    st = engine_->stats();
  }
  EXPECT_EQ(st.queued_tokens, 0);
  EXPECT_EQ(st.queued_operations, 0);
  EXPECT_TRUE(AppendText("done", std::string(2000, 'b')).ok());
  EXPECT_EQ(AppendText("done", std::string(2001, 'b')).error_code(),
            StatusCode::RESOURCE_EXHAUSTED);
}

// A client that gives up on an append (deadline) gets its status; the session is unchanged.
TEST_F(ServerTest, CancelledAppendLeavesSessionUnchanged) {
  options_.step_token_budget = 16;
  Start();
  Create("s");
  ASSERT_TRUE(AppendText("s", "before").ok());
  pb::AppendRequest req;
  req.set_session_id("s");
  req.set_text(std::string(100000, 'q'));
  pb::AppendResponse resp;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(200));
  grpc::Status st = stub_->Append(&ctx, req, &resp);
  EXPECT_EQ(st.error_code(), StatusCode::DEADLINE_EXCEEDED);
  // The engine notices between steps and restores the session.
  int64_t pos = -1;
  for (int i = 0; i < 100 && pos != 6; ++i) {
    pos = Position("s");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(pos, 6);
  EXPECT_TRUE(AppendText("s", "after").ok());
  EXPECT_EQ(Position("s"), 11);
}

// A client that disconnects mid-stream: generation stops, the server keeps serving, and the
// session keeps the tokens generated so far.
TEST_F(ServerTest, ClientDisconnectMidGenerate) {
  Start();
  Create("s");
  ASSERT_TRUE(AppendText("s", "prompt").ok());
  auto ctx = Ctx();
  auto reader = StartGeneration("s", 4000, ctx.get());
  pb::GenerateResponse msg;
  int received = 0;
  while (received < 3 && reader->Read(&msg)) ++received;
  ctx->TryCancel();
  while (reader->Read(&msg)) {
  }
  EXPECT_EQ(reader->Finish().error_code(), StatusCode::CANCELLED);
  int64_t pos = 0, prev = -1;
  for (int i = 0; i < 100 && pos != prev; ++i) {  // wait until the engine has stopped
    prev = pos;
    std::this_thread::sleep_for(std::chrono::milliseconds(30));
    pos = Position("s");
  }
  EXPECT_GE(pos, 6 + 3);
  EXPECT_LT(pos, 6 + 4000);
  EXPECT_TRUE(AppendText("s", "more").ok());
  EXPECT_EQ(Position("s"), pos + 4);
}

TEST_F(ServerTest, ExportImportForkAndMalformedSnapshots) {
  Start();
  Create("src");
  ASSERT_TRUE(AppendText("src", "a shared past").ok());
  pb::ExportSessionRequest ex;
  ex.set_session_id("src");
  pb::ExportSessionResponse snap;
  ASSERT_TRUE(stub_->ExportSession(Ctx().get(), ex, &snap).ok());
  EXPECT_EQ(snap.position(), 13u);

  pb::ImportSessionRequest im;
  im.set_snapshot(snap.snapshot());
  im.set_session_id("copy");
  pb::Session copy;
  ASSERT_TRUE(stub_->ImportSession(Ctx().get(), im, &copy).ok());
  EXPECT_EQ(copy.position(), 13u);
  pb::ForkSessionRequest fork;
  fork.set_session_id("src");
  fork.set_new_session_id("fork");
  pb::Session forked;
  ASSERT_TRUE(stub_->ForkSession(Ctx().get(), fork, &forked).ok());
  // The fork diverges without touching its source.
  ASSERT_TRUE(AppendText("fork", " and a different future").ok());
  EXPECT_EQ(Position("src"), 13);
  grpc::Status s1, s2;
  EXPECT_EQ(GenerateText("src", 12, &s1), GenerateText("copy", 12, &s2));

  std::string bad = snap.snapshot();
  bad[bad.size() / 2] ^= 0x40;
  im.set_snapshot(bad);
  im.set_session_id("bad");
  EXPECT_EQ(stub_->ImportSession(Ctx().get(), im, &copy).error_code(), StatusCode::DATA_LOSS);
  im.set_snapshot("garbage");
  EXPECT_EQ(stub_->ImportSession(Ctx().get(), im, &copy).error_code(), StatusCode::DATA_LOSS);
  im.set_snapshot(snap.snapshot().substr(0, 100));
  EXPECT_EQ(stub_->ImportSession(Ctx().get(), im, &copy).error_code(), StatusCode::DATA_LOSS);
}

TEST_F(ServerTest, SnapshotFilesInTheSnapshotDirectory) {
  service_options_.snapshot_dir = root_ + "/snapshots";
  std::filesystem::create_directories(service_options_.snapshot_dir);
  Start();
  Create("src");
  ASSERT_TRUE(AppendText("src", "to disk").ok());
  pb::ExportSessionRequest ex;
  ex.set_session_id("src");
  ex.set_file_name("src-7.snapshot");
  pb::ExportSessionResponse out;
  ASSERT_TRUE(stub_->ExportSession(Ctx().get(), ex, &out).ok());
  EXPECT_TRUE(out.snapshot().empty());
  EXPECT_TRUE(std::filesystem::exists(service_options_.snapshot_dir + "/src-7.snapshot"));
  pb::ImportSessionRequest im;
  im.set_file_name("src-7.snapshot");
  im.set_session_id("back");
  pb::Session back;
  ASSERT_TRUE(stub_->ImportSession(Ctx().get(), im, &back).ok());
  EXPECT_EQ(back.position(), 7u);
  im.set_file_name("../../etc/passwd");
  EXPECT_EQ(stub_->ImportSession(Ctx().get(), im, &back).error_code(),
            StatusCode::INVALID_ARGUMENT);
  im.set_file_name("missing.snapshot");
  EXPECT_EQ(stub_->ImportSession(Ctx().get(), im, &back).error_code(), StatusCode::NOT_FOUND);
}

TEST_F(ServerTest, SnapshotFromAnotherModelIsFailedPrecondition) {
  Start();
  auto other = MakeModel(TinyConfig(Variant::kMAG), 8);  // same shapes, other weights
  SessionState state = other->NewState();
  auto blob = SerializeSessionState(other->config(), state, other->fingerprint());
  ASSERT_TRUE(blob.ok());
  pb::ImportSessionRequest im;
  im.set_snapshot(*blob);
  pb::Session out;
  EXPECT_EQ(stub_->ImportSession(Ctx().get(), im, &out).error_code(),
            StatusCode::FAILED_PRECONDITION);
}

TEST_F(ServerTest, BearerTokensAndOwnership) {
  auth_env_ = "alice-token=alice,bob-token-x=bob";
  Start();
  pb::CreateSessionRequest req;
  pb::Session out;
  EXPECT_EQ(stub_->CreateSession(Ctx().get(), req, &out).error_code(), StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(stub_->CreateSession(Ctx("wrong-token").get(), req, &out).error_code(),
            StatusCode::UNAUTHENTICATED);
  pb::Session mine = Create("alices", "alice-token");
  pb::GetSessionRequest get;
  get.set_session_id("alices");
  EXPECT_TRUE(stub_->GetSession(Ctx("alice-token").get(), get, &out).ok());
  EXPECT_EQ(stub_->GetSession(Ctx("bob-token-x").get(), get, &out).error_code(),
            StatusCode::NOT_FOUND);
  grpc::Status st;
  GenerateText("alices", 2, &st, nullptr, "bob-token-x");
  EXPECT_EQ(st.error_code(), StatusCode::NOT_FOUND);
  pb::ListSessionsRequest list;
  pb::ListSessionsResponse sessions;
  ASSERT_TRUE(stub_->ListSessions(Ctx("bob-token-x").get(), list, &sessions).ok());
  EXPECT_EQ(sessions.sessions_size(), 0);
}

// Session ids are scoped per principal: the same id for two principals is two sessions (create,
// fork and import never reveal another's id with ALREADY_EXISTS), each with its own state, on
// disk too (a restart keeps both apart), and snapshot files are scoped the same way.
TEST_F(ServerTest, SessionIdsAreScopedPerPrincipal) {
  auth_env_ = "alice-token=alice,bob-token-x=bob";
  options_.state_dir = root_ + "/state";
  service_options_.snapshot_dir = root_ + "/snapshots";
  std::filesystem::create_directories(service_options_.snapshot_dir);
  Start();
  const std::string alice = "alice-token", bob = "bob-token-x";
  EXPECT_EQ(Create("x", alice).session_id(), "x");
  EXPECT_EQ(Create("x", bob).session_id(), "x");  // not ALREADY_EXISTS
  pb::CreateSessionRequest again;
  again.set_session_id("x");
  pb::Session out;
  EXPECT_EQ(stub_->CreateSession(Ctx(alice).get(), again, &out).error_code(),
            StatusCode::ALREADY_EXISTS);  // within one principal ids stay unique
  ASSERT_TRUE(AppendText("x", "alice's text", nullptr, alice).ok());
  ASSERT_TRUE(AppendText("x", "bob", nullptr, bob).ok());
  EXPECT_EQ(Position("x", alice), 12);
  EXPECT_EQ(Position("x", bob), 3);
  // Fork and import into an id the other principal already has.
  Create("y", bob);
  pb::ForkSessionRequest fork;
  fork.set_session_id("x");
  fork.set_new_session_id("y");
  ASSERT_TRUE(stub_->ForkSession(Ctx(alice).get(), fork, &out).ok());
  EXPECT_EQ(out.session_id(), "y");
  EXPECT_EQ(Position("y", alice), 12);
  EXPECT_EQ(Position("y", bob), 0);
  pb::ExportSessionRequest to_file;
  to_file.set_session_id("x");
  to_file.set_file_name("snap");
  pb::ExportSessionResponse exported;
  ASSERT_TRUE(stub_->ExportSession(Ctx(alice).get(), to_file, &exported).ok());
  ASSERT_TRUE(stub_->ExportSession(Ctx(bob).get(), to_file, &exported).ok());  // its own file
  pb::ImportSessionRequest import;
  import.set_file_name("snap");
  import.set_session_id("z");
  ASSERT_TRUE(stub_->ImportSession(Ctx(alice).get(), import, &out).ok());
  ASSERT_TRUE(stub_->ImportSession(Ctx(bob).get(), import, &out).ok());
  EXPECT_EQ(Position("z", alice), 12);  // each read back its own snapshot
  EXPECT_EQ(Position("z", bob), 3);
  // Lists show each principal its own sessions by the ids it chose.
  pb::ListSessionsRequest list;
  pb::ListSessionsResponse listed;
  ASSERT_TRUE(stub_->ListSessions(Ctx(bob).get(), list, &listed).ok());
  std::vector<std::string> ids;
  for (const auto& session : listed.sessions()) ids.push_back(session.session_id());
  EXPECT_EQ(ids, (std::vector<std::string>{"x", "y", "z"}));
  // Closing one leaves the other's.
  pb::CloseSessionRequest close;
  close.set_session_id("y");
  pb::CloseSessionResponse closed;
  ASSERT_TRUE(stub_->CloseSession(Ctx(bob).get(), close, &closed).ok());
  EXPECT_EQ(Position("y", alice), 12);
  // A restart recovers both principals' sessions apart.
  engine_->Shutdown(1000);
  server_->Shutdown(std::chrono::system_clock::now());
  server_.reset();
  engine_.reset();
  Start();
  EXPECT_EQ(Position("x", alice), 12);
  EXPECT_EQ(Position("x", bob), 3);
  EXPECT_EQ(Position("y", alice), 12);
  pb::GetSessionRequest get;
  get.set_session_id("y");
  EXPECT_EQ(stub_->GetSession(Ctx(bob).get(), get, &out).error_code(), StatusCode::NOT_FOUND);
}

// Ids are scoped per principal, so the RPC log line names the principal with the session id.
TEST_F(ServerTest, RpcLogLinesNameThePrincipal) {
  auth_env_ = "alice-token=alice";
  with_rpc_observer_ = true;
  Start();
  server::ConfigureLogging(server::LogLevel::kDebug, /*json=*/true);
  ::testing::internal::CaptureStderr();
  Create("x", "alice-token");
  const std::string log = ::testing::internal::GetCapturedStderr();
  server::ConfigureLogging(server::LogLevel::kInfo, /*json=*/false);
  EXPECT_NE(log.find("\"principal\":\"alice\",\"session_id\":\"x\""), std::string::npos) << log;
}

// A session stored before ids were scoped (file and record named by the bare id) still belongs
// to its principal after an upgrade, and only to it.
TEST_F(ServerTest, SessionsStoredBeforeIdsWereScopedAreStillFound) {
  auth_env_ = "alice-token=alice,bob-token-x=bob";
  options_.state_dir = root_ + "/state";
  Start();
  Create("old", "alice-token");
  ASSERT_TRUE(AppendText("old", "kept", nullptr, "alice-token").ok());
  engine_->Shutdown(1000);
  server_->Shutdown(std::chrono::system_clock::now());
  server_.reset();
  engine_.reset();
  // Rewrite the stored session the way the previous version named it.
  const std::string dir = options_.state_dir + "/sessions";
  std::string json;
  {
    std::ifstream in(dir + "/alice+old.json");
    ASSERT_TRUE(in.good());
    json.assign(std::istreambuf_iterator<char>(in), {});
  }
  const std::string scoped = "\"alice+old\"";
  const size_t at = json.find(scoped);
  ASSERT_NE(at, std::string::npos) << json;
  json.replace(at, scoped.size(), "\"old\"");
  std::filesystem::remove(dir + "/alice+old.json");
  std::ofstream(dir + "/old.json") << json;
  std::filesystem::rename(dir + "/alice+old.state", dir + "/old.state");
  Start();
  EXPECT_EQ(Position("old", "alice-token"), 4);
  ASSERT_TRUE(AppendText("old", "!", nullptr, "alice-token").ok());
  EXPECT_EQ(Position("old", "alice-token"), 5);
  pb::GetSessionRequest get;
  get.set_session_id("old");
  pb::Session out;
  EXPECT_EQ(stub_->GetSession(Ctx("bob-token-x").get(), get, &out).error_code(),
            StatusCode::NOT_FOUND);
  pb::CreateSessionRequest same;
  same.set_session_id("old");
  EXPECT_EQ(stub_->CreateSession(Ctx("alice-token").get(), same, &out).error_code(),
            StatusCode::ALREADY_EXISTS);
}

TEST_F(ServerTest, ListSessionsPagesAndFilters) {
  Start();
  for (int i = 0; i < 7; ++i) {
    pb::CreateSessionRequest req;
    req.set_session_id("s" + std::to_string(i));
    (*req.mutable_labels())["team"] = i % 2 ? "odd" : "even";
    pb::Session out;
    ASSERT_TRUE(stub_->CreateSession(Ctx().get(), req, &out).ok());
  }
  pb::ListSessionsRequest req;
  req.set_page_size(3);
  std::vector<std::string> seen;
  while (true) {
    pb::ListSessionsResponse resp;
    ASSERT_TRUE(stub_->ListSessions(Ctx().get(), req, &resp).ok());
    for (const auto& s : resp.sessions()) seen.push_back(s.session_id());
    if (resp.next_page_token().empty()) break;
    req.set_page_token(resp.next_page_token());
  }
  EXPECT_EQ(seen.size(), 7u);
  pb::ListSessionsRequest filtered;
  (*filtered.mutable_label_filter())["team"] = "odd";
  pb::ListSessionsResponse resp;
  ASSERT_TRUE(stub_->ListSessions(Ctx().get(), filtered, &resp).ok());
  EXPECT_EQ(resp.sessions_size(), 3);
}

// Large inputs stream in many messages, past the 4 MiB default message limit.
TEST_F(ServerTest, AppendStreamBeyondFourMiB) {
  options_.max_tokens_per_request = 8 << 20;
  options_.max_queued_tokens = 8 << 20;
  options_.step_token_budget = 4096;
  // 4.5 M tokens through the fixture's model take minutes of CPU; this test is about the stream,
  // not the model, so it runs the smallest one (one layer, one head, 64-token chunks).
  ModelConfig fast_config = TinyConfig(Variant::kMAG, /*depth=*/1, /*chunk=*/64);
  fast_config.num_layers = 1;
  fast_config.num_heads = 1;
  fast_config.d_model = 16;
  fast_config.ffn_hidden = 16;
  fast_config.memory.max_weight_rms = ModelConfig().memory.max_weight_rms;  // as shipped: bounded
  auto fast = MakeModel(fast_config, 7);
  ASSERT_TRUE(fast->Save(model_dir_).ok());
  Start();
  Create("big");
  pb::AppendResponse resp;
  grpc::ClientContext ctx_storage;  // about 4.5 M tokens: minutes under the sanitizers
  ctx_storage.set_deadline(std::chrono::system_clock::now() + std::chrono::minutes(10));
  auto* ctx = &ctx_storage;
  auto writer = stub_->AppendStream(ctx, &resp);
  pb::AppendRequest msg;
  msg.set_session_id("big");
  msg.set_text(std::string((1 << 20) + (1 << 16), 'b'));  // 4 x 1.0625 MiB = 4.25 MiB
  for (int i = 0; i < 4; ++i) ASSERT_TRUE(writer->Write(msg));
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(resp.tokens_consumed(), 4u * ((1 << 20) + (1 << 16)));
  EXPECT_EQ(Position("big"), 4 * ((1 << 20) + (1 << 16)));
}

// AppendStream checks the token limit as messages arrive (byte tokenizer: bytes are tokens): a
// stream over the limit is refused while the client is still sending, before it is buffered.
TEST_F(ServerTest, AppendStreamRefusesOverLimitStreamsEarly) {
  options_.max_tokens_per_request = 100000;
  Start();
  Create("s");
  pb::AppendResponse resp;
  auto ctx = Ctx();
  auto writer = stub_->AppendStream(ctx.get(), &resp);
  pb::AppendRequest msg;
  msg.set_session_id("s");
  msg.set_text(std::string(1 << 16, 'x'));
  int written = 0;
  while (written < 2000 && writer->Write(msg)) ++written;  // up to 128 MiB if never refused
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  EXPECT_EQ(st.error_code(), StatusCode::INVALID_ARGUMENT) << st.error_message();
  EXPECT_NE(st.error_message().find("more than 100000 tokens"), std::string::npos);
  EXPECT_LT(written, 2000) << "the server read the whole stream before refusing it";
  EXPECT_EQ(Position("s"), 0);
  // Token ids count the same way.
  auto ctx2 = Ctx();
  auto ids = stub_->AppendStream(ctx2.get(), &resp);
  pb::AppendRequest tokens;
  tokens.set_session_id("s");
  for (int i = 0; i < 60000; ++i) tokens.mutable_tokens()->add_ids(65);
  ids->Write(tokens);
  ids->Write(tokens);
  ids->WritesDone();
  EXPECT_EQ(ids->Finish().error_code(), StatusCode::INVALID_ARGUMENT);
}

// Input held by calls in flight is bounded server-wide: while one stream holds most of the
// budget, a second gets RESOURCE_EXHAUSTED; the first still completes, and afterwards the
// budget is free again.
TEST_F(ServerTest, InflightRequestBytesAreBoundedServerWide) {
  service_options_.max_inflight_request_bytes = 16 << 10;
  static std::atomic<int64_t> inflight_bytes{0};  // outlives the server (TearDown)
  service_options_.inflight_request_bytes = &inflight_bytes;
  options_.step_token_budget = 4096;
  Start();
  Create("a");
  Create("b");
  pb::AppendResponse resp_a, resp_b;
  auto ctx_a = Ctx();
  auto a = stub_->AppendStream(ctx_a.get(), &resp_a);
  // 12 KiB of the 16 KiB budget, held open (small: the appends must finish quickly on a loaded
  // machine, within the calls' deadlines), in messages that each fit HTTP/2's initial 64 KiB
  // stream window, so delivery never waits on a window update while this thread is probing.
  pb::AppendRequest msg;
  msg.set_session_id("a");
  msg.set_text(std::string(4 << 10, 'a'));
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(a->Write(msg));
  // Wait until the server has read them (the budget is taken as messages arrive), then probe.
  for (int i = 0; i < 6000 && inflight_bytes.load() < (12 << 10); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  ASSERT_EQ(inflight_bytes.load(), 12 << 10);
  pb::AppendRequest probe;
  probe.set_session_id("no-such-session");
  probe.set_text(std::string(8 << 10, 'p'));
  pb::AppendResponse probed;
  grpc::Status st = stub_->Append(Ctx().get(), probe, &probed);
  EXPECT_EQ(st.error_code(), StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_NE(st.error_message().find("max_inflight_request_bytes"), std::string::npos);
  pb::AppendRequest to_b;
  to_b.set_session_id("b");
  to_b.set_text(std::string(8 << 10, 'b'));
  pb::AppendResponse refused;
  EXPECT_EQ(stub_->Append(Ctx().get(), to_b, &refused).error_code(),
            StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_EQ(Position("b"), 0);
  a->WritesDone();
  grpc::Status finished = a->Finish();
  ASSERT_TRUE(finished.ok()) << finished.error_code() << ": " << finished.error_message();
  EXPECT_EQ(Position("a"), 12 << 10);
  pb::AppendRequest after;
  after.set_session_id("b");
  after.set_text(std::string(8 << 10, 'b'));
  pb::AppendResponse out;
  EXPECT_TRUE(stub_->Append(Ctx().get(), after, &out).ok());
  EXPECT_EQ(inflight_bytes.load(), 0);
}

TEST_F(ServerTest, BidirectionalStreamAnswersInOrder) {
  Start();
  Create("s");
  auto ctx = Ctx();
  auto stream = stub_->Stream(ctx.get());
  pb::StreamRequest a;
  a.set_request_id(1);
  a.mutable_append()->set_session_id("s");
  a.mutable_append()->set_text("abc");
  pb::StreamRequest bad;
  bad.set_request_id(2);
  bad.mutable_append()->set_session_id("missing");
  bad.mutable_append()->set_text("x");
  pb::StreamRequest g;
  g.set_request_id(3);
  g.mutable_generate()->set_session_id("s");
  g.mutable_generate()->set_max_tokens(4);
  g.mutable_generate()->set_stop_at_eos(false);
  ASSERT_TRUE(stream->Write(a) && stream->Write(bad) && stream->Write(g));
  stream->WritesDone();
  std::vector<uint64_t> ids;
  pb::StreamResponse r;
  int errors = 0, generated = 0;
  while (stream->Read(&r)) {
    ids.push_back(r.request_id());
    if (r.has_error()) {
      ++errors;
      EXPECT_EQ(r.error().code(), static_cast<int>(StatusCode::NOT_FOUND));
    }
    if (r.has_generate()) generated += r.generate().token_ids_size();
  }
  EXPECT_TRUE(stream->Finish().ok());
  ASSERT_GE(ids.size(), 3u);
  EXPECT_EQ(ids[0], 1u);
  EXPECT_EQ(ids[1], 2u);
  EXPECT_EQ(ids.back(), 3u);
  EXPECT_EQ(errors, 1);
  EXPECT_EQ(generated, 4);
}

TEST_F(ServerTest, ScoreWithAndWithoutCommit) {
  Start();
  Create("s");
  ASSERT_TRUE(AppendText("s", "context").ok());
  pb::ScoreRequest req;
  req.set_session_id("s");
  for (int id : {104, 105, 33}) req.mutable_tokens()->add_ids(id);
  pb::ScoreResponse a, b;
  ASSERT_TRUE(stub_->Score(Ctx().get(), req, &a).ok());
  EXPECT_EQ(a.logprobs_size(), 3);
  EXPECT_EQ(Position("s"), 7);
  for (float lp : a.logprobs()) EXPECT_LT(lp, 0.0f);
  req.set_commit(true);
  ASSERT_TRUE(stub_->Score(Ctx().get(), req, &b).ok());
  EXPECT_EQ(Position("s"), 10);
  for (int i = 0; i < 3; ++i) EXPECT_FLOAT_EQ(a.logprobs(i), b.logprobs(i));
  req.set_session_id("");  // stateless
  ASSERT_TRUE(stub_->Score(Ctx().get(), req, &a).ok());
  EXPECT_EQ(a.logprobs_size(), 3);
}

// <|bos|> is fed only when a prediction has to start from an empty session (the proto's
// "Beginning of sequence" comment): a committed Score of n tokens on an empty session ends at
// n + 1, a prompt-less Generate of m tokens at m + 1; an Append of n tokens ends at n, and a
// Generate with a prompt adds none either.
TEST_F(ServerTest, ImplicitBosOnlyWhenPredictingFromAnEmptySession) {
  Start();
  Create("score");
  pb::ScoreRequest score;
  score.set_session_id("score");
  for (int id : {104, 105, 33}) score.mutable_tokens()->add_ids(id);
  score.set_commit(true);
  pb::ScoreResponse scored;
  ASSERT_TRUE(stub_->Score(Ctx().get(), score, &scored).ok());
  EXPECT_EQ(Position("score"), 4);
  ASSERT_TRUE(stub_->Score(Ctx().get(), score, &scored).ok());  // not empty now: no BOS
  EXPECT_EQ(Position("score"), 7);

  Create("gen");
  grpc::Status st;
  GenerateText("gen", 5, &st);
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(Position("gen"), 6);

  Create("append");
  ASSERT_TRUE(AppendText("append", "abc").ok());
  EXPECT_EQ(Position("append"), 3);

  Create("prompted");
  GenerateText("prompted", 2, &st, nullptr, "", "abc");
  ASSERT_TRUE(st.ok()) << st.error_message();
  EXPECT_EQ(Position("prompted"), 5);
}

// With a state directory, states beyond max_resident_sessions spill to disk and come back
// transparently, giving the same results as sessions that stayed in RAM.
TEST_F(ServerTest, SpilledSessionsReturnTransparently) {
  options_.state_dir = root_ + "/state";
  options_.max_resident_sessions = 1;
  Start();
  for (const char* id : {"x", "y", "z"}) {
    Create(id);
    ASSERT_TRUE(AppendText(id, "identical context for all three").ok());
  }
  pb::ListSessionsRequest req;
  pb::ListSessionsResponse resp;
  ASSERT_TRUE(stub_->ListSessions(Ctx().get(), req, &resp).ok());
  int spilled = 0;
  for (const auto& s : resp.sessions()) spilled += s.spilled();
  EXPECT_GE(spilled, 2);
  grpc::Status sx, sz;
  EXPECT_EQ(GenerateText("x", 10, &sx), GenerateText("z", 10, &sz));
  EXPECT_TRUE(sx.ok() && sz.ok());
}

// Sessions persisted at shutdown are served again by the next engine on the same directory.
TEST_F(ServerTest, GracefulShutdownPersistsSessions) {
  options_.state_dir = root_ + "/state";
  Start();
  Create("keep");
  ASSERT_TRUE(AppendText("keep", "remember me").ok());
  engine_->Shutdown(1000);
  EXPECT_EQ(AppendText("keep", "refused").error_code(), StatusCode::UNAVAILABLE);
  server_->Shutdown(std::chrono::system_clock::now());
  server_.reset();
  engine_.reset();
  Start();
  EXPECT_EQ(Position("keep"), 11);
  EXPECT_TRUE(AppendText("keep", "!").ok());
  EXPECT_EQ(Position("keep"), 12);
}

}  // namespace
}  // namespace titans::testing
