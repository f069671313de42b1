// The project's version (the repository's VERSION file, compiled in).
#ifndef TITANS_MODEL_VERSION_H_
#define TITANS_MODEL_VERSION_H_

namespace titans {

// E.g. "0.1.0". Never null.
const char* ProjectVersion();

}  // namespace titans

#endif  // TITANS_MODEL_VERSION_H_
