// A private redis-server (Debian's) on an ephemeral port for one test, with the durability the
// engine's sync mode asks for (appendonly, appendfsync always). Stopped when the fixture is.
#ifndef TITANS_TESTS_SERVER_REDIS_FIXTURE_H_
#define TITANS_TESTS_SERVER_REDIS_FIXTURE_H_

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>
#include <vector>

namespace titans::testing {

class RedisServer {
 public:
  // Starts redis-server with its files in `dir`; port() is 0 if it could not be started.
  explicit RedisServer(const std::string& dir) {
    port_ = FreePort();
    const std::string port = std::to_string(port_);
    std::vector<std::string> args = {"/usr/bin/redis-server",
                                     "--port",
                                     port,
                                     "--bind",
                                     "127.0.0.1",
                                     "--dir",
                                     dir,
                                     "--save",
                                     "",
                                     "--appendonly",
                                     "yes",
                                     "--appendfsync",
                                     "always",
                                     "--logfile",
                                     dir + "/redis.log"};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_ = ::fork();
    if (pid_ == 0) {
      // The child: dies with the test process (even one killed by a sanitizer), quietly.
      ::prctl(PR_SET_PDEATHSIG, SIGKILL);
      const int devnull = ::open("/dev/null", O_RDWR);
      ::dup2(devnull, 0);
      ::dup2(devnull, 1);
      ::dup2(devnull, 2);
      ::execv(argv[0], argv.data());
      ::_exit(127);
    }
    if (pid_ < 0) {
      port_ = 0;
      return;
    }
    for (int i = 0; i < 200 && !Listening(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(25));
    }
    if (!Listening()) port_ = 0;
  }
  ~RedisServer() {
    if (pid_ > 0) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
  }
  int port() const { return port_; }
  std::string spec(const std::string& prefix = "titans") const {
    return "redis://127.0.0.1:" + std::to_string(port_) + "/" + prefix;
  }

 private:
  static int FreePort() {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    ::close(fd);
    return ntohs(addr.sin_port);
  }
  bool Listening() const {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port_));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
    ::close(fd);
    return ok;
  }

  pid_t pid_ = -1;
  int port_ = 0;
};

}  // namespace titans::testing

#endif  // TITANS_TESTS_SERVER_REDIS_FIXTURE_H_
