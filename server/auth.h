// Bearer-token authentication: tokens map to principals. Sessions belong to the principal that
// created them; others get NOT_FOUND. With no tokens configured, authentication is off and every
// caller is the anonymous principal "".
//
// Token sources: a file of lines "<token> <principal>" ('#' comments), and/or the environment
// variable TITANS_AUTH_TOKENS="<token>=<principal>,...". Thread-safe after construction.
#ifndef TITANS_SERVER_AUTH_H_
#define TITANS_SERVER_AUTH_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"

namespace titans::server {

class Authenticator {
 public:
  // INVALID_ARGUMENT for a malformed file or variable, NOT_FOUND for a missing file.
  static absl::StatusOr<Authenticator> Load(const std::string& tokens_file, const char* env_value);
  bool enabled() const { return !principals_.empty(); }
  // The principal for an "authorization" metadata value ("Bearer <token>"); UNAUTHENTICATED
  // when authentication is on and the value is missing or unknown.
  absl::StatusOr<std::string> Authenticate(const std::string* authorization) const;

 private:
  std::map<std::string, std::string> principals_;  // token -> principal
};

}  // namespace titans::server

#endif  // TITANS_SERVER_AUTH_H_
