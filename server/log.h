// Structured logs on stderr: one line per event, text ("ts level event k=v ...") or JSON lines
// ({"ts":...,"level":...,"event":...,"k":"v"}). Request and session ids go in as fields. Events
// per token are never logged; per-RPC lines are at debug level (errors at warning).
// Thread-safe.
#ifndef TITANS_SERVER_LOG_H_
#define TITANS_SERVER_LOG_H_

#include <initializer_list>
#include <string>
#include <string_view>
#include <utility>

#include "absl/status/statusor.h"

namespace titans::server {

enum class LogLevel { kDebug = 0, kInfo = 1, kWarning = 2, kError = 3 };

// "debug", "info", "warning", "error"; INVALID_ARGUMENT otherwise.
absl::StatusOr<LogLevel> ParseLogLevel(std::string_view name);
void ConfigureLogging(LogLevel min_level, bool json);
bool LogEnabled(LogLevel level);

using LogField = std::pair<std::string_view, std::string>;
void Log(LogLevel level, std::string_view event, std::initializer_list<LogField> fields = {});

}  // namespace titans::server

#endif  // TITANS_SERVER_LOG_H_
