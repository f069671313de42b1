// Command-line helpers shared by the server and the tools (header-only; Abseil flags). It lives in
// model/, the base every program depends on, so that server/ need not depend on tools/.
#ifndef TITANS_MODEL_PROGRAM_FLAGS_H_
#define TITANS_MODEL_PROGRAM_FLAGS_H_

#include <string>

#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "model/version.h"

namespace titans {

// Makes --help list the program's own flags (Abseil's default lists only flags defined in a
// file named like the binary, which ours are not), and --version print "<program> <version>"
// (the repository's VERSION).
inline void ShowOwnFlagsInHelp(const char* program) {
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view path) {
    return !absl::StrContains(path, "absl/");
  };
  usage.version_string = [program] { return std::string(program) + " " + ProjectVersion() + "\n"; };
  absl::SetFlagsUsageConfig(usage);
}

}  // namespace titans

#endif  // TITANS_MODEL_PROGRAM_FLAGS_H_
