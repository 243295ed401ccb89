// Greedy decoding's screen on AMX tiles (Intel Sapphire Rapids and later): approximate products
// of up to 16 rows of x by a bf16 copy of the lm head, 64 columns at a time, at a fraction of the
// arithmetic of float32 FMAs. PackedArgmaxScreened (packed_matmul.cc) keeps only the columns the
// screen cannot rule out and computes those exactly.
//
// Why: at 8 rows the head's float32 products are bound by arithmetic, not reads (2-core Intel VM,
// [8, 128] x [128, 151,936]: 311 MFLOP, 1.6-2.1 ms, about the CPU's FMA peak). One TDPBF16PS
// multiplies [rows, 32] by [32, 16] in ~6 ns here; 16 of them cover a 64-column group of a
// 128-wide head.
//
// Screen layout, bf16: [G, KC, 4, 16, 16, 2] for a head [K, N] zero-padded to [KC * 32, G * 64]:
// group g, chunk c, block j holds w[32c + 2p + e, 64g + 16j + col] at [g, c, j, p, col, e] (the
// pair-interleaved B operand of TDPBF16PS, each 1 KiB tile contiguous, each group one block).
#pragma once

#include <cstdint>

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__linux__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>
#define MARCO_HAS_AMX 1
#endif

namespace marco {

constexpr int64_t kScreenGroup = 64;  // columns per screened group (4 tiles of 16)
constexpr int64_t kScreenChunk = 32;  // contraction per tile product (16 bf16 pairs)
constexpr int64_t kScreenRows = 16;   // rows of x one tile holds
constexpr int64_t kScreenGroupValues = kScreenChunk * kScreenGroup;  // per group and chunk

#ifdef MARCO_HAS_AMX

// Linux hands out AMX tile state only on request (once per process, every thread).
inline bool AmxReady() {
  static const bool ready = [] {
    constexpr long kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ready;
}

// Tiles 0-3: products [rows, 16] float32; 4-5: weights [16 pairs, 16 x 2] bf16; 6-7: x
// [rows, 32] bf16. Per thread.
inline void ConfigureScreenTiles(int64_t rows) {
  struct alignas(64) Config {
    uint8_t palette = 1, start_row = 0;
    uint8_t reserved[14] = {};
    uint16_t bytes_per_row[16] = {};
    uint8_t rows[16] = {};
  } config;
  for (int t = 0; t < 8; ++t) {
    config.bytes_per_row[t] = 64;
    config.rows[t] = static_cast<uint8_t>(t == 4 || t == 5 ? 16 : rows);
  }
  _tile_loadconfig(&config);
}

inline void ReleaseScreenTiles() { _tile_release(); }

// Each weight tile's 16 lines, kScreenAheadBytes ahead into L1: tile loads that miss L1 wait on
// each line in turn.
constexpr int64_t kScreenAheadBytes = 4096;
inline void PrefetchTile(const uint16_t* tile) {
  const char* ahead = reinterpret_cast<const char*>(tile) + kScreenAheadBytes;
  for (int line = 0; line < 16; ++line) __builtin_prefetch(ahead + 64 * line, 0, 3);
}

// One group's products [rows, 64] float32 (row stride 64) from x [rows, chunks * 32] bf16 and
// the group's screen block [chunks, 4, 16, 16, 2]. Products of a pair are exact in float32 and
// summed in float32 (DAZ/FTZ).
inline void ScreenGroup(const uint16_t* x, int64_t chunks, const uint16_t* group, float* out) {
  const int64_t x_stride = chunks * kScreenChunk * 2;  // bytes per row of x
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  // Two x tiles and two weight tiles alternate, so a load need not wait for the product before
  // it to release its tile.
#define MARCO_SCREEN_CHUNK(XT)                                \
  _tile_loadd(XT, x + c * kScreenChunk, x_stride);            \
  PrefetchTile(group);                                        \
  _tile_loadd(4, group, 64);                                  \
  _tile_dpbf16ps(0, XT, 4);                                   \
  PrefetchTile(group + 512);                                  \
  _tile_loadd(5, group + 512, 64);                            \
  _tile_dpbf16ps(1, XT, 5);                                   \
  PrefetchTile(group + 1024);                                 \
  _tile_loadd(4, group + 1024, 64);                           \
  _tile_dpbf16ps(2, XT, 4);                                   \
  PrefetchTile(group + 1536);                                 \
  _tile_loadd(5, group + 1536, 64);                           \
  _tile_dpbf16ps(3, XT, 5);                                   \
  group += kScreenGroupValues;                                \
  ++c;
  int64_t c = 0;
  while (c + 2 <= chunks) {
    MARCO_SCREEN_CHUNK(6)
    MARCO_SCREEN_CHUNK(7)
  }
  if (c < chunks) {
    MARCO_SCREEN_CHUNK(6)
  }
#undef MARCO_SCREEN_CHUNK
  constexpr int64_t stride = kScreenGroup * sizeof(float);
  _tile_stored(0, out, stride);
  _tile_stored(1, out + 16, stride);
  _tile_stored(2, out + 32, stride);
  _tile_stored(3, out + 48, stride);
}

#else

inline bool AmxReady() { return false; }
inline void ConfigureScreenTiles(int64_t) {}
inline void ReleaseScreenTiles() {}
inline void ScreenGroup(const uint16_t*, int64_t, const uint16_t*, float*) {}

#endif

}  // namespace marco
