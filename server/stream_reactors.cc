#include "server/stream_reactors.h"

#include <deque>
#include <memory>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/strings/str_cat.h"
#include "model/mutex.h"
#include "proto/request_traits.h"
#include "server/generate_events.h"
#include "server/proto_convert.h"

namespace titans::server {
namespace {

namespace pb = ::titans::v1;
using engine::CancelFlag;

CancelFlag NewCancelFlag() { return std::make_shared<std::atomic<bool>>(false); }

grpc::Status InflightExhausted(int64_t limit) {
  return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                      absl::StrCat("the server holds its limit of in-flight request input (", limit,
                                   " bytes, --max_inflight_request_bytes); retry later"));
}

grpc::Status ClientCancelled() {
  return grpc::Status(grpc::StatusCode::CANCELLED, "client cancelled");
}

void FillAppend(const engine::AppendResult& r, pb::AppendResponse* out) {
  out->set_tokens_consumed(r.tokens_consumed);
  out->set_position(r.position);
}

class AppendReactor final : public grpc::ServerUnaryReactor {
 public:
  AppendReactor(const ReactorContext& rc, std::string principal, const std::string& session_id,
                engine::Input input, pb::AppendResponse* response)
      : held_(rc.inflight) {
    if (!held_.Add(InputBytes(input))) {
      Finish(InflightExhausted(rc.inflight->limit()));
      return;
    }
    rc.engine->Append(principal, session_id, std::move(input), cancel_,
                      [this, response](absl::StatusOr<engine::AppendResult> r) {
                        if (r.ok()) FillAppend(*r, response);
                        held_.Release();
                        Finish(ToGrpc(r.status()));
                      });
  }
  void OnCancel() override { cancel_->store(true); }
  void OnDone() override { delete this; }

 private:
  InflightBudget::Reservation held_;
  const CancelFlag cancel_ = NewCancelFlag();
};

// Reads every message, checking the limits as they arrive (so a stream that will be refused is
// refused before it has been buffered: token ids count exactly, and with the byte tokenizer so
// do bytes), then appends the whole input as one operation. Reads happen one at a time and the
// engine is called once reading is done, so only the cancel flag is shared between threads.
class AppendStreamReactor final : public grpc::ServerReadReactor<pb::AppendRequest> {
 public:
  AppendStreamReactor(grpc::CallbackServerContext* ctx, const ReactorContext& rc,
                      std::string principal, pb::AppendResponse* response)
      : ctx_(ctx),
        rc_(rc),
        principal_(std::move(principal)),
        response_(response),
        held_(rc.inflight),
        max_tokens_(rc.engine->max_tokens_per_request()),
        byte_tokens_(rc.engine->model_info().tokenizer == "byte") {
    StartRead(&message_);
  }

  void OnReadDone(bool ok) override {
    if (!ok) {
      if (ctx_->IsCancelled()) {
        held_.Release();
        return Finish(ClientCancelled());
      }
      if (first_) {
        return Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "empty AppendStream"));
      }
      rc_.engine->Append(principal_, session_id_, std::move(all_), cancel_,
                         [this](absl::StatusOr<engine::AppendResult> r) {
                           if (r.ok()) FillAppend(*r, response_);
                           held_.Release();
                           Finish(ToGrpc(r.status()));
                         });
      return;
    }
    grpc::Status st = Take();
    if (!st.ok()) {
      held_.Release();
      return Finish(std::move(st));
    }
    StartRead(&message_);
  }
  void OnCancel() override { cancel_->store(true); }
  void OnDone() override { delete this; }

 private:
  // Adds message_ to the input; an error ends the call.
  grpc::Status Take() {
    if (grpc::Status bad = titans::proto::RequestError(message_); !bad.ok()) return bad;
    if (first_) {
      session_id_ = message_.session_id();
    } else if (!message_.session_id().empty() && message_.session_id() != session_id_) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "every AppendStream message must name the same session");
    }
    auto input = InputOf(message_);
    if (!input.ok()) return ToGrpc(input.status());
    if (!first_ && input->has_tokens != all_.has_tokens) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          "an AppendStream carries either text or tokens, not both");
    }
    all_.has_tokens = input->has_tokens;
    if (!held_.Add(InputBytes(*input))) return InflightExhausted(rc_.inflight->limit());
    const int64_t counted =
        all_.has_tokens ? static_cast<int64_t>(all_.tokens.size() + input->tokens.size())
        : byte_tokens_  ? static_cast<int64_t>(all_.text.size() + input->text.size())
                        : 0;
    if (counted > max_tokens_) {
      return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                          absl::StrCat("input has more than ", max_tokens_,
                                       " tokens; at most that many per request (split it)"));
    }
    all_.text += input->text;
    all_.tokens.insert(all_.tokens.end(), input->tokens.begin(), input->tokens.end());
    if (static_cast<int64_t>(all_.text.size() + 4 * all_.tokens.size()) > rc_.max_stream_bytes) {
      return grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED,
                          absl::StrCat("AppendStream exceeds ", rc_.max_stream_bytes, " bytes"));
    }
    first_ = false;
    return grpc::Status::OK;
  }

  grpc::CallbackServerContext* const ctx_;
  const ReactorContext rc_;
  const std::string principal_;
  pb::AppendResponse* const response_;
  InflightBudget::Reservation held_;
  const int64_t max_tokens_;
  const bool byte_tokens_;
  const CancelFlag cancel_ = NewCancelFlag();
  pb::AppendRequest message_;
  std::string session_id_;
  engine::Input all_;
  bool first_ = true;
};

class GenerateReactor final : public grpc::ServerWriteReactor<pb::GenerateResponse> {
 public:
  GenerateReactor(const ReactorContext& rc, const std::string& principal,
                  const pb::GenerateRequest& request) {
    rc.engine->Generate(
        principal, request.session_id(), GenerateParamsOf(request), cancel_,
        [this](const engine::GenerateEvent& e) {
          {
            MutexLock lock(&mu_);
            if (client_gone_) return;
            if (pending_) {
              MergeGenerateEvents(&*pending_, e);
            } else {
              pending_ = e;
            }
          }
          Advance();
        },
        [this](absl::Status s) {
          {
            MutexLock lock(&mu_);
            engine_done_ = true;
            status_ = ToGrpc(s);
          }
          Advance();
        });
  }

  void OnWriteDone(bool ok) override {
    {
      MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {  // the client is gone: stop the generation, drop what it would have read
        client_gone_ = true;
        pending_.reset();
        cancel_->store(true);
      }
    }
    Advance();
  }
  void OnCancel() override { cancel_->store(true); }
  void OnDone() override { delete this; }

 private:
  // Starts the one gRPC operation the state calls for, if any: a write of the pending events,
  // or, once the engine is done and everything is written, the finish.
  void Advance() {
    bool write = false;
    bool finish = false;
    grpc::Status status;
    {
      MutexLock lock(&mu_);
      if (writing_ || finished_) return;
      if (pending_) {
        out_.Clear();
        ToProto(*pending_, &out_);
        pending_.reset();
        writing_ = write = true;
      } else if (engine_done_) {
        finished_ = finish = true;
        status = status_;
      }
    }
    if (write) StartWrite(&out_);
    if (finish) Finish(std::move(status));
  }

  const CancelFlag cancel_ = NewCancelFlag();
  Mutex mu_;
  // Events not yet written, merged.
  std::optional<engine::GenerateEvent> pending_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;
  bool engine_done_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  // Being written; touched only by the thread that set writing_ until OnWriteDone.
  pb::GenerateResponse out_;
};

class StreamReactor final : public grpc::ServerBidiReactor<pb::StreamRequest, pb::StreamResponse> {
 public:
  StreamReactor(const ReactorContext& rc, std::string principal)
      : rc_(rc), principal_(std::move(principal)) {
    reading_ = true;
    StartRead(&command_);
  }

  void OnReadDone(bool ok) override {
    grpc::Status bad = ok ? titans::proto::RequestError(command_) : grpc::Status::OK;
    // The command leaves the read buffer before anything can start the next read into it.
    pb::StreamRequest command;
    if (ok) command.Swap(&command_);
    {
      MutexLock lock(&mu_);
      reading_ = false;
      if (!ok || !bad.ok()) {  // the end of the stream, or a message that did not parse
        read_closed_ = true;
        final_status_ = bad;
      } else {
        command_active_ = true;
        ++serial_;
      }
    }
    if (ok && bad.ok()) Begin(command);
    Advance();
  }
  void OnWriteDone(bool ok) override {
    {
      MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) {  // the client is gone: stop the command, drop the unsent answers
        client_gone_ = true;
        queue_.clear();
        cancel_->store(true);
      }
    }
    Advance();
  }
  void OnCancel() override {
    {
      MutexLock lock(&mu_);
      cancelled_ = true;
    }
    cancel_->store(true);
    Advance();
  }
  void OnDone() override { delete this; }

 private:
  struct Outgoing {
    uint64_t serial = 0;  // the command it answers
    bool is_event = false;
    engine::GenerateEvent event;  // is_event: a generation's events, merged, not yet converted
    pb::StreamResponse message;   // otherwise
  };

  // Starts the engine operation for a command.
  void Begin(const pb::StreamRequest& command) {
    const uint64_t request_id = command.request_id();
    uint64_t serial;
    {
      MutexLock lock(&mu_);
      serial = serial_;
    }
    if (command.has_append()) {
      auto input = InputOf(command.append());
      if (!input.ok()) return CommandDone(request_id, ToGrpc(input.status()));
      rc_.engine->Append(principal_, command.append().session_id(), std::move(*input), cancel_,
                         [this, request_id, serial](absl::StatusOr<engine::AppendResult> r) {
                           if (r.ok()) {
                             Outgoing out;
                             out.serial = serial;
                             out.message.set_request_id(request_id);
                             FillAppend(*r, out.message.mutable_append());
                             Push(std::move(out));
                           }
                           CommandDone(request_id, ToGrpc(r.status()));
                         });
    } else if (command.has_generate()) {
      rc_.engine->Generate(
          principal_, command.generate().session_id(), GenerateParamsOf(command.generate()),
          cancel_,
          [this, request_id, serial](const engine::GenerateEvent& e) {
            Outgoing out;
            out.serial = serial;
            out.is_event = true;
            out.event = e;
            out.message.set_request_id(request_id);
            Push(std::move(out));
          },
          [this, request_id](absl::Status s) { CommandDone(request_id, ToGrpc(s)); });
    } else {
      CommandDone(request_id, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                           "command needs append or generate"));
    }
  }

  // Queues an answer; a generation's event joins the unsent one before it of the same command.
  void Push(Outgoing out) {
    {
      MutexLock lock(&mu_);
      if (client_gone_) return;
      if (out.is_event && !queue_.empty() && queue_.back().is_event &&
          queue_.back().serial == out.serial) {
        MergeGenerateEvents(&queue_.back().event, std::move(out.event));
      } else {
        queue_.push_back(std::move(out));
      }
    }
    Advance();
  }

  // The command's outcome: an error is answered in the stream (the stream itself goes on),
  // unless the call is cancelled.
  void CommandDone(uint64_t request_id, const grpc::Status& status) {
    {
      MutexLock lock(&mu_);
      command_active_ = false;
      if (!status.ok() && !cancelled_ && !client_gone_) {
        Outgoing out;
        out.serial = serial_;
        out.message.set_request_id(request_id);
        out.message.mutable_error()->set_code(status.error_code());
        out.message.mutable_error()->set_message(status.error_message());
        queue_.push_back(std::move(out));
      }
    }
    Advance();
  }

  // Starts the one gRPC operation the state calls for, if any: the next write; else, with no
  // command running and everything written, the next read; or the finish once the stream is
  // over (ended by the client, a bad message, a cancel, or a failed write).
  void Advance() {
    enum { kNone, kWrite, kRead, kFinish } action = kNone;
    grpc::Status status;
    {
      MutexLock lock(&mu_);
      if (finished_) return;
      const bool over = read_closed_ || cancelled_ || client_gone_;
      if (!writing_ && !queue_.empty() && !client_gone_) {
        Outgoing& next = queue_.front();
        out_ = std::move(next.message);
        if (next.is_event) ToProto(next.event, out_.mutable_generate());
        queue_.pop_front();
        writing_ = true;
        action = kWrite;
      } else if (!writing_ && !reading_ && !command_active_ && queue_.empty() && !over) {
        reading_ = true;
        action = kRead;
      } else if (over && !writing_ && !reading_ && !command_active_) {
        finished_ = true;
        status = cancelled_ || client_gone_ ? ClientCancelled() : final_status_;
        action = kFinish;
      }
    }
    switch (action) {
      case kWrite:
        StartWrite(&out_);
        break;
      case kRead:
        StartRead(&command_);
        break;
      case kFinish:
        Finish(std::move(status));
        break;
      case kNone:
        break;
    }
  }

  const ReactorContext rc_;
  const std::string principal_;
  const CancelFlag cancel_ = NewCancelFlag();
  // Filled by a read; emptied by OnReadDone before the next read can start.
  pb::StreamRequest command_;
  // Being written; touched only by the thread that set writing_ until OnWriteDone.
  pb::StreamResponse out_;
  Mutex mu_;
  std::deque<Outgoing> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t serial_ ABSL_GUARDED_BY(mu_) = 0;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool command_active_ ABSL_GUARDED_BY(mu_) = false;
  bool read_closed_ ABSL_GUARDED_BY(mu_) = false;
  bool cancelled_ ABSL_GUARDED_BY(mu_) = false;
  bool client_gone_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status final_status_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

grpc::ServerUnaryReactor* StartAppend(const ReactorContext& rc, std::string principal,
                                      const std::string& session_id, engine::Input input,
                                      pb::AppendResponse* response) {
  return new AppendReactor(rc, std::move(principal), session_id, std::move(input), response);
}

grpc::ServerReadReactor<pb::AppendRequest>* StartAppendStream(grpc::CallbackServerContext* ctx,
                                                              const ReactorContext& rc,
                                                              std::string principal,
                                                              pb::AppendResponse* response) {
  return new AppendStreamReactor(ctx, rc, std::move(principal), response);
}

grpc::ServerWriteReactor<pb::GenerateResponse>* StartGenerate(const ReactorContext& rc,
                                                              std::string principal,
                                                              const pb::GenerateRequest& request) {
  return new GenerateReactor(rc, principal, request);
}

grpc::ServerBidiReactor<pb::StreamRequest, pb::StreamResponse>* StartStream(
    const ReactorContext& rc, std::string principal) {
  return new StreamReactor(rc, std::move(principal));
}

}  // namespace titans::server
