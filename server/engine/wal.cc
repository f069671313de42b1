#include "server/engine/wal.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "model/crc32c.h"
#include "model/status_macros.h"

namespace titans::engine {
namespace {

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

std::vector<std::pair<uint64_t, std::string>> Segments(const std::string& dir, Env* env) {
  std::vector<std::pair<uint64_t, std::string>> out;
  absl::StatusOr<std::vector<std::string>> names = env->ListDir(dir);
  if (!names.ok()) return out;
  for (const std::string& name : *names) {
    if (name.size() != 24 || name.substr(20) != ".wal") continue;
    if (name.find_first_not_of("0123456789") != 20) continue;
    out.emplace_back(std::stoull(name.substr(0, 20)), dir + "/" + name);
  }
  std::sort(out.begin(), out.end());
  return out;
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

absl::StatusOr<std::unique_ptr<Wal>> Wal::Open(const std::string& dir, Env* env) {
  absl::Status created = env->CreateDirs(dir);
  if (!created.ok()) {
    return absl::UnavailableError(
        absl::StrCat("cannot create the log directory: ", created.message()));
  }
  auto segments = Segments(dir, env);
  const uint64_t next = segments.empty() ? 1 : segments.back().first + 1;
  auto wal = std::unique_ptr<Wal>(new Wal(dir, next, env));
  absl::Status st = wal->OpenSegment();
  if (!st.ok()) return st;
  return wal;
}

absl::Status Wal::OpenSegment() {
  file_.reset();
  const std::string path = absl::StrFormat("%s/%020u.wal", dir_, sequence_);
  TITANS_ASSIGN_OR_RETURN(file_, env_->NewWritableFile(path));
  durable_size_ = 0;
  // Make the new file's directory entry durable too.
  return env_->SyncDir(dir_);
}

absl::Status Wal::Append(const WalRecord& record) {
  buffer_ += EncodeWalRecord(record);
  return absl::OkStatus();
}

absl::Status Wal::Sync() {
  if (buffer_.empty()) return absl::OkStatus();
  if (!file_) return absl::UnavailableError("the log has no open segment");
  absl::Status st = file_->Append(buffer_);
  if (st.ok()) st = file_->Sync();
  if (!st.ok()) {
    // Cut the partial write so that no unacknowledged record can be replayed.
    (void)file_->Truncate(durable_size_);
    buffer_.clear();
    // A full disk stays RESOURCE_EXHAUSTED; any other failure is worth retrying elsewhere.
    const absl::StatusCode code = st.code() == absl::StatusCode::kResourceExhausted
                                      ? st.code()
                                      : absl::StatusCode::kUnavailable;
    return absl::Status(code, absl::StrCat("log write failed: ", st.message()));
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

std::vector<WalRecord> Wal::ReadAll(const std::string& dir, std::vector<std::string>* warnings,
                                    Env* env) {
  std::vector<WalRecord> out;
  for (const auto& [seq, path] : Segments(dir, env)) {
    auto data = env->ReadFile(path);
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
  for (const auto& [seq, path] : Segments(dir_, env_)) {
    if (seq < sequence_) (void)env_->RemoveFile(path);
  }
  bytes_since_drop_ = 0;
  return absl::OkStatus();
}

}  // namespace titans::engine
