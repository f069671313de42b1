#include "server/auth.h"

#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "model/file_util.h"
#include "server/engine/engine.h"

namespace titans::server {

absl::StatusOr<Authenticator> Authenticator::Load(const std::string& tokens_file,
                                                  const char* env_value) {
  Authenticator auth;
  auto add = [&](absl::string_view token, absl::string_view principal) -> absl::Status {
    if (token.size() < 8 || principal.empty()) {
      return absl::InvalidArgumentError(
          "auth tokens need at least 8 characters and a non-empty principal");
    }
    // Principals name storage (session ids are scoped by them), so they obey its naming rule.
    if (absl::Status st = engine::ValidatePrincipal(std::string(principal)); !st.ok()) return st;
    auth.principals_[std::string(token)] = std::string(principal);
    return absl::OkStatus();
  };
  if (!tokens_file.empty()) {
    auto text = ReadFileToString(tokens_file);
    if (!text.ok()) return text.status();
    for (absl::string_view line : absl::StrSplit(*text, '\n')) {
      line = absl::StripAsciiWhitespace(line);
      if (line.empty() || line[0] == '#') continue;
      std::vector<absl::string_view> parts =
          absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
      if (parts.size() != 2) {
        return absl::InvalidArgumentError("auth tokens file: expected '<token> <principal>'");
      }
      if (absl::Status st = add(parts[0], parts[1]); !st.ok()) return st;
    }
  }
  if (env_value != nullptr && *env_value != '\0') {
    for (absl::string_view pair : absl::StrSplit(env_value, ',', absl::SkipEmpty())) {
      std::vector<absl::string_view> kv = absl::StrSplit(pair, absl::MaxSplits('=', 1));
      if (kv.size() != 2) {
        return absl::InvalidArgumentError("TITANS_AUTH_TOKENS: expected token=principal,...");
      }
      if (absl::Status st = add(kv[0], kv[1]); !st.ok()) return st;
    }
  }
  return auth;
}

absl::StatusOr<std::string> Authenticator::Authenticate(const std::string* authorization) const {
  if (!enabled()) return std::string();
  if (authorization == nullptr) {
    return absl::UnauthenticatedError("missing 'authorization: Bearer <token>' metadata");
  }
  absl::string_view value = *authorization;
  if (!absl::ConsumePrefix(&value, "Bearer ")) {
    return absl::UnauthenticatedError("authorization must be 'Bearer <token>'");
  }
  auto it = principals_.find(std::string(value));
  if (it == principals_.end()) return absl::UnauthenticatedError("unknown bearer token");
  return it->second;
}

}  // namespace titans::server
