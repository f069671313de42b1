// FaultInjectionEnv: an Env over the real file system that fails on demand, for storage tests
// without root, mounts or sleeps (LevelDB's FaultInjectionTestEnv is the model).
//   - a full disk: writes fail with RESOURCE_EXHAUSTED (ENOSPC) once `free_bytes` are used up,
//     after writing the part that fits, as a real short write does;
//   - failing fdatasync / directory fsync, rename, file creation: INTERNAL (EIO);
//   - a crash image: a copy of a directory as it would be after power loss, each file written
//     through this Env cut back to what was synced, plus `torn_bytes` of what was not (a torn
//     write);
//   - a wall clock that can jump forwards or backwards.
// Faults apply to paths containing `path_filter` (empty: every path). Thread-safe.
#ifndef TITANS_TESTS_SERVER_ENGINE_FAULT_INJECTION_ENV_H_
#define TITANS_TESTS_SERVER_ENGINE_FAULT_INJECTION_ENV_H_

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <filesystem>
#include <map>
#include <optional>

#include "absl/strings/match.h"
#include "model/file_util.h"
#include "model/mutex.h"
#include "server/engine/env.h"

namespace titans::testing {

class FaultInjectionEnv : public engine::Env {
 public:
  explicit FaultInjectionEnv(engine::Env* base = engine::Env::Default()) : base_(base) {}

  // ---- Faults ---------------------------------------------------------------------------------
  void SetPathFilter(std::string filter) {
    MutexLock lock(&mu_);
    filter_ = std::move(filter);
  }
  // A disk with `bytes` left (nullopt: unlimited). Removing files does not give space back.
  void SetFreeBytes(std::optional<int64_t> bytes) {
    MutexLock lock(&mu_);
    free_bytes_ = bytes;
  }
  void FailSyncs(bool fail) { fail_syncs_ = fail; }
  void FailRenames(bool fail) { fail_renames_ = fail; }
  void FailCreates(bool fail) { fail_creates_ = fail; }
  void ClearFaults() {
    SetFreeBytes(std::nullopt);
    FailSyncs(false);
    FailRenames(false);
    FailCreates(false);
  }
  // The wall clock jumps by `ms` (negative: backwards).
  void JumpClock(int64_t ms) { clock_offset_ms_ += ms; }

  int64_t failed_calls() const { return failed_calls_; }

  // Copies directory `from` to `to` as a crash would leave it: every file written through this
  // Env keeps what was synced plus at most `torn_bytes` of what was not.
  void CrashImage(const std::string& from, const std::string& to, int64_t torn_bytes) {
    namespace fs = std::filesystem;
    fs::copy(from, to, fs::copy_options::recursive);
    MutexLock lock(&mu_);
    for (const auto& [path, file] : files_) {
      if (!absl::StartsWith(path, from + "/")) continue;
      const std::string copy = to + path.substr(from.size());
      if (!fs::exists(copy)) continue;
      const int64_t keep = std::min(file.size, file.synced + torn_bytes);
      fs::resize_file(copy, static_cast<uintmax_t>(keep));
    }
  }

  // The next fdatasync of a matching file fails, and at that moment (its data written, not yet
  // durable) CrashImage(from, to, torn_bytes) is taken: a crash in the middle of a commit.
  void CrashAtNextSync(std::string from, std::string to, int64_t torn_bytes) {
    MutexLock lock(&mu_);
    crash_ = Crash{std::move(from), std::move(to), torn_bytes};
  }

  // ---- Env ------------------------------------------------------------------------------------
  absl::StatusOr<std::unique_ptr<engine::WritableFile>> NewWritableFile(
      const std::string& path) override {
    if (fail_creates_ && Applies(path)) return Injected("cannot open", path);
    auto file = base_->NewWritableFile(path);
    if (!file.ok()) return file.status();
    {
      MutexLock lock(&mu_);
      files_[path] = FileState{};
    }
    return std::unique_ptr<engine::WritableFile>(new File(this, path, std::move(*file)));
  }
  absl::StatusOr<std::string> ReadFile(const std::string& path) override {
    return base_->ReadFile(path);
  }
  absl::Status RenameFile(const std::string& from, const std::string& to) override {
    if (fail_renames_ && Applies(to)) return Injected("cannot rename", from);
    absl::Status st = base_->RenameFile(from, to);
    if (st.ok()) {
      MutexLock lock(&mu_);
      auto it = files_.find(from);
      if (it != files_.end()) {
        files_[to] = it->second;
        files_.erase(from);
      }
    }
    return st;
  }
  absl::Status RemoveFile(const std::string& path) override {
    {
      MutexLock lock(&mu_);
      files_.erase(path);
    }
    return base_->RemoveFile(path);
  }
  absl::Status RemoveTree(const std::string& path) override { return base_->RemoveTree(path); }
  absl::Status LinkFile(const std::string& from, const std::string& to) override {
    return base_->LinkFile(from, to);
  }
  absl::Status CreateDirs(const std::string& path) override { return base_->CreateDirs(path); }
  absl::Status SyncDir(const std::string& path) override {
    if (fail_syncs_ && Applies(path)) return Injected("cannot fsync directory", path);
    return base_->SyncDir(path);
  }
  absl::StatusOr<std::vector<std::string>> ListDir(const std::string& path) override {
    return base_->ListDir(path);
  }
  bool FileExists(const std::string& path) override { return base_->FileExists(path); }
  int64_t NowUnixMs() override { return base_->NowUnixMs() + clock_offset_ms_; }

 private:
  struct FileState {
    int64_t size = 0;    // bytes written
    int64_t synced = 0;  // bytes that would survive a crash
  };

  class File : public engine::WritableFile {
   public:
    File(FaultInjectionEnv* env, std::string path, std::unique_ptr<engine::WritableFile> base)
        : env_(env), path_(std::move(path)), base_(std::move(base)) {}
    absl::Status Append(std::string_view data) override {
      const int64_t allowed = env_->Reserve(path_, static_cast<int64_t>(data.size()));
      if (allowed > 0) {
        absl::Status st = base_->Append(data.substr(0, static_cast<size_t>(allowed)));
        if (!st.ok()) return st;
        env_->Wrote(path_, allowed);
      }
      if (allowed < static_cast<int64_t>(data.size())) {
        ++env_->failed_calls_;
        return ErrnoStatus(ENOSPC, "cannot write", path_);
      }
      return absl::OkStatus();
    }
    absl::Status Sync() override {
      if (env_->CrashIfArmed(path_)) return env_->Injected("cannot fdatasync", path_);
      if (env_->fail_syncs_ && env_->Applies(path_))
        return env_->Injected("cannot fdatasync", path_);
      absl::Status st = base_->Sync();
      if (st.ok()) env_->Synced(path_);
      return st;
    }
    absl::Status Truncate(int64_t size) override {
      absl::Status st = base_->Truncate(size);
      if (st.ok()) env_->Truncated(path_, size);
      return st;
    }

   private:
    FaultInjectionEnv* const env_;
    const std::string path_;
    std::unique_ptr<engine::WritableFile> base_;
  };

  struct Crash {
    std::string from, to;
    int64_t torn_bytes;
  };

  bool CrashIfArmed(const std::string& path) {
    std::optional<Crash> crash;
    {
      MutexLock lock(&mu_);
      if (!crash_ || !MatchesLocked(path)) return false;
      crash.swap(crash_);
    }
    CrashImage(crash->from, crash->to, crash->torn_bytes);
    return true;
  }

  bool MatchesLocked(const std::string& path) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return filter_.empty() || absl::StrContains(path, filter_);
  }
  bool Applies(const std::string& path) {
    MutexLock lock(&mu_);
    return MatchesLocked(path);
  }
  absl::Status Injected(const char* what, const std::string& path) {
    ++failed_calls_;
    return ErrnoStatus(EIO, what, path);
  }
  // How many of `n` bytes fit on the disk (and uses them up).
  int64_t Reserve(const std::string& path, int64_t n) {
    MutexLock lock(&mu_);
    if (!free_bytes_ || !MatchesLocked(path)) return n;
    const int64_t allowed = std::min(n, *free_bytes_);
    *free_bytes_ -= allowed;
    return allowed;
  }
  void Wrote(const std::string& path, int64_t n) {
    MutexLock lock(&mu_);
    files_[path].size += n;
  }
  void Synced(const std::string& path) {
    MutexLock lock(&mu_);
    files_[path].synced = files_[path].size;
  }
  void Truncated(const std::string& path, int64_t size) {
    MutexLock lock(&mu_);
    FileState& f = files_[path];
    f.size = size;
    f.synced = std::min(f.synced, size);
  }

  engine::Env* const base_;
  Mutex mu_;
  std::string filter_ ABSL_GUARDED_BY(mu_);
  std::optional<int64_t> free_bytes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, FileState> files_ ABSL_GUARDED_BY(mu_);
  std::optional<Crash> crash_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> fail_syncs_{false}, fail_renames_{false}, fail_creates_{false};
  std::atomic<int64_t> clock_offset_ms_{0};
  std::atomic<int64_t> failed_calls_{0};
};

}  // namespace titans::testing

#endif  // TITANS_TESTS_SERVER_ENGINE_FAULT_INJECTION_ENV_H_
