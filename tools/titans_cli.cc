// titans-cli: a command-line client for titans-server.
//
//   titans-cli [--server host:port] [--token T] <command> [args]
//   create [--id ID] [--ttl SECONDS] [--label k=v,...]     prints the session id
//   append ID [FILE|-]      streams a file (or stdin) into the session, with a progress bar
//   append ID --text "..."  appends a string
//   generate ID [--prompt P] [--max_tokens N] [--temperature T] [--seed S] [--stop a,b]
//   fork ID [NEW_ID]        snapshot ID FILE         restore FILE [NEW_ID]
//   rewind ID POSITION
//   get ID                  list                     close ID                models
#include <grpcpp/grpcpp.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_split.h"
#include "model/program_flags.h"
#include "titans/v1/titans.grpc.pb.h"

ABSL_FLAG(std::string, server, "127.0.0.1:50051", "server address");
ABSL_FLAG(std::string, token, "", "bearer token (default: $TITANS_TOKEN)");
ABSL_FLAG(std::string, tls_ca, "", "PEM CA to verify a TLS server (enables TLS)");
ABSL_FLAG(std::string, id, "", "create: session id (default: assigned by the server)");
ABSL_FLAG(uint64_t, ttl, 0, "create: idle TTL in seconds (0 = server default)");
ABSL_FLAG(std::vector<std::string>, label, {}, "create: labels k=v,...");
ABSL_FLAG(std::string, text, "", "append: text instead of a file");
ABSL_FLAG(std::string, prompt, "", "generate: prompt");
ABSL_FLAG(int32_t, max_tokens, 200, "generate: tokens to generate");
ABSL_FLAG(double, temperature, 0.8, "generate: temperature (0 = greedy)");
ABSL_FLAG(int64_t, seed, -1, "generate: seed (-1 = continue the session's RNG)");
ABSL_FLAG(std::vector<std::string>, stop, {}, "generate: stop strings");

namespace {

namespace pb = ::titans::v1;

int Usage() {
  std::fprintf(stderr, "%s\n", absl::ProgramUsageMessage().data());
  return 2;
}

int Report(const grpc::Status& st) {
  if (st.ok()) return 0;
  std::fprintf(stderr, "titans-cli: %d %s\n", static_cast<int>(st.error_code()),
               st.error_message().c_str());
  return 1;
}

class Client {
 public:
  Client() {
    std::shared_ptr<grpc::ChannelCredentials> creds = grpc::InsecureChannelCredentials();
    if (!absl::GetFlag(FLAGS_tls_ca).empty()) {
      std::ifstream in(absl::GetFlag(FLAGS_tls_ca));
      std::stringstream ca;
      ca << in.rdbuf();
      grpc::SslCredentialsOptions ssl;
      ssl.pem_root_certs = ca.str();
      creds = grpc::SslCredentials(ssl);
    }
    stub_ = pb::Titans::NewStub(grpc::CreateChannel(absl::GetFlag(FLAGS_server), creds));
    token_ = absl::GetFlag(FLAGS_token);
    if (token_.empty() && std::getenv("TITANS_TOKEN")) token_ = std::getenv("TITANS_TOKEN");
  }
  // `session`: the id of the session the call is about, sent as the x-titans-session header so
  // that a router (helm/titans) keeps the session on one replica.
  std::unique_ptr<grpc::ClientContext> Ctx(const std::string& session = "") {
    auto ctx = std::make_unique<grpc::ClientContext>();
    if (!token_.empty()) ctx->AddMetadata("authorization", "Bearer " + token_);
    if (!session.empty()) ctx->AddMetadata("x-titans-session", session);
    return ctx;
  }
  pb::Titans::Stub& stub() { return *stub_; }

 private:
  std::unique_ptr<pb::Titans::Stub> stub_;
  std::string token_;
};

void PrintSession(const pb::Session& s) {
  std::printf("%s\tposition %llu\tstate %.2f MiB\t%s%s\n", s.session_id().c_str(),
              static_cast<unsigned long long>(s.position()), s.state_bytes() / 1048576.0,
              s.spilled() ? "spilled" : "resident",
              s.queued_operations()
                  ? (" (" + std::to_string(s.queued_operations()) + " queued)").c_str()
                  : "");
}

int Append(Client& c, const std::string& id, const std::string& path) {
  pb::AppendResponse resp;
  auto ctx = c.Ctx(id);
  if (!absl::GetFlag(FLAGS_text).empty()) {
    pb::AppendRequest req;
    req.set_session_id(id);
    req.set_text(absl::GetFlag(FLAGS_text));
    grpc::Status st = c.stub().Append(ctx.get(), req, &resp);
    if (!st.ok()) return Report(st);
  } else {
    std::ifstream file;
    std::istream* in = &std::cin;
    int64_t total = -1;
    if (!path.empty() && path != "-") {
      file.open(path, std::ios::binary | std::ios::ate);
      if (!file) {
        std::fprintf(stderr, "titans-cli: cannot open %s\n", path.c_str());
        return 1;
      }
      total = file.tellg();
      file.seekg(0);
      in = &file;
    }
    auto writer = c.stub().AppendStream(ctx.get(), &resp);
    std::vector<char> buf(256 << 10);
    int64_t sent = 0;
    while (*in) {
      in->read(buf.data(), static_cast<std::streamsize>(buf.size()));
      const std::streamsize got = in->gcount();
      if (got <= 0) break;
      pb::AppendRequest req;
      req.set_session_id(id);
      req.set_text(std::string(buf.data(), static_cast<size_t>(got)));
      if (!writer->Write(req)) break;
      sent += got;
      if (total > 0) {
        const int width = 40, filled = static_cast<int>(width * sent / total);
        std::fprintf(stderr, "\r[%s%s] %5.1f%% %lld bytes", std::string(filled, '#').c_str(),
                     std::string(width - filled, ' ').c_str(), 100.0 * sent / total,
                     static_cast<long long>(sent));
      } else {
        std::fprintf(stderr, "\r%lld bytes sent", static_cast<long long>(sent));
      }
    }
    std::fprintf(stderr, "\n");
    writer->WritesDone();
    grpc::Status st = writer->Finish();
    if (!st.ok()) return Report(st);
  }
  std::printf("consumed %llu tokens, position %llu\n",
              static_cast<unsigned long long>(resp.tokens_consumed()),
              static_cast<unsigned long long>(resp.position()));
  return 0;
}

int Generate(Client& c, const std::string& id) {
  pb::GenerateRequest req;
  req.set_session_id(id);
  if (!absl::GetFlag(FLAGS_prompt).empty()) req.set_prompt_text(absl::GetFlag(FLAGS_prompt));
  req.set_max_tokens(absl::GetFlag(FLAGS_max_tokens));
  req.mutable_sampling()->set_temperature(static_cast<float>(absl::GetFlag(FLAGS_temperature)));
  if (absl::GetFlag(FLAGS_seed) >= 0) {
    req.mutable_sampling()->set_seed(static_cast<uint64_t>(absl::GetFlag(FLAGS_seed)));
  }
  for (const std::string& s : absl::GetFlag(FLAGS_stop)) req.add_stop(s);
  auto ctx = c.Ctx(req.session_id());
  auto reader = c.stub().Generate(ctx.get(), req);
  pb::GenerateResponse msg, last;
  while (reader->Read(&msg)) {
    std::fwrite(msg.text().data(), 1, msg.text().size(), stdout);
    std::fflush(stdout);
    last = msg;
  }
  grpc::Status st = reader->Finish();
  if (!st.ok()) return Report(st);
  std::fprintf(stderr,
               "\n[%u tokens, first after %.3f s, %.3f s total, finish %s, position %llu]\n",
               last.timings().generated_tokens(), last.timings().time_to_first_token_seconds(),
               last.timings().total_seconds(), pb::FinishReason_Name(last.finish_reason()).c_str(),
               static_cast<unsigned long long>(last.position()));
  return 0;
}

// create: creates a session with the --id, --ttl and --label flags and prints its id.
int Create(Client& c) {
  pb::CreateSessionRequest req;
  req.set_session_id(absl::GetFlag(FLAGS_id));
  req.set_idle_ttl_seconds(absl::GetFlag(FLAGS_ttl));
  for (const std::string& kv : absl::GetFlag(FLAGS_label)) {
    std::vector<std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
    if (p.size() == 2) (*req.mutable_labels())[p[0]] = p[1];
  }
  pb::Session s;
  grpc::Status st = c.stub().CreateSession(c.Ctx(req.session_id()).get(), req, &s);
  if (st.ok()) std::printf("%s\n", s.session_id().c_str());
  return Report(st);
}

// fork: forks session `id` into `new_id` (empty: assigned by the server) and prints its id.
int Fork(Client& c, const std::string& id, const std::string& new_id) {
  pb::ForkSessionRequest req;
  req.set_session_id(id);
  req.set_new_session_id(new_id);
  pb::Session s;
  grpc::Status st = c.stub().ForkSession(c.Ctx(req.session_id()).get(), req, &s);
  if (st.ok()) std::printf("%s\n", s.session_id().c_str());
  return Report(st);
}

// rewind: rewinds session `id` to `position` (decimal) and prints the position it is at.
int Rewind(Client& c, const std::string& id, const std::string& position) {
  pb::RewindSessionRequest req;
  req.set_session_id(id);
  req.set_position(std::strtoull(position.c_str(), nullptr, 10));
  pb::Session s;
  grpc::Status st = c.stub().RewindSession(c.Ctx(req.session_id()).get(), req, &s);
  if (st.ok()) std::printf("%llu\n", static_cast<unsigned long long>(s.position()));
  return Report(st);
}

// snapshot: writes session `id`'s snapshot to the file `path`.
int Snapshot(Client& c, const std::string& id, const std::string& path) {
  pb::ExportSessionRequest req;
  req.set_session_id(id);
  pb::ExportSessionResponse resp;
  grpc::Status st = c.stub().ExportSession(c.Ctx(req.session_id()).get(), req, &resp);
  if (!st.ok()) return Report(st);
  std::ofstream(path, std::ios::binary) << resp.snapshot();
  std::printf("wrote %zu bytes (position %llu, model %s)\n", resp.snapshot().size(),
              static_cast<unsigned long long>(resp.position()), resp.model_fingerprint().c_str());
  return 0;
}

// restore: imports the snapshot file `path` as session `new_id` and prints the session.
int Restore(Client& c, const std::string& path, const std::string& new_id) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return Report(grpc::Status(grpc::StatusCode::NOT_FOUND, "cannot open " + path));
  std::stringstream blob;
  blob << in.rdbuf();
  pb::ImportSessionRequest req;
  req.set_snapshot(blob.str());
  req.set_session_id(new_id);
  pb::Session s;
  grpc::Status st = c.stub().ImportSession(c.Ctx().get(), req, &s);
  if (st.ok()) PrintSession(s);
  return Report(st);
}

// get: prints session `id`.
int Get(Client& c, const std::string& id) {
  pb::GetSessionRequest req;
  req.set_session_id(id);
  pb::Session s;
  grpc::Status st = c.stub().GetSession(c.Ctx(req.session_id()).get(), req, &s);
  if (st.ok()) PrintSession(s);
  return Report(st);
}

// list: prints every session, page by page.
int List(Client& c) {
  pb::ListSessionsRequest req;
  while (true) {
    pb::ListSessionsResponse resp;
    grpc::Status st = c.stub().ListSessions(c.Ctx().get(), req, &resp);
    if (!st.ok()) return Report(st);
    for (const auto& s : resp.sessions()) PrintSession(s);
    if (resp.next_page_token().empty()) return 0;
    req.set_page_token(resp.next_page_token());
  }
}

// close: closes session `id`.
int Close(Client& c, const std::string& id) {
  pb::CloseSessionRequest req;
  req.set_session_id(id);
  pb::CloseSessionResponse resp;
  return Report(c.stub().CloseSession(c.Ctx(req.session_id()).get(), req, &resp));
}

// models: prints the models the server serves.
int Models(Client& c) {
  pb::ListModelsResponse resp;
  grpc::Status st = c.stub().ListModels(c.Ctx().get(), pb::ListModelsRequest(), &resp);
  for (const auto& m : resp.models()) {
    std::printf("%s\t%s\t%llu parameters\t%s\t%s\n", m.name().c_str(), m.variant().c_str(),
                static_cast<unsigned long long>(m.parameters()), m.initialization().c_str(),
                m.fingerprint().c_str());
  }
  return Report(st);
}

}  // namespace

int main(int argc, char** argv) {
  titans::ShowOwnFlagsInHelp("titans-cli");
  absl::SetProgramUsageMessage(
      "titans-cli [--server host:port] [--token T] <command> [args]\n"
      "  create [--id ID] [--ttl S] [--label k=v,..]   append ID [FILE|-] | append ID --text T\n"
      "  generate ID [--prompt P] [--max_tokens N] [--temperature T] [--seed S] [--stop a,b]\n"
      "  fork ID [NEW_ID]   rewind ID POSITION   snapshot ID FILE   restore FILE [NEW_ID]   get ID"
      "   list   close ID"
      "   models");
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  if (args.size() < 2) return Usage();
  const std::string cmd = args[1];
  auto arg = [&](size_t i) { return i < args.size() ? std::string(args[i]) : std::string(); };
  Client c;
  if (cmd == "create") return Create(c);
  if (cmd == "append" && args.size() >= 3) return Append(c, arg(2), arg(3));
  if (cmd == "generate" && args.size() >= 3) return Generate(c, arg(2));
  if (cmd == "fork" && args.size() >= 3) return Fork(c, arg(2), arg(3));
  if (cmd == "rewind" && args.size() >= 4) return Rewind(c, arg(2), arg(3));
  if (cmd == "snapshot" && args.size() >= 4) return Snapshot(c, arg(2), arg(3));
  if (cmd == "restore" && args.size() >= 3) return Restore(c, arg(2), arg(3));
  if (cmd == "get" && args.size() >= 3) return Get(c, arg(2));
  if (cmd == "list") return List(c);
  if (cmd == "close" && args.size() >= 3) return Close(c, arg(2));
  if (cmd == "models") return Models(c);
  return Usage();
}
