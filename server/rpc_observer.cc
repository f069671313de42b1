#include "server/rpc_observer.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/message.h>

#include <atomic>
#include <chrono>
#include <random>

#include "absl/strings/str_format.h"
#include "server/log.h"

namespace titans::server {
namespace {

using grpc::experimental::InterceptionHookPoints;

const char* CodeName(grpc::StatusCode code) {
  static const char* const kNames[] = {"OK",
                                       "CANCELLED",
                                       "UNKNOWN",
                                       "INVALID_ARGUMENT",
                                       "DEADLINE_EXCEEDED",
                                       "NOT_FOUND",
                                       "ALREADY_EXISTS",
                                       "PERMISSION_DENIED",
                                       "RESOURCE_EXHAUSTED",
                                       "FAILED_PRECONDITION",
                                       "ABORTED",
                                       "OUT_OF_RANGE",
                                       "UNIMPLEMENTED",
                                       "INTERNAL",
                                       "UNAVAILABLE",
                                       "DATA_LOSS",
                                       "UNAUTHENTICATED"};
  const int i = static_cast<int>(code);
  return i >= 0 && i < 17 ? kNames[i] : "UNKNOWN";
}

std::string NewRequestId() {
  static std::atomic<uint64_t> counter{0};
  static const uint64_t base = std::random_device{}();
  return absl::StrFormat("r-%08x-%06x", static_cast<uint32_t>(base), counter.fetch_add(1));
}

class RpcObserver : public grpc::experimental::Interceptor {
 public:
  RpcObserver(ServerMetrics* metrics, const Authenticator* auth,
              grpc::experimental::ServerRpcInfo* info)
      : metrics_(metrics), auth_(auth), start_(std::chrono::steady_clock::now()) {
    const std::string full = info->method();  // "/titans.v1.Titans/Append"
    method_ = full.substr(full.rfind('/') + 1);
    // Only our own service's messages are known to be protobuf Messages (the built-in health
    // and reflection services use raw byte buffers).
    typed_messages_ = full.rfind("/titans.v1.", 0) == 0;
  }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_INITIAL_METADATA)) {
      auto* md = methods->GetRecvInitialMetadata();
      auto it = md ? md->find("x-request-id") : decltype(md->end()){};
      if (md && it != md->end()) request_id_.assign(it->second.data(), it->second.size());
      if (request_id_.empty() || request_id_.size() > 128) request_id_ = NewRequestId();
      if (auth_ && auth_->enabled() && md) {
        auto bearer = md->find("authorization");
        if (bearer != md->end()) {
          const std::string value(bearer->second.data(), bearer->second.size());
          auto principal = auth_->Authenticate(&value);
          if (principal.ok()) principal_ = *principal;
        }
      }
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE) &&
        typed_messages_ && session_id_.empty()) {
      if (auto* msg = static_cast<google::protobuf::Message*>(methods->GetRecvMessage())) {
        const auto* field = msg->GetDescriptor()->FindFieldByName("session_id");
        if (field && field->type() == google::protobuf::FieldDescriptor::TYPE_STRING) {
          session_id_ = msg->GetReflection()->GetString(*msg, field);
        }
      }
    }
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status st = methods->GetSendStatus();
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      const char* code = CodeName(st.error_code());
      metrics_->RecordRpc(method_, code, seconds);
      // Client mistakes and cancellations at info; server-side failures at warning.
      LogLevel level = LogLevel::kDebug;
      switch (st.error_code()) {
        case grpc::StatusCode::OK:
          break;
        case grpc::StatusCode::INTERNAL:
        case grpc::StatusCode::UNKNOWN:
        case grpc::StatusCode::DATA_LOSS:
          level = LogLevel::kWarning;
          break;
        default:
          level = LogLevel::kInfo;
      }
      if (LogEnabled(level)) {
        Log(level, "rpc",
            {{"method", method_},
             {"code", code},
             {"request_id", request_id_},
             {"principal", principal_},
             {"session_id", session_id_},
             {"duration_ms", absl::StrFormat("%.3f", seconds * 1000)},
             {"message", st.error_message()}});
      }
    }
    methods->Proceed();
  }

 private:
  ServerMetrics* metrics_;
  const Authenticator* auth_;
  std::chrono::steady_clock::time_point start_;
  std::string method_, request_id_, principal_, session_id_;
  bool typed_messages_ = false;
};

class RpcObserverFactory : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  RpcObserverFactory(ServerMetrics* metrics, const Authenticator* auth)
      : metrics_(metrics), auth_(auth) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override {
    return new RpcObserver(metrics_, auth_, info);
  }

 private:
  ServerMetrics* metrics_;
  const Authenticator* auth_;
};

}  // namespace

std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface> MakeRpcObserverFactory(
    ServerMetrics* metrics, const Authenticator* auth) {
  return std::make_unique<RpcObserverFactory>(metrics, auth);
}

}  // namespace titans::server
