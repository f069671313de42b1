#include "server/engine/wal.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/crc32c.h"
#include "model/file_util.h"

namespace titans::engine {
namespace {

namespace fs = std::filesystem;

constexpr uint32_t kMaxPayload = 1u << 30;

template <typename T>
void Put(std::string* out, T v) {
  out->append(reinterpret_cast<const char*>(&v), sizeof(v));
}

template <typename T>
bool Get(std::string_view* in, T* v) {
  if (in->size() < sizeof(T)) return false;
  std::memcpy(v, in->data(), sizeof(T));
  in->remove_prefix(sizeof(T));
  return true;
}

std::vector<std::pair<uint64_t, std::string>> Segments(const std::string& dir) {
  std::vector<std::pair<uint64_t, std::string>> out;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const std::string name = entry.path().filename().string();
    if (name.size() != 24 || name.substr(20) != ".wal") continue;
    out.emplace_back(std::stoull(name.substr(0, 20)), entry.path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

absl::Status Errno(const std::string& what) {
  const int e = errno;
  const std::string msg = absl::StrCat(what, ": ", std::strerror(e));
  if (e == ENOSPC || e == EDQUOT) return absl::ResourceExhaustedError(msg);
  return absl::UnavailableError(msg);
}

}  // namespace

std::string EncodeWalRecord(const WalRecord& r) {
  std::string p;
  Put<uint16_t>(&p, static_cast<uint16_t>(r.session_id.size()));
  p += r.session_id;
  Put<int64_t>(&p, r.position_before);
  Put<int64_t>(&p, r.epoch);
  Put<uint32_t>(&p, static_cast<uint32_t>(r.tokens.size()));
  for (int32_t t : r.tokens) Put<int32_t>(&p, t);
  Put<uint32_t>(&p, static_cast<uint32_t>(r.pieces.size()));
  for (int32_t n : r.pieces) Put<int32_t>(&p, n);
  Put<uint8_t>(&p, r.has_rng ? 1 : 0);
  if (r.has_rng) {
    for (uint64_t w : r.rng) Put<uint64_t>(&p, w);
  }
  std::string framed;
  Put<uint32_t>(&framed, static_cast<uint32_t>(p.size()));
  Put<uint32_t>(&framed, Crc32c(p.data(), p.size()));
  return framed + p;
}

absl::StatusOr<WalRecord> DecodeWalPayload(std::string_view in) {
  WalRecord r;
  uint16_t id_len;
  uint32_t n;
  uint8_t has_rng;
  auto bad = [] { return absl::InvalidArgumentError("malformed log record"); };
  if (!Get(&in, &id_len) || in.size() < id_len) return bad();
  r.session_id.assign(in.data(), id_len);
  in.remove_prefix(id_len);
  if (!Get(&in, &r.position_before) || r.position_before < 0 || !Get(&in, &r.epoch) ||
      r.epoch < 0 || !Get(&in, &n) || in.size() < uint64_t{n} * 4) {
    return bad();
  }
  r.tokens.resize(n);
  for (uint32_t i = 0; i < n; ++i) Get(&in, &r.tokens[i]);
  if (!Get(&in, &n) || in.size() < uint64_t{n} * 4) return bad();
  r.pieces.resize(n);
  int64_t total = 0;
  for (uint32_t i = 0; i < n; ++i) {
    Get(&in, &r.pieces[i]);
    if (r.pieces[i] <= 0) return bad();
    total += r.pieces[i];
  }
  if (total != static_cast<int64_t>(r.tokens.size())) return bad();
  if (!Get(&in, &has_rng) || has_rng > 1) return bad();
  r.has_rng = has_rng == 1;
  if (r.has_rng) {
    for (uint64_t& w : r.rng) {
      if (!Get(&in, &w)) return bad();
    }
  }
  if (!in.empty()) return bad();
  return r;
}

absl::StatusOr<std::unique_ptr<Wal>> Wal::Open(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::UnavailableError("cannot create log directory " + dir + ": " + ec.message());
  auto segments = Segments(dir);
  const uint64_t next = segments.empty() ? 1 : segments.back().first + 1;
  auto wal = std::unique_ptr<Wal>(new Wal(dir, next));
  absl::Status st = wal->OpenSegment();
  if (!st.ok()) return st;
  return wal;
}

Wal::~Wal() {
  if (fd_ >= 0) ::close(fd_);
}

absl::Status Wal::OpenSegment() {
  if (fd_ >= 0) ::close(fd_);
  const std::string path = absl::StrFormat("%s/%020u.wal", dir_, sequence_);
  fd_ = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd_ < 0) return Errno("cannot open " + path);
  durable_size_ = 0;
  // Make the new file's directory entry durable too.
  const int dfd = ::open(dir_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    ::fsync(dfd);
    ::close(dfd);
  }
  return absl::OkStatus();
}

absl::Status Wal::Append(const WalRecord& record) {
  buffer_ += EncodeWalRecord(record);
  return absl::OkStatus();
}

absl::Status Wal::Sync() {
  if (buffer_.empty()) return absl::OkStatus();
  size_t written = 0;
  absl::Status st;
  while (written < buffer_.size()) {
    const ssize_t n = ::write(fd_, buffer_.data() + written, buffer_.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      st = Errno("log write failed");
      break;
    }
    written += static_cast<size_t>(n);
  }
  if (st.ok() && ::fdatasync(fd_) != 0) st = Errno("log fdatasync failed");
  if (!st.ok()) {
    // Cut the partial write so that no unacknowledged record can be replayed.
    if (::ftruncate(fd_, durable_size_) == 0) ::lseek(fd_, durable_size_, SEEK_SET);
    buffer_.clear();
    return st;
  }
  durable_size_ += static_cast<int64_t>(buffer_.size());
  bytes_since_drop_ += static_cast<int64_t>(buffer_.size());
  bytes_total_ += static_cast<int64_t>(buffer_.size());
  buffer_.clear();
  return absl::OkStatus();
}

std::string ParseWalSegment(std::string_view in, std::vector<WalRecord>* out) {
  while (!in.empty()) {
    uint32_t len, crc;
    std::string_view frame = in;
    if (!Get(&frame, &len) || !Get(&frame, &crc) || len > kMaxPayload || frame.size() < len) {
      return absl::StrCat("torn tail of ", in.size(), " bytes cut");
    }
    std::string_view payload = frame.substr(0, len);
    if (Crc32c(payload.data(), payload.size()) != crc) {
      return absl::StrCat("checksum mismatch; the rest of the segment (", in.size(),
                          " bytes) is ignored");
    }
    auto record = DecodeWalPayload(payload);
    if (!record.ok()) return std::string(record.status().message());
    out->push_back(std::move(*record));
    in.remove_prefix(8 + len);
  }
  return "";
}

std::vector<WalRecord> Wal::ReadAll(const std::string& dir, std::vector<std::string>* warnings) {
  std::vector<WalRecord> out;
  for (const auto& [seq, path] : Segments(dir)) {
    auto data = ReadFileToString(path);
    if (!data.ok()) {
      warnings->push_back(std::string(data.status().message()));
      continue;
    }
    const std::string warning = ParseWalSegment(*data, &out);
    if (!warning.empty()) warnings->push_back(absl::StrCat(path, ": ", warning));
  }
  return out;
}

absl::Status Wal::DropOldSegments() {
  ++sequence_;
  absl::Status st = OpenSegment();
  if (!st.ok()) return st;
  for (const auto& [seq, path] : Segments(dir_)) {
    if (seq < sequence_) {
      std::error_code ec;
      fs::remove(path, ec);
    }
  }
  bytes_since_drop_ = 0;
  return absl::OkStatus();
}

}  // namespace titans::engine
