#include "server/engine/session_table.h"

#include "absl/strings/str_cat.h"
#include "server/engine/engine.h"

namespace titans::engine {

Session* SessionTable::FindAnyPhase(const std::string& principal, const std::string& id) {
  for (const std::string& name : StorageNames(principal, id)) {
    auto it = sessions_.find(name);
    if (it != sessions_.end()) {
      return it->second->record.principal == principal ? it->second.get() : nullptr;
    }
  }
  return nullptr;
}

absl::StatusOr<Session*> SessionTable::Find(const std::string& principal, const std::string& id) {
  Session* s = FindAnyPhase(principal, id);
  if (s == nullptr || s->phase != SessionPhase::kOpen) {
    return absl::NotFoundError(absl::StrCat("session '", ShowValue(id), "' not found"));
  }
  return s;
}

Session* SessionTable::Get(const std::string& name) {
  auto it = sessions_.find(name);
  return it == sessions_.end() ? nullptr : it->second.get();
}

Session* SessionTable::Insert(std::unique_ptr<Session> s) {
  Session* raw = s.get();
  sessions_.emplace(raw->record.id, std::move(s));
  return raw;
}

void SessionTable::Remove(const std::string& name) {
  auto it = sessions_.find(name);
  if (it == sessions_.end()) return;
  while (!it->second->ops.empty()) PopOp(it->second.get());
  sessions_.erase(it);
}

void SessionTable::PushOp(Session* s, std::unique_ptr<Op> op) {
  op->queued_tokens = op->remaining();
  queued_tokens_ += op->queued_tokens;
  s->ops.push_back(std::move(op));
  runnable_.insert(s->record.id);
}

std::unique_ptr<Op> SessionTable::PopOp(Session* s) {
  std::unique_ptr<Op> op = std::move(s->ops.front());
  s->ops.pop_front();
  queued_tokens_ -= op->queued_tokens;
  if (s->ops.empty()) runnable_.erase(s->record.id);
  return op;
}

void SessionTable::SetQueuedTokens(Op* op, int64_t tokens) {
  queued_tokens_ += tokens - op->queued_tokens;
  op->queued_tokens = tokens;
}

std::vector<Session*> SessionTable::Runnable() {
  std::vector<Session*> out;
  out.reserve(runnable_.size());
  for (const std::string& name : runnable_) out.push_back(sessions_.at(name).get());
  return out;
}

}  // namespace titans::engine
