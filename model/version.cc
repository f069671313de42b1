#include "model/version.h"

namespace titans {

const char* ProjectVersion() { return TITANS_VERSION; }

}  // namespace titans
