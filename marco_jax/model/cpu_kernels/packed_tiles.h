// Packed weight tiles times a few rows of x, float32 sums in registers: the inner loops of the
// packed matmul (packed_matmul.cc) and of the fused decode layer (decode_layer.cc). Weights are
// tiles [N / 32, K, 32] (w[:, 32t:32t+32] is tile t, row-major) in float32 or bfloat16 (uint16_t
// bits, widened to float32 in registers).
#pragma once

#include <cstdint>
#include <type_traits>
#include <vector>

#include "simd.h"

namespace marco {

constexpr int64_t kTile = 32;        // output columns per tile
constexpr int64_t kRowBlock = 8;     // output rows held in registers at once (decode batches)
// Many rows (prefill, scoring): 12 rows x 32 columns (24 accumulators) per pass over a tile's
// rows, so each loaded weight vector feeds 12 multiply-adds, not 8. Against 8 (bench_kernel_builds,
// 9 rounds, 2-core Intel VM): 1,024 rows x the layer-heavy gate/up 0.905, down 0.986, q/k/v
// 1.006; 16 rows 0.929; outputs bit-equal (each output's sum keeps its order).
constexpr int64_t kWideRowBlock = 12;
// Software prefetch distance into the tiles (8 KiB), into L2 (prefetcht2): measured in one
// process against the earlier 2 KiB into L1 at 8 rows (8-11% less time per call on the layer
// shapes, weights cold, 2-core AMD EPYC) and non-temporal 8 KiB at 1 row (0-4%).
constexpr int64_t kAheadBytes = 8192;

// Rows [0, R) of x (row stride k) times one packed tile [k, 32]: emit(r, columns 0-15,
// columns 16-31) per row.
template <int R, typename W, typename Emit>
void TileRows(const float* x, int64_t k, const W* tile, Emit& emit) {
  constexpr int64_t ahead = kAheadBytes / sizeof(W);
  constexpr int64_t lines = kTile * sizeof(W) / 64;  // cache lines per tile row: 2 or 1
  Vec16 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = Vec16{};
  const W* w = tile;
  for (int64_t i = 0; i < k; ++i, w += kTile) {
    for (int64_t line = 0; line < lines; ++line) __builtin_prefetch(w + ahead + line * 16, 0, 1);
    const Vec16 w0 = Load(w), w1 = Load(w + 16);
    for (int r = 0; r < R; ++r) {
      const float xr = x[r * k + i];
      acc[r][0] += xr * w0;
      acc[r][1] += xr * w1;
    }
  }
  for (int r = 0; r < R; ++r) emit(r, acc[r][0], acc[r][1]);
}

// Every row of x times one tile [k, 32], in blocks of kWideRowBlock rows, then kRowBlock.
template <typename W, typename Emit>
void TileAllRows(const float* x, int64_t m, int64_t k, const W* tile, Emit& emit) {
  int64_t r = 0;
  auto block = [&](int64_t row, Vec16 lo, Vec16 hi) { emit(r + row, lo, hi); };
  for (; r + kWideRowBlock <= m; r += kWideRowBlock) {
    TileRows<kWideRowBlock>(x + r * k, k, tile, block);
  }
  for (; r + kRowBlock <= m; r += kRowBlock) TileRows<kRowBlock>(x + r * k, k, tile, block);
  const float* xr = x + r * k;
  switch (m - r) {
    case 1: TileRows<1>(xr, k, tile, block); break;
    case 2: TileRows<2>(xr, k, tile, block); break;
    case 3: TileRows<3>(xr, k, tile, block); break;
    case 4: TileRows<4>(xr, k, tile, block); break;
    case 5: TileRows<5>(xr, k, tile, block); break;
    case 6: TileRows<6>(xr, k, tile, block); break;
    case 7: TileRows<7>(xr, k, tile, block); break;
    default: break;
  }
}

// Every row of x times tile `t`. A bf16 tile read by more than one row block is widened once
// into a float32 copy (per thread), so a prefill does not pay the widening per row block.
template <typename W, typename Emit>
void Tile(const float* x, int64_t m, int64_t k, const W* w, int64_t t, Emit& emit) {
  const W* tile = w + t * k * kTile;
  if constexpr (std::is_same_v<W, uint16_t>) {
    if (m > kRowBlock) {
      thread_local std::vector<float> wide;
      wide.resize(k * kTile);
      for (int64_t i = 0; i < k * kTile; i += 16) Store(wide.data() + i, Load(tile + i));
      TileAllRows(x, m, k, static_cast<const float*>(wide.data()), emit);
      return;
    }
  }
  TileAllRows(x, m, k, tile, emit);
}

}  // namespace marco
