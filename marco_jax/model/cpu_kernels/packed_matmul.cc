// y[M, N] = x[M, K] @ w, float32, with w packed as tiles [N / 32, K, 32] (w[:, 32t:32t+32] is
// tile t, row-major), w in float32 or bfloat16 (widened to float32 in registers: the products and
// sums of a float32 matmul on the bf16 values, half the bytes read): XLA FFI custom calls for CPU
// inference (marco_jax/model/packed_matmul.py).
//
// Why: a decode step multiplies a few rows by every weight. XLA:CPU's dots take about the time of
// reading the weights plus the time of the arithmetic at 8 rows (they do not overlap), so a
// batch-8 step ran at 36-45% of the memory-bandwidth roofline. Here each tile is one contiguous
// block streamed once (8 KiB ahead, into L2), its products accumulate in
// registers (8 rows x 32 columns: 16 vector accumulators), and the tiles are shared out over
// XLA's intra-op thread pool. Columns of the unpacked [K, N] layout would be read at a stride of
// N floats per row, which defeats the hardware prefetchers (as fast as XLA's dot, no faster).
//
// A second entry point serves greedy decoding over the lm head (PackedArgmax): the same tiles,
// reduced to running per-lane maxima while the products are in registers, so the [M, vocab]
// logits are never written nor read back by an argmax.
//
// Built at first use with the host compiler and -march=native (packed_matmul.py); the vector
// type below lowers to AVX-512, AVX2 or NEON registers, whichever the host has.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "share_out.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kTile = 32;        // output columns per tile
constexpr int64_t kRowBlock = 8;     // output rows held in registers at once (decode batches)
// Many rows (prefill, scoring): 12 rows x 32 columns (24 accumulators) per pass over a tile's
// rows, so each loaded weight vector feeds 12 multiply-adds, not 8. Against 8 (bench_kernel_builds,
// 9 rounds, 2-core Intel VM): 1,024 rows x the layer-heavy gate/up 0.905, down 0.986, q/k/v
// 1.006; 16 rows 0.929; outputs bit-equal (each output's sum keeps its order).
constexpr int64_t kWideRowBlock = 12;
constexpr int64_t kRowPanel = 512;   // rows of x per pass over the tiles
// Software prefetch distance into the tiles (8 KiB), into L2 (prefetcht2): measured in one
// process against the earlier 2 KiB into L1 at 8 rows (8-11% less time per call on the layer
// shapes, weights cold, 2-core AMD EPYC) and non-temporal 8 KiB at 1 row (0-4%).
constexpr int64_t kAheadBytes = 8192;
// Below this many multiply-adds the call runs on the calling thread alone: handing tiles to the
// pool costs more than it saves.
constexpr int64_t kMinParallelFma = 1 << 17;

using marco::Int16;
using marco::Load;
using marco::Store;
using marco::Vec16;

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

// Greedy decoding's running reduction, per row and lane (column mod 16 within a tile half): the
// largest product seen and the column of its first occurrence, NaN above every number (the first
// NaN stays). A worker meets its tiles in increasing order, so a strictly larger value is the
// only one that replaces. The caller merges workers and lanes: the largest value, the smallest
// column among its ties (jnp.argmax's answer).
struct RunningMax {
  std::vector<Vec16> value;  // [m][2]
  std::vector<Int16> column;  // [m][2]
  bool any = false;

  void Start(int64_t m) {
    value.assign(2 * m, Vec16{});
    column.assign(2 * m, Int16{});
    any = false;
  }
};

constexpr int64_t kMaxParts = 8;  // weights one call multiplies the same rows by

// One panel of rows times the tiles [0, tiles) of up to kMaxParts weights laid end to end (part
// j's tiles from first_tile[j]): the products into each part's y, or greedy decoding's running
// maxima (RunningMax, one weight), each worker's published into its slot after every chunk.
template <typename W>
struct Panel {
  const float* x;
  int64_t m, k, tiles;
  int64_t parts = 1;
  const W* w[kMaxParts] = {};
  int64_t first_tile[kMaxParts + 1] = {};
  float* y[kMaxParts] = {};  // the products [m, n_j] (row stride n_j); or, for greedy decoding:
  int64_t columns = 0;  // columns that count (the last tile's others are ignored)
  float* best = nullptr;  // [m, slots, 32]: each worker's RunningMax (its slot)
  int32_t* best_column = nullptr;  // [m, slots, 32]
  int64_t slots = 1;

  bool greedy = false;  // set by PackedArgmax only

  bool Greedy() const { return greedy; }

  void Run(ffi::ThreadPool& pool) {
    const int64_t helpers = marco::Helpers(pool, m * k * tiles * kTile >= kMinParallelFma,
                                           Greedy() ? slots - 1 : tiles);
    auto start = [&](int64_t) {
      if (Greedy()) Running().Start(m);
    };
    auto tiles_of = [&](int64_t t0, int64_t t1, int64_t worker) {
      int64_t j = 0;
      for (int64_t t = t0; t < t1; ++t) {
        if (Greedy()) {
          Track(t);
          continue;
        }
        while (t >= first_tile[j + 1]) ++j;
        const int64_t local = t - first_tile[j], n = (first_tile[j + 1] - first_tile[j]) * kTile;
        float* out = y[j] + local * kTile;
        auto store = [&](int64_t r, Vec16 lo, Vec16 hi) {
          Store(out + r * n, lo);
          Store(out + r * n + 16, hi);
        };
        Tile(x, m, k, w[j], local, store);
      }
      if (Greedy()) Publish(worker);
    };
    marco::ShareOut(pool, tiles, helpers, start, tiles_of);
  }

  static RunningMax& Running() {
    thread_local RunningMax running;
    return running;
  }

  void Track(int64_t t) {
    RunningMax& running = Running();
    const int64_t valid = std::min(kTile, columns - t * kTile);
    Int16 lanes;
    for (int i = 0; i < 16; ++i) lanes[i] = i;
    const Int16 lo_columns = lanes + static_cast<int32_t>(t * kTile), hi_columns = lo_columns + 16;
    const Int16 lo_valid = lanes < static_cast<int32_t>(valid),
                hi_valid = lanes + 16 < static_cast<int32_t>(valid);
    const Vec16 minus_inf = marco::Splat(-__builtin_inff());
    const bool first = !running.any;
    running.any = true;
    auto update = [&](Vec16& value, Int16& column, Vec16 v, Int16 at, Int16 ok) {
      v = ok ? v : minus_inf;  // columns past `columns` never win
      if (first) {
        value = v;
        column = at;
        return;
      }
      const Int16 take = (v > value) | ((v != v) & (value == value));
      value = take ? v : value;
      column = take ? at : column;
    };
    auto track = [&](int64_t r, Vec16 lo, Vec16 hi) {
      update(running.value[2 * r], running.column[2 * r], lo, lo_columns, lo_valid);
      update(running.value[2 * r + 1], running.column[2 * r + 1], hi, hi_columns, hi_valid);
    };
    Tile(x, m, k, w[0], t, track);
  }

  void Publish(int64_t slot) {
    const RunningMax& running = Running();
    for (int64_t r = 0; r < m; ++r) {
      for (int half = 0; half < 2; ++half) {
        const int64_t at = (r * slots + slot) * kTile + half * 16;
        Store(best + at, running.value[2 * r + half]);
        std::memcpy(best_column + at, &running.column[2 * r + half], sizeof(Int16));
      }
    }
  }
};

// The same rows times each of the weights (RemainingArgs: tiles [N_j / 32, K, 32], one dtype)
// into y_j [M, N_j] (RemainingRets), their tiles shared out in one pass: a layer's q, k and v
// projections (or gate and up) cost one hand-off to the pool, not three (or two).
template <ffi::DataType T>
ffi::Error PackedMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::RemainingArgs ws,
                        ffi::RemainingRets ys) {
  using W = ffi::NativeType<T>;
  const auto xd = x.dimensions();
  const int64_t parts = static_cast<int64_t>(ws.size());
  const auto bad = ffi::Error::InvalidArgument(
      "marco_packed_matmul: expected x [M, K], 1 to 8 weights [N_j / 32, K, 32] of one dtype "
      "and as many outputs [M, N_j]");
  if (xd.size() != 2 || parts < 1 || parts > kMaxParts ||
      static_cast<int64_t>(ys.size()) != parts) {
    return bad;
  }
  const int64_t m = xd[0], k = xd[1];
  Panel<W> whole{x.typed_data(), m, k, 0};
  whole.parts = parts;
  for (int64_t j = 0; j < parts; ++j) {
    auto w = ws.get<ffi::Buffer<T>>(j);
    auto y = ys.get<ffi::Buffer<ffi::F32>>(j);
    if (!w.has_value() || !y.has_value()) return bad;
    const auto wd = w->dimensions(), yd = (*y)->dimensions();
    if (wd.size() != 3 || wd[1] != k || wd[2] != kTile || yd.size() != 2 || yd[0] != m ||
        yd[1] != wd[0] * kTile) {
      return bad;
    }
    whole.w[j] = w->typed_data();
    whole.y[j] = (*y)->typed_data();
    whole.first_tile[j + 1] = whole.first_tile[j] + wd[0];
  }
  whole.tiles = whole.first_tile[parts];
  if (m == 0 || whole.tiles == 0) return ffi::Error::Success();
  // Row panels: a panel's rows of x stay in cache while every tile passes over them (scoring
  // sends thousands of rows; unpanelled, x would be read from memory once per tile).
  for (int64_t r0 = 0; r0 < m; r0 += kRowPanel) {
    Panel<W> panel = whole;
    panel.x = x.typed_data() + r0 * k;
    panel.m = std::min(kRowPanel, m - r0);
    for (int64_t j = 0; j < parts; ++j) {
      panel.y[j] = whole.y[j] + r0 * (whole.first_tile[j + 1] - whole.first_tile[j]) * kTile;
    }
    panel.Run(pool);
  }
  return ffi::Error::Success();
}

// Greedy decoding over the packed lm head without writing the logits: per row, each worker's
// running maximum by lane (RunningMax) in its slot of best / column [M, slots, 32]; slots no
// worker filled keep -inf and the column `columns` (never a token). Tiles past `columns` are
// never read.
template <ffi::DataType T>
ffi::Error PackedArgmax(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<T> w,
                        int64_t columns, ffi::ResultBuffer<ffi::F32> best,
                        ffi::ResultBuffer<ffi::S32> column) {
  using W = std::remove_pointer_t<decltype(w.typed_data())>;
  const auto xd = x.dimensions(), wd = w.dimensions(), bd = best->dimensions(),
             cd = column->dimensions();
  if (xd.size() != 2 || wd.size() != 3 || wd[2] != kTile || xd[1] != wd[1] || columns < 1 ||
      columns > wd[0] * kTile || bd.size() != 3 || bd[0] != xd[0] || bd[1] < 1 ||
      bd[2] != kTile || cd.size() != 3 || cd[0] != bd[0] || cd[1] != bd[1] || cd[2] != kTile) {
    return ffi::Error::InvalidArgument(
        "marco_packed_argmax: expected x [M, K], w [N / 32, K, 32], 0 < columns <= N, best and "
        "column [M, slots, 32]");
  }
  const int64_t m = xd[0], k = xd[1], slots = bd[1];
  std::fill_n(best->typed_data(), best->element_count(), -__builtin_inff());
  std::fill_n(column->typed_data(), column->element_count(), static_cast<int32_t>(columns));
  for (int64_t r0 = 0; r0 < m; r0 += kRowPanel) {
    Panel<W> panel{x.typed_data() + r0 * k, std::min(kRowPanel, m - r0), k,
                   (columns + kTile - 1) / kTile};
    panel.w[0] = w.typed_data();
    panel.greedy = true;
    panel.columns = columns;
    panel.slots = slots;
    panel.best = best->typed_data() + r0 * slots * kTile;
    panel.best_column = column->typed_data() + r0 * slots * kTile;
    panel.Run(pool);
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MarcoPackedMatmul, PackedMatmul<ffi::F32>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MarcoPackedMatmulBf16, PackedMatmul<ffi::BF16>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .RemainingArgs()
                                  .RemainingRets());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MarcoPackedArgmax, PackedArgmax<ffi::F32>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("columns")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MarcoPackedArgmaxBf16, PackedArgmax<ffi::BF16>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Attr<int64_t>("columns")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());
