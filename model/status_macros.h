// Early-return helpers for absl::Status / absl::StatusOr, used across model/ and the server.
#ifndef TITANS_MODEL_STATUS_MACROS_H_
#define TITANS_MODEL_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define TITANS_STATUS_CONCAT_INNER(a, b) a##b
#define TITANS_STATUS_CONCAT(a, b) TITANS_STATUS_CONCAT_INNER(a, b)

// Returns the status of `expr` from the enclosing function if it is not OK.
#define TITANS_RETURN_IF_ERROR(expr)                 \
  do {                                               \
    const absl::Status titans_status_ = (expr);      \
    if (!titans_status_.ok()) return titans_status_; \
  } while (0)

// `lhs = value of expr`, or returns its error status from the enclosing function.
#define TITANS_ASSIGN_OR_RETURN(lhs, expr) \
  TITANS_ASSIGN_OR_RETURN_IMPL(TITANS_STATUS_CONCAT(titans_statusor_, __LINE__), lhs, expr)
#define TITANS_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                 \
  if (!tmp.ok()) return tmp.status();                \
  lhs = std::move(*tmp)

#endif  // TITANS_MODEL_STATUS_MACROS_H_
