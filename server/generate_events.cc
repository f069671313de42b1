#include "server/generate_events.h"

#include <utility>

namespace titans {

void MergeGenerateEvents(engine::GenerateEvent* into, engine::GenerateEvent next) {
  next.tokens.insert(next.tokens.begin(), into->tokens.begin(), into->tokens.end());
  next.text.insert(0, into->text);
  *into = std::move(next);
}

}  // namespace titans
