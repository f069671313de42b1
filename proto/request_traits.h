// How the server reads titans.v1 requests off the wire. proto3 `string` fields must hold UTF-8,
// and protobuf's parser fails a message that breaks this, which gRPC answers with INTERNAL and an
// empty message before any handler runs. These specialisations of grpc::SerializationTraits
// parse as usual and, only when that fails, find out why: INVALID_ARGUMENT naming the field
// ("labels.key is not valid UTF-8"), or "request is not a valid <Type>" for bytes that are no
// message at all (the handler returns it: see ParseRequest). Serialisation is unchanged.
//
// This header is force-included (-include) into every translation unit that uses the generated
// code (proto/CMakeLists.txt), so that every instantiation sees the same specialisation.
#ifndef TITANS_PROTO_REQUEST_TRAITS_H_
#define TITANS_PROTO_REQUEST_TRAITS_H_

#include <grpcpp/impl/codegen/proto_utils.h>

#include "titans/v1/titans.pb.h"

namespace titans::proto {

// Parses the buffer into *msg (clearing the buffer, as gRPC's own deserialiser does). Always
// returns OK: a request that does not parse becomes an empty message carrying its error
// (RequestError), because gRPC's callback API answers a failed deserialisation with UNIMPLEMENTED
// and an empty message before any handler runs, and a streaming Read could not tell it from the
// end of the stream. Every handler checks RequestError first.
grpc::Status ParseRequest(grpc::ByteBuffer* buffer, google::protobuf::Message* msg);
// Why `msg` did not parse (INVALID_ARGUMENT naming the field or the type, or INTERNAL), or OK if
// it did. A client cannot forge one: ParseRequest strips the field that carries it from every
// message that parses.
grpc::Status RequestError(const google::protobuf::Message& msg);
// The same for a titans.v1 message seen through its base class (gRPC's generated unary handlers
// deserialise through SerializationTraits<MessageLite>); any other message is parsed exactly as
// gRPC's default does.
grpc::Status ParseAnyMessage(grpc::ByteBuffer* buffer, grpc::protobuf::MessageLite* msg);

}  // namespace titans::proto

#define TITANS_REQUEST_TRAITS(Type)                                                        \
  template <>                                                                              \
  class SerializationTraits<::titans::v1::Type, void> {                                    \
   public:                                                                                 \
    static Status Serialize(const grpc::protobuf::MessageLite& msg, ByteBuffer* bb,        \
                            bool* own_buffer) {                                            \
      return GenericSerialize<ProtoBufferWriter, ::titans::v1::Type>(msg, bb, own_buffer); \
    }                                                                                      \
    static Status Deserialize(ByteBuffer* buffer, grpc::protobuf::MessageLite* msg) {      \
      return ::titans::proto::ParseRequest(buffer, static_cast<::titans::v1::Type*>(msg)); \
    }                                                                                      \
  };

namespace grpc {
template <>
class SerializationTraits<grpc::protobuf::MessageLite, void> {
 public:
  static Status Serialize(const grpc::protobuf::MessageLite& msg, ByteBuffer* bb,
                          bool* own_buffer) {
    return GenericSerialize<ProtoBufferWriter, grpc::protobuf::MessageLite>(msg, bb, own_buffer);
  }
  static Status Deserialize(ByteBuffer* buffer, grpc::protobuf::MessageLite* msg) {
    return ::titans::proto::ParseAnyMessage(buffer, msg);
  }
};
TITANS_REQUEST_TRAITS(AppendRequest)
TITANS_REQUEST_TRAITS(CloseSessionRequest)
TITANS_REQUEST_TRAITS(CreateSessionRequest)
TITANS_REQUEST_TRAITS(ExportSessionRequest)
TITANS_REQUEST_TRAITS(ForkSessionRequest)
TITANS_REQUEST_TRAITS(GenerateRequest)
TITANS_REQUEST_TRAITS(GetModelRequest)
TITANS_REQUEST_TRAITS(GetSessionRequest)
TITANS_REQUEST_TRAITS(ImportSessionRequest)
TITANS_REQUEST_TRAITS(ListModelsRequest)
TITANS_REQUEST_TRAITS(ListSessionsRequest)
TITANS_REQUEST_TRAITS(RewindSessionRequest)
TITANS_REQUEST_TRAITS(ScoreRequest)
TITANS_REQUEST_TRAITS(StreamRequest)
}  // namespace grpc

#undef TITANS_REQUEST_TRAITS

#endif  // TITANS_PROTO_REQUEST_TRAITS_H_
