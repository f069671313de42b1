// How a generation's events join when the writer falls behind: when a call's previous write is
// still under way while the engine keeps stepping, the events produced meanwhile leave as one
// message: their tokens and text concatenated, the newest position, and the finish reason and
// timings of the last (GenerateResponse carries "the new tokens since the previous message", so
// clients see the same stream either way). Under load this saves a gRPC write per token; an idle
// call still sends every token as it comes. Pure function.
#ifndef TITANS_SERVER_GENERATE_EVENTS_H_
#define TITANS_SERVER_GENERATE_EVENTS_H_

#include "server/engine/engine.h"

namespace titans {

// Appends `next` to `into` as one event: tokens and text concatenated, everything else (position,
// finish, timings, counts) taken from `next`, the newer one.
void MergeGenerateEvents(engine::GenerateEvent* into, engine::GenerateEvent next);

}  // namespace titans

#endif  // TITANS_SERVER_GENERATE_EVENTS_H_
