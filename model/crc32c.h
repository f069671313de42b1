// CRC-32C (Castagnoli polynomial 0x1EDC6F41, reflected 0x82F63B78), as used by iSCSI, ext4,
// LevelDB and many storage formats.
//
// Thread safety: all functions are pure and may be called concurrently from any thread.

#ifndef TITANS_MODEL_CRC32C_H_
#define TITANS_MODEL_CRC32C_H_

#include <cstddef>
#include <cstdint>

namespace titans {

// Returns the CRC-32C of the n bytes at `data`, continuing from `crc`, the CRC-32C of the bytes
// that precede them (0 for a fresh computation). Extendable:
//   Crc32c(b, nb, Crc32c(a, na)) == Crc32c(a followed by b, na + nb).
// Uses the SSE4.2 crc32 instruction when the CPU has it, a table-driven fallback otherwise; both
// give identical results. `data` may be unaligned; it may be null only when n == 0.
uint32_t Crc32c(const void* data, size_t n, uint32_t crc = 0);

namespace crc32c_internal {

// Exposed for tests and benchmarks only; same contract as Crc32c().
uint32_t Crc32cSoftware(const void* data, size_t n, uint32_t crc);
// Must only be called when HasHardwareCrc32c() is true.
uint32_t Crc32cHardware(const void* data, size_t n, uint32_t crc);
// True when the running CPU supports SSE4.2 (always false on non-x86 builds).
bool HasHardwareCrc32c();

}  // namespace crc32c_internal
}  // namespace titans

#endif  // TITANS_MODEL_CRC32C_H_
