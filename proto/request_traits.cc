#include "proto/request_traits.h"

#include <google/protobuf/descriptor.h>
#include <google/protobuf/descriptor.pb.h>
#include <google/protobuf/dynamic_message.h>
#include <google/protobuf/stubs/common.h>
#include <google/protobuf/unknown_field_set.h>

#include <cstdio>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

namespace titans::proto {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::DescriptorPool;
using google::protobuf::DescriptorProto;
using google::protobuf::DynamicMessageFactory;
using google::protobuf::FieldDescriptor;
using google::protobuf::FieldDescriptorProto;
using google::protobuf::FileDescriptorProto;
using google::protobuf::Message;
using google::protobuf::Reflection;

void StringsToBytes(DescriptorProto* message) {
  // A map's key cannot be bytes: its entries become plain nested messages (the same wire form).
  if (message->has_options()) message->mutable_options()->clear_map_entry();
  for (FieldDescriptorProto& field : *message->mutable_field()) {
    if (field.type() == FieldDescriptorProto::TYPE_STRING) {
      field.set_type(FieldDescriptorProto::TYPE_BYTES);
    }
  }
  for (DescriptorProto& nested : *message->mutable_nested_type()) StringsToBytes(&nested);
}

// titans.proto again with every string field declared as bytes (the same wire format), so that
// a message with invalid UTF-8 still parses and the culprit can be named. Built once.
struct LenientSchema {
  DescriptorPool pool;
  std::unique_ptr<DynamicMessageFactory> factory;
};
const LenientSchema& Lenient() {
  static const LenientSchema* schema = [] {
    auto* s = new LenientSchema;
    FileDescriptorProto file;
    titans::v1::CreateSessionRequest::descriptor()->file()->CopyTo(&file);
    for (DescriptorProto& message : *file.mutable_message_type()) StringsToBytes(&message);
    if (s->pool.BuildFile(file) == nullptr) {
      std::fprintf(stderr, "request_traits: cannot build the lenient schema\n");
    }
    s->factory = std::make_unique<DynamicMessageFactory>(&s->pool);
    return s;
  }();
  return *schema;
}

bool ValidUtf8(const std::string& s) {
  // protobuf's own check: the one its parser applies to string fields.
  return google::protobuf::internal::IsStructurallyValidUTF8(s.data(), static_cast<int>(s.size()));
}

// The first field of `m` (parsed with the lenient schema) that `strict` declares as a string
// and that holds invalid UTF-8, as a path ("stop[1]", "labels.key"); empty if none.
std::string BadUtf8Field(const Message& m, const Descriptor& strict, const std::string& prefix) {
  const Reflection* r = m.GetReflection();
  std::vector<const FieldDescriptor*> fields;
  r->ListFields(m, &fields);
  for (const FieldDescriptor* f : fields) {
    const FieldDescriptor* sf = strict.FindFieldByNumber(f->number());
    if (sf == nullptr) continue;
    const std::string name = prefix + sf->name();
    if (sf->type() == FieldDescriptor::TYPE_STRING) {
      if (f->is_repeated()) {
        for (int i = 0; i < r->FieldSize(m, f); ++i) {
          if (!ValidUtf8(r->GetRepeatedString(m, f, i))) {
            return name + "[" + std::to_string(i) + "]";
          }
        }
      } else if (!ValidUtf8(r->GetString(m, f))) {
        return name;
      }
    } else if (sf->type() == FieldDescriptor::TYPE_MESSAGE) {
      const bool map = sf->is_map();
      if (f->is_repeated()) {
        for (int i = 0; i < r->FieldSize(m, f); ++i) {
          std::string bad = BadUtf8Field(r->GetRepeatedMessage(m, f, i), *sf->message_type(),
                                         map ? name + "." : name + "[" + std::to_string(i) + "].");
          if (!bad.empty()) return bad;
        }
      } else {
        std::string bad = BadUtf8Field(r->GetMessage(m, f), *sf->message_type(), name + ".");
        if (!bad.empty()) return bad;
      }
    }
  }
  return "";
}

// The unknown field that carries a parse error inside the emptied message: the highest field
// number protobuf allows, which titans.proto will never use. Its payload is the status code (one
// byte) followed by the message.
constexpr int kParseErrorField = 536870911;

grpc::Status Failed(Message* msg, const grpc::Status& st) {
  msg->Clear();
  std::string payload(1, static_cast<char>(st.error_code()));
  payload += st.error_message();
  msg->GetReflection()->MutableUnknownFields(msg)->AddLengthDelimited(kParseErrorField, payload);
  return grpc::Status::OK;
}

}  // namespace

grpc::Status RequestError(const Message& msg) {
  const google::protobuf::UnknownFieldSet& unknown = msg.GetReflection()->GetUnknownFields(msg);
  for (int i = 0; i < unknown.field_count(); ++i) {
    const google::protobuf::UnknownField& f = unknown.field(i);
    if (f.number() != kParseErrorField ||
        f.type() != google::protobuf::UnknownField::TYPE_LENGTH_DELIMITED ||
        f.length_delimited().empty()) {
      continue;
    }
    const std::string& payload = f.length_delimited();
    return grpc::Status(static_cast<grpc::StatusCode>(payload[0]), payload.substr(1));
  }
  return grpc::Status::OK;
}

grpc::Status ParseRequest(grpc::ByteBuffer* buffer, Message* msg) {
  std::vector<grpc::Slice> slices;
  if (!buffer->Dump(&slices).ok()) {
    return Failed(msg, grpc::Status(grpc::StatusCode::INTERNAL, "cannot read the request"));
  }
  std::string bytes;
  for (const grpc::Slice& s : slices)
    bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  buffer->Clear();
  if (msg->ParseFromString(bytes)) {
    google::protobuf::UnknownFieldSet* unknown = msg->GetReflection()->MutableUnknownFields(msg);
    if (!unknown->empty()) unknown->DeleteByNumber(kParseErrorField);  // never the client's
    return grpc::Status::OK;
  }
  const std::string type = msg->GetDescriptor()->name();
  const LenientSchema& lenient = Lenient();
  const Descriptor* d = lenient.pool.FindMessageTypeByName(msg->GetDescriptor()->full_name());
  if (d != nullptr) {
    std::unique_ptr<Message> m(lenient.factory->GetPrototype(d)->New());
    if (m->ParseFromString(bytes)) {
      const std::string bad = BadUtf8Field(*m, *msg->GetDescriptor(), "");
      if (!bad.empty()) {
        return Failed(
            msg, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, bad + " is not valid UTF-8"));
      }
    }
  }
  return Failed(msg, grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                                  "the request is not a valid titans.v1." + type + " message"));
}

grpc::Status ParseAnyMessage(grpc::ByteBuffer* buffer, grpc::protobuf::MessageLite* msg) {
  auto* full = dynamic_cast<Message*>(msg);
  if (full != nullptr && full->GetDescriptor()->file()->package() == "titans.v1") {
    return ParseRequest(buffer, full);
  }
  return grpc::GenericDeserialize<grpc::ProtoBufferReader, grpc::protobuf::MessageLite>(buffer,
                                                                                        msg);
}

}  // namespace titans::proto
