#include "server/proto_convert.h"

#include <algorithm>

#include "model/utf8.h"

namespace titans::server {
namespace pb = ::titans::v1;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

void ToProto(const engine::SessionInfo& in, pb::Session* out) {
  out->set_session_id(in.id);
  out->set_model(in.model);
  out->set_position(in.position);
  out->set_state_bytes(in.state_bytes);
  out->set_created_unix_ms(in.created_unix_ms);
  out->set_last_used_unix_ms(in.last_used_unix_ms);
  out->set_idle_ttl_seconds(in.idle_ttl_seconds);
  for (const auto& [k, v] : in.labels) (*out->mutable_labels())[k] = v;
  out->set_spilled(in.spilled);
  out->set_queued_operations(in.queued_operations);
  out->set_rewind_floor(in.rewind_floor);
}

engine::SamplingOverrides FromProto(const pb::SamplingParams& p) {
  engine::SamplingOverrides o;
  if (p.has_temperature()) o.temperature = p.temperature();
  if (p.has_top_k()) o.top_k = p.top_k();
  if (p.has_top_p()) o.top_p = p.top_p();
  if (p.has_min_p()) o.min_p = p.min_p();
  if (p.has_repetition_penalty()) o.repetition_penalty = p.repetition_penalty();
  if (p.has_seed()) o.seed = p.seed();
  return o;
}

namespace {
pb::FinishReason ToProto(engine::Finish f) {
  switch (f) {
    case engine::Finish::kLength:
      return pb::FINISH_REASON_LENGTH;
    case engine::Finish::kStop:
      return pb::FINISH_REASON_STOP;
    case engine::Finish::kEndOfSequence:
      return pb::FINISH_REASON_END_OF_SEQUENCE;
    case engine::Finish::kCancelled:
      return pb::FINISH_REASON_CANCELLED;
    case engine::Finish::kNone:
      break;
  }
  return pb::FINISH_REASON_UNSPECIFIED;
}
}  // namespace

void ToProto(const engine::GenerateEvent& e, pb::GenerateResponse* out) {
  for (int32_t t : e.tokens) out->add_token_ids(t);
  out->set_text(ToValidUtf8(e.text));
  out->set_position(e.position);
  if (e.finish != engine::Finish::kNone) {
    out->set_finish_reason(ToProto(e.finish));
    pb::Timings* t = out->mutable_timings();
    t->set_time_to_first_token_seconds(e.time_to_first_token_seconds);
    t->set_total_seconds(e.total_seconds);
    t->set_prompt_tokens(e.prompt_tokens);
    t->set_generated_tokens(e.generated_tokens);
  }
}

absl::StatusOr<engine::Input> InputOf(const pb::AppendRequest& r) {
  engine::Input in;
  switch (r.input_case()) {
    case pb::AppendRequest::kText:
      in.text = r.text();
      break;
    case pb::AppendRequest::kTokens:
      in.tokens.assign(r.tokens().ids().begin(), r.tokens().ids().end());
      in.has_tokens = true;
      break;
    default:
      return absl::InvalidArgumentError("append needs text or tokens");
  }
  return in;
}

engine::GenerateParams GenerateParamsOf(const pb::GenerateRequest& req) {
  engine::GenerateParams p;
  switch (req.prompt_case()) {
    case pb::GenerateRequest::kPromptText:
      p.prompt.text = req.prompt_text();
      break;
    case pb::GenerateRequest::kPromptTokens:
      p.prompt.tokens.assign(req.prompt_tokens().ids().begin(), req.prompt_tokens().ids().end());
      p.prompt.has_tokens = true;
      break;
    default:
      break;
  }
  if (req.has_sampling()) p.sampling = FromProto(req.sampling());
  p.max_tokens = static_cast<int32_t>(std::min<uint32_t>(req.max_tokens(), 1u << 30));
  p.stop.assign(req.stop().begin(), req.stop().end());
  p.stop_at_eos = req.has_stop_at_eos() ? req.stop_at_eos() : true;
  return p;
}

int64_t InputBytes(const engine::Input& in) {
  return static_cast<int64_t>(in.text.size() + sizeof(int32_t) * in.tokens.size());
}

}  // namespace titans::server
