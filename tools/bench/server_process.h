// A titans-server child process for titans-bench: started on a free loopback port, waited for
// until it serves, measured (resident memory from /proc), and stopped with SIGTERM.
//
// Thread-compatible; one object per child.
#ifndef TITANS_TOOLS_BENCH_SERVER_PROCESS_H_
#define TITANS_TOOLS_BENCH_SERVER_PROCESS_H_

#include <sys/types.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace titans::bench {

// Resident and peak resident memory of process `pid` in bytes, and its thread count (from
// /proc/PID/status); NOT_FOUND if the process is gone.
struct ProcessStatus {
  int64_t rss = 0, peak = 0;
  int threads = 0;
};
absl::StatusOr<ProcessStatus> ReadProcessStatus(pid_t pid);

// CPU time (user + system, all threads) process `pid` has used so far, in seconds (from
// /proc/PID/stat; 0 for this process); NOT_FOUND if the process is gone.
absl::StatusOr<double> ReadCpuSeconds(pid_t pid);

class ServerProcess {
 public:
  // Starts `binary` with --host 127.0.0.1 --port P --metrics_port 0 plus `flags`, and waits up
  // to `timeout_seconds` for it to answer gRPC. The child's output goes to `log_path`.
  static absl::StatusOr<ServerProcess> Start(const std::string& binary,
                                             const std::vector<std::string>& flags,
                                             const std::string& log_path, double timeout_seconds);
  ServerProcess(ServerProcess&& other) noexcept;
  ServerProcess& operator=(ServerProcess&&) = delete;
  ~ServerProcess();  // Stop()s a running child

  const std::string& address() const { return address_; }
  pid_t pid() const { return pid_; }
  // SIGTERM, then waits for the exit; returns its exit status (128 + signal if killed).
  int Stop();

 private:
  ServerProcess() = default;
  pid_t pid_ = -1;
  std::string address_;
};

}  // namespace titans::bench

#endif  // TITANS_TOOLS_BENCH_SERVER_PROCESS_H_
