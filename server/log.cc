#include "server/log.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>
#include <mutex>

#include "absl/strings/str_cat.h"

namespace titans::server {
namespace {

std::atomic<int> min_level{static_cast<int>(LogLevel::kInfo)};
std::atomic<bool> json_lines{false};
std::mutex write_mu;

const char* Name(LogLevel level) {
  switch (level) {
    case LogLevel::kDebug:
      return "debug";
    case LogLevel::kInfo:
      return "info";
    case LogLevel::kWarning:
      return "warning";
    case LogLevel::kError:
      return "error";
  }
  return "info";
}

std::string JsonEscape(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          out += buf;
        } else {
          out += c;
        }
    }
  }
  return out;
}

// A field value as written: at most kMaxValueBytes of it (a client can send megabyte-long ids;
// a log line must stay a line), with a "...(N bytes)" tail when cut. In text lines, control
// bytes are written as \xNN so that no value can start a new line or forge fields.
constexpr size_t kMaxValueBytes = 256;
std::string Bounded(std::string_view v, bool escape_controls) {
  size_t n = std::min(v.size(), kMaxValueBytes);
  while (n < v.size() && n > 0 && (static_cast<unsigned char>(v[n]) & 0xc0) == 0x80) --n;
  std::string out;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(v[i]);
    if (escape_controls && (c < 0x20 || c == 0x7f)) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02x", c);
      out += buf;
    } else {
      out += static_cast<char>(c);
    }
  }
  if (n < v.size()) absl::StrAppend(&out, "...(", v.size(), " bytes)");
  return out;
}

std::string Timestamp() {
  const auto now = std::chrono::system_clock::now();
  const std::time_t t = std::chrono::system_clock::to_time_t(now);
  const int ms = static_cast<int>(
      std::chrono::duration_cast<std::chrono::milliseconds>(now.time_since_epoch()).count() % 1000);
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[64];
  std::snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, ms);
  return buf;
}

}  // namespace

absl::StatusOr<LogLevel> ParseLogLevel(std::string_view name) {
  for (LogLevel l : {LogLevel::kDebug, LogLevel::kInfo, LogLevel::kWarning, LogLevel::kError}) {
    if (name == Name(l)) return l;
  }
  return absl::InvalidArgumentError(absl::StrCat(
      "log level must be debug, info, warning or error, got '", std::string(name), "'"));
}

void ConfigureLogging(LogLevel level, bool json) {
  min_level = static_cast<int>(level);
  json_lines = json;
}

bool LogEnabled(LogLevel level) { return static_cast<int>(level) >= min_level.load(); }

void Log(LogLevel level, std::string_view event, std::initializer_list<LogField> fields) {
  if (!LogEnabled(level)) return;
  std::string line;
  if (json_lines) {
    line = absl::StrCat("{\"ts\":\"", Timestamp(), "\",\"level\":\"", Name(level),
                        "\",\"event\":\"", JsonEscape(event), "\"");
    for (const auto& [k, v] : fields) {
      absl::StrAppend(&line, ",\"", JsonEscape(k), "\":\"", JsonEscape(Bounded(v, false)), "\"");
    }
    line += "}\n";
  } else {
    line = absl::StrCat(Timestamp(), " ", Name(level), " ", std::string(event));
    for (const auto& [k, v] : fields) {
      absl::StrAppend(&line, " ", std::string(k), "=", Bounded(v, true));
    }
    line += "\n";
  }
  std::lock_guard<std::mutex> lock(write_mu);
  std::fwrite(line.data(), 1, line.size(), stderr);
  std::fflush(stderr);
}

}  // namespace titans::server
