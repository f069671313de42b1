// InflightBudget: the bytes of request input held by calls that have not reached the engine yet
// (ServiceOptions::max_inflight_request_bytes). A Reservation holds some of them until it is
// destroyed. Thread-safe: one atomic counter, no lock.
#ifndef TITANS_SERVER_INFLIGHT_BUDGET_H_
#define TITANS_SERVER_INFLIGHT_BUDGET_H_

#include <atomic>
#include <cstdint>

namespace titans::server {

class InflightBudget {
 public:
  // `limit` bytes at most (0 = no bound); `used` (may be null: the budget's own counter) counts
  // the bytes held and must outlive the budget.
  InflightBudget(int64_t limit, std::atomic<int64_t>* used)
      : limit_(limit), used_(used ? used : &own_) {}
  InflightBudget(const InflightBudget&) = delete;
  InflightBudget& operator=(const InflightBudget&) = delete;

  int64_t limit() const { return limit_; }

  // Holds bytes for one call; the budget must outlive it.
  class Reservation {
   public:
    explicit Reservation(InflightBudget* budget) : budget_(budget) {}
    Reservation(const Reservation&) = delete;
    Reservation& operator=(const Reservation&) = delete;
    ~Reservation() { Release(); }
    // Gives back everything held (before a call's answer leaves, so that a client that has its
    // answer finds the bytes free).
    void Release() {
      budget_->used_->fetch_sub(held_);
      held_ = 0;
    }
    // Takes `bytes` more; false (and nothing taken) if that would pass the limit.
    bool Add(int64_t bytes) {
      const int64_t after = budget_->used_->fetch_add(bytes) + bytes;
      if (budget_->limit_ > 0 && after > budget_->limit_) {
        budget_->used_->fetch_sub(bytes);
        return false;
      }
      held_ += bytes;
      return true;
    }

   private:
    InflightBudget* budget_;
    int64_t held_ = 0;
  };

 private:
  const int64_t limit_;
  std::atomic<int64_t> own_{0};
  std::atomic<int64_t>* used_;
};

}  // namespace titans::server

#endif  // TITANS_SERVER_INFLIGHT_BUDGET_H_
