// Command-line helpers shared by the project's programs (header-only; Abseil flags).
#ifndef TITANS_TOOLS_PROGRAM_FLAGS_H_
#define TITANS_TOOLS_PROGRAM_FLAGS_H_

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

#endif  // TITANS_TOOLS_PROGRAM_FLAGS_H_
