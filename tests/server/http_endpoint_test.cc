// The metrics / health endpoint under hostile clients: a client that trickles a byte at a time
// and a dozen silent connections do not keep /healthz from answering; silent connections are
// closed by the server; connections beyond the cap are refused; routes and methods answer as
// documented.
#include "server/http_endpoint.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <string>
#include <thread>
#include <vector>

namespace titans::server {
namespace {

int Connect(int port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  ::inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    ::close(fd);
    return -1;
  }
  timeval timeout{30, 0};  // a bound for a broken server, not a measurement
  ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof(timeout));
  return fd;
}

// Sends `request` on a new connection and returns everything the server answers.
std::string Fetch(int port, const std::string& request) {
  const int fd = Connect(port);
  if (fd < 0) return "";
  ::send(fd, request.data(), request.size(), MSG_NOSIGNAL);
  std::string out;
  char buf[4096];
  ssize_t n;
  while ((n = ::recv(fd, buf, sizeof(buf), 0)) > 0) out.append(buf, static_cast<size_t>(n));
  ::close(fd);
  return out;
}

std::string Get(int port, const std::string& path) {
  return Fetch(port, "GET " + path + " HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
}

class HttpEndpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_TRUE(endpoint_.Start("127.0.0.1", 0).ok());
    port_ = endpoint_.port();
    ASSERT_GT(port_, 0);
  }
  std::atomic<bool> healthy_{true};
  HttpEndpoint endpoint_{[] { return std::string("titans_up 1\n"); },
                         [this] { return healthy_.load(); }};
  int port_ = 0;
};

TEST_F(HttpEndpointTest, RoutesAndMethods) {
  std::string r = Get(port_, "/metrics");
  EXPECT_EQ(r.rfind("HTTP/1.1 200", 0), 0u) << r;
  EXPECT_NE(r.find("text/plain; version=0.0.4"), std::string::npos);
  EXPECT_NE(r.find("titans_up 1"), std::string::npos);
  EXPECT_NE(Get(port_, "/healthz").find("\r\n\r\nok\n"), std::string::npos);
  healthy_ = false;
  EXPECT_EQ(Get(port_, "/healthz").rfind("HTTP/1.1 503", 0), 0u);
  EXPECT_EQ(Get(port_, "/nope").rfind("HTTP/1.1 404", 0), 0u);
  const std::string post =
      Fetch(port_, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
  EXPECT_EQ(post.rfind("HTTP/1.1 405", 0), 0u) << post;
  const std::string garbage = Fetch(port_, "garbage\r\n\r\n");  // refused or closed
  EXPECT_TRUE(garbage.empty() || garbage.rfind("HTTP/1.1 400", 0) == 0) << garbage;
  EXPECT_EQ(Get(port_, "/metrics").rfind("HTTP/1.1 200", 0), 0u);
}

TEST_F(HttpEndpointTest, SlowAndSilentClientsDoNotBlockHealthChecks) {
  std::vector<int> silent;
  for (int i = 0; i < 12; ++i) silent.push_back(Connect(port_));
  std::atomic<bool> stop{false};
  std::thread trickle([&] {  // a request that never ends, one byte every 100 ms
    const int fd = Connect(port_);
    const std::string request = "GET /metrics HTTP/1.1\r\nX-Slow: ";
    for (size_t i = 0; !stop && fd >= 0; ++i) {
      const char c = i < request.size() ? request[i] : 'a';
      if (::send(fd, &c, 1, MSG_NOSIGNAL) != 1) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (fd >= 0) ::close(fd);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  // The old one-connection-at-a-time endpoint answered this only after the trickle ended.
  const std::string health = Get(port_, "/healthz");
  EXPECT_EQ(health.rfind("HTTP/1.1 200", 0), 0u) << health;
  stop = true;
  trickle.join();
  // Silent connections are closed by the server after its idle timeout (recv sees the end).
  char c;
  EXPECT_EQ(::recv(silent[0], &c, 1, 0), 0) << "a silent connection must be closed";
  for (int fd : silent) ::close(fd);
}

// While kMaxConnections connections are open, a further one is not served (it waits, or is
// refused); once they are gone it is served.
TEST_F(HttpEndpointTest, ConnectionsBeyondTheCapAreNotServed) {
  std::vector<int> held;
  for (int i = 0; i < HttpEndpoint::kMaxConnections; ++i) held.push_back(Connect(port_));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // let the server accept them
  const int extra = Connect(port_);
  ASSERT_GE(extra, 0);
  const std::string request = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  ::send(extra, request.data(), request.size(), MSG_NOSIGNAL);
  timeval quick{1, 0};  // well below the 5 s idle timeout that would free the held slots
  ::setsockopt(extra, SOL_SOCKET, SO_RCVTIMEO, &quick, sizeof(quick));
  char buf[256];
  const ssize_t early = ::recv(extra, buf, sizeof(buf), 0);
  EXPECT_TRUE(early == 0 || (early < 0 && (errno == EAGAIN || errno == ECONNRESET)))
      << "served past the connection cap";
  for (int fd : held) {
    if (fd >= 0) ::close(fd);
  }
  ::close(extra);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  EXPECT_EQ(Get(port_, "/healthz").rfind("HTTP/1.1 200", 0), 0u);
}

}  // namespace
}  // namespace titans::server
