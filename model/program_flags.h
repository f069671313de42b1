// Command-line helpers shared by the server and the tools (header-only; Abseil flags). It lives in
// model/, the base every program depends on, so that server/ need not depend on tools/.
#ifndef TITANS_MODEL_PROGRAM_FLAGS_H_
#define TITANS_MODEL_PROGRAM_FLAGS_H_

#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"

namespace titans {

// Makes --help list the program's own flags (Abseil's default lists only flags defined in a
// file named like the binary, which ours are not).
inline void ShowOwnFlagsInHelp() {
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = [](absl::string_view path) {
    return !absl::StrContains(path, "absl/");
  };
  absl::SetFlagsUsageConfig(usage);
}

}  // namespace titans

#endif  // TITANS_MODEL_PROGRAM_FLAGS_H_
