// Conversions between titans.v1 messages and the engine's plain types, and absl::Status to
// grpc::Status (the code carries over unchanged; the two enums share their values). Pure
// functions: no engine, no I/O. Generated protobuf headers stay out of every other server header.
#ifndef TITANS_SERVER_PROTO_CONVERT_H_
#define TITANS_SERVER_PROTO_CONVERT_H_

#include <grpcpp/grpcpp.h>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "server/engine/engine.h"
#include "titans/v1/titans.pb.h"

namespace titans::server {

grpc::Status ToGrpc(const absl::Status& s);
void ToProto(const engine::SessionInfo& in, titans::v1::Session* out);
// The event's text is made valid UTF-8 (proto3 strings must be).
void ToProto(const engine::GenerateEvent& e, titans::v1::GenerateResponse* out);
// INVALID_ARGUMENT when the request has neither text nor tokens.
absl::StatusOr<engine::Input> InputOf(const titans::v1::AppendRequest& r);
engine::GenerateParams GenerateParamsOf(const titans::v1::GenerateRequest& req);
engine::SamplingOverrides FromProto(const titans::v1::SamplingParams& p);
// Bytes an input holds in memory.
int64_t InputBytes(const engine::Input& in);

}  // namespace titans::server

#endif  // TITANS_SERVER_PROTO_CONVERT_H_
