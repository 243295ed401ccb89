// y[M, N] = x[M, K] @ w, float32, with w packed as tiles [N / 32, K, 32] (w[:, 32t:32t+32] is
// tile t, row-major), w in float32 or bfloat16 (widened to float32 in registers: the products and
// sums of a float32 matmul on the bf16 values, half the bytes read): XLA FFI custom calls for CPU
// inference (marco_jax/model/packed_matmul.py).
//
// Why: a decode step multiplies a few rows by every weight. XLA:CPU's dots take about the time of
// reading the weights plus the time of the arithmetic at 8 rows (they do not overlap), so a
// batch-8 step ran at 36-45% of the memory-bandwidth roofline. Here each tile is one contiguous
// block streamed once (its rows prefetched 2-8 KiB ahead), its products accumulate in
// registers (8 rows x 32 columns: 16 vector accumulators), and the tiles are shared out over
// XLA's intra-op thread pool. Columns of the unpacked [K, N] layout would be read at a stride of
// N floats per row, which defeats the hardware prefetchers (as fast as XLA's dot, no faster).
//
// Built at first use with the host compiler and -march=native (packed_matmul.py); the vector
// type below lowers to AVX-512, AVX2 or NEON registers, whichever the host has.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <type_traits>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kTile = 32;        // output columns per tile
constexpr int64_t kRowBlock = 8;     // output rows held in registers at once
constexpr int64_t kRowPanel = 512;   // rows of x per pass over the tiles
// Software prefetch distance into the tile: with one or two rows a tile row takes a few cycles,
// so the prefetch runs further ahead (8 KiB, non-temporal: read once) than with more (2 KiB).
constexpr int64_t kAheadFewBytes = 8192;
constexpr int64_t kAheadManyBytes = 2048;
// Below this many multiply-adds the call runs on the calling thread alone: handing tiles to the
// pool costs more than it saves.
constexpr int64_t kMinParallelFma = 1 << 17;

typedef float Vec16 __attribute__((vector_size(64)));
typedef uint16_t Half16 __attribute__((vector_size(32)));
typedef uint32_t Word16 __attribute__((vector_size(64)));

inline Vec16 Load(const float* p) {
  Vec16 v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

// 16 bfloat16 values as float32: the upper half of each float's bits.
inline Vec16 Load(const uint16_t* p) {
  Half16 h;
  std::memcpy(&h, p, sizeof(h));
  const Word16 bits = __builtin_convertvector(h, Word16) << 16;
  Vec16 v;
  std::memcpy(&v, &bits, sizeof(v));
  return v;
}

inline void Store(float* p, Vec16 v) { std::memcpy(p, &v, sizeof(v)); }

// Rows [0, R) of x (row stride k) times one packed tile [k, 32] -> y[:, 0:32] (row stride n).
template <int R, typename W>
void TileRows(const float* x, int64_t k, const W* tile, int64_t n, float* y) {
  constexpr int64_t ahead = (R <= 2 ? kAheadFewBytes : kAheadManyBytes) / sizeof(W);
  constexpr int64_t lines = kTile * sizeof(W) / 64;  // cache lines per tile row: 2 or 1
  Vec16 acc[R][2];
  for (int r = 0; r < R; ++r) acc[r][0] = acc[r][1] = Vec16{};
  const W* w = tile;
  for (int64_t i = 0; i < k; ++i, w += kTile) {
    for (int64_t line = 0; line < lines; ++line) {
      if constexpr (R <= 2) {
        __builtin_prefetch(w + ahead + line * 16, 0, 0);
      } else {
        __builtin_prefetch(w + ahead + line * 16, 0, 3);
      }
    }
    const Vec16 w0 = Load(w), w1 = Load(w + 16);
    for (int r = 0; r < R; ++r) {
      const float xr = x[r * k + i];
      acc[r][0] += xr * w0;
      acc[r][1] += xr * w1;
    }
  }
  for (int r = 0; r < R; ++r) {
    Store(y + r * n, acc[r][0]);
    Store(y + r * n + 16, acc[r][1]);
  }
}

// Every row of x times one tile [k, 32].
template <typename W>
void TileAllRows(const float* x, int64_t m, int64_t k, const W* tile, int64_t n, float* out) {
  int64_t r = 0;
  for (; r + kRowBlock <= m; r += kRowBlock) {
    TileRows<kRowBlock>(x + r * k, k, tile, n, out + r * n);
  }
  const float* xr = x + r * k;
  float* yr = out + r * n;
  switch (m - r) {
    case 1: TileRows<1>(xr, k, tile, n, yr); break;
    case 2: TileRows<2>(xr, k, tile, n, yr); break;
    case 3: TileRows<3>(xr, k, tile, n, yr); break;
    case 4: TileRows<4>(xr, k, tile, n, yr); break;
    case 5: TileRows<5>(xr, k, tile, n, yr); break;
    case 6: TileRows<6>(xr, k, tile, n, yr); break;
    case 7: TileRows<7>(xr, k, tile, n, yr); break;
    default: break;
  }
}

// Every row of x times tile `t`. A bf16 tile read by more than one row block is widened once
// into a float32 copy (per thread), so a prefill does not pay the widening per row block.
template <typename W>
void Tile(const float* x, int64_t m, int64_t k, const W* w, int64_t n, float* y, int64_t t) {
  const W* tile = w + t * k * kTile;
  float* out = y + t * kTile;
  if constexpr (std::is_same_v<W, uint16_t>) {
    if (m > kRowBlock) {
      thread_local std::vector<float> wide;
      wide.resize(k * kTile);
      for (int64_t i = 0; i < k * kTile; i += 16) Store(wide.data() + i, Load(tile + i));
      TileAllRows(x, m, k, static_cast<const float*>(wide.data()), n, out);
      return;
    }
  }
  TileAllRows(x, m, k, tile, n, out);
}

// Tiles handed out in chunks to whichever thread asks next; the caller works too, so the call
// finishes even if no pool thread ever starts (tasks that start late find no chunk left).
template <typename W>
struct Work {
  const float* x;
  const W* w;
  float* y;
  int64_t m, k, n, tiles, chunk;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};

  void Run() {
    for (;;) {
      const int64_t t0 = next.fetch_add(chunk, std::memory_order_relaxed);
      if (t0 >= tiles) return;
      const int64_t t1 = std::min(tiles, t0 + chunk);
      for (int64_t t = t0; t < t1; ++t) Tile(x, m, k, w, n, y, t);
      done.fetch_add(t1 - t0, std::memory_order_release);
    }
  }
};

template <ffi::DataType T>
ffi::Error PackedMatmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<T> w,
                        ffi::ResultBuffer<ffi::F32> y) {
  using W = std::remove_pointer_t<decltype(w.typed_data())>;
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 2 || wd.size() != 3 || yd.size() != 2 || wd[2] != kTile || xd[1] != wd[1] ||
      yd[0] != xd[0] || yd[1] != wd[0] * kTile) {
    return ffi::Error::InvalidArgument(
        "marco_packed_matmul: expected x [M, K], w [N / 32, K, 32] and y [M, N]");
  }
  const int64_t m = xd[0], k = xd[1], tiles = wd[0], n = tiles * kTile;
  if (m == 0 || tiles == 0) return ffi::Error::Success();
  // XLA's pool has a thread per forced host device (--xla_force_host_platform_device_count),
  // which may exceed the cores: never more workers than cores.
  const int64_t cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
  const int64_t pool_helpers = std::min<int64_t>(pool.num_threads(), cores - 1);
  // Row panels: a panel's rows of x stay in cache while every tile passes over them (scoring
  // sends thousands of rows; unpanelled, x would be read from memory once per tile).
  for (int64_t r0 = 0; r0 < m; r0 += kRowPanel) {
    auto work = std::make_shared<Work<W>>();
    work->m = std::min(kRowPanel, m - r0);
    work->k = k;
    work->n = n;
    work->tiles = tiles;
    work->x = x.typed_data() + r0 * k;
    work->w = w.typed_data();
    work->y = y->typed_data() + r0 * n;
    const int64_t helpers =
        work->m * k * n < kMinParallelFma ? 0 : std::max<int64_t>(0, pool_helpers);
    // About four chunks per thread: even shares when one thread starts late.
    work->chunk = std::max<int64_t>(1, tiles / (4 * (helpers + 1)));
    for (int64_t i = 0; i < helpers; ++i) pool.Schedule([work]() { work->Run(); });
    work->Run();
    while (work->done.load(std::memory_order_acquire) < tiles) std::this_thread::yield();
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MarcoPackedMatmul, PackedMatmul<ffi::F32>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MarcoPackedMatmulBf16, PackedMatmul<ffi::BF16>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
