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
#include <atomic>
#include <cmath>
#include <cstring>
#include <cstdint>
#include <limits>
#include <type_traits>
#include <vector>

#include "amx_screen.h"
#include "packed_tiles.h"
#include "share_out.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kRowPanel = 512;   // rows of x per pass over the tiles
// Below this many multiply-adds the call runs on the calling thread alone: handing tiles to the
// pool costs more than it saves.
constexpr int64_t kMinParallelFma = 1 << 17;

using marco::Int16;
using marco::kRowBlock;
using marco::kTile;
using marco::Load;
using marco::Store;
using marco::Tile;
using marco::Vec16;

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

// Greedy decoding over the packed lm head, every tile read: each panel of rows' running maxima
// into best / column [M, slots, 32] (filled beforehand).
template <typename W>
void FullArgmax(ffi::ThreadPool& pool, const float* x, int64_t m, int64_t k, const W* w,
                int64_t columns, float* best, int32_t* column, int64_t slots) {
  for (int64_t r0 = 0; r0 < m; r0 += kRowPanel) {
    Panel<W> panel{x + r0 * k, std::min(kRowPanel, m - r0), k, (columns + kTile - 1) / kTile};
    panel.w[0] = w;
    panel.greedy = true;
    panel.columns = columns;
    panel.slots = slots;
    panel.best = best + r0 * slots * kTile;
    panel.best_column = column + r0 * slots * kTile;
    panel.Run(pool);
  }
}

bool ArgmaxShapesOk(const ffi::Span<const int64_t>& xd, const ffi::Span<const int64_t>& wd,
                    int64_t columns, const ffi::Span<const int64_t>& bd,
                    const ffi::Span<const int64_t>& cd) {
  return xd.size() == 2 && wd.size() == 3 && wd[2] == kTile && xd[1] == wd[1] && columns >= 1 &&
         columns <= wd[0] * kTile && bd.size() == 3 && bd[0] == xd[0] && bd[1] >= 1 &&
         bd[2] == kTile && cd.size() == 3 && cd[0] == bd[0] && cd[1] == bd[1] && cd[2] == kTile;
}

// Greedy decoding over the packed lm head without writing the logits: per row, each worker's
// running maximum by lane (RunningMax) in its slot of best / column [M, slots, 32]; slots no
// worker filled keep -inf and the column `columns` (never a token). Tiles past `columns` are
// never read.
template <ffi::DataType T>
ffi::Error PackedArgmax(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<T> w,
                        int64_t columns, ffi::ResultBuffer<ffi::F32> best,
                        ffi::ResultBuffer<ffi::S32> column) {
  if (!ArgmaxShapesOk(x.dimensions(), w.dimensions(), columns, best->dimensions(),
                      column->dimensions())) {
    return ffi::Error::InvalidArgument(
        "marco_packed_argmax: expected x [M, K], w [N / 32, K, 32], 0 < columns <= N, best and "
        "column [M, slots, 32]");
  }
  std::fill_n(best->typed_data(), best->element_count(), -__builtin_inff());
  std::fill_n(column->typed_data(), column->element_count(), static_cast<int32_t>(columns));
  FullArgmax(pool, x.typed_data(), x.dimensions()[0], x.dimensions()[1], w.typed_data(), columns,
             best->typed_data(), column->typed_data(), best->dimensions()[1]);
  return ffi::Error::Success();
}

// What the screened greedy calls did in this process (tests and benches read it):
// [calls screened, calls that read every tile instead, tiles computed exactly after a screen].
std::atomic<int64_t> screen_stats[3];

// One worker's screen: the groups in which some row came within its margin of the largest
// approximate product that worker had seen, and each such group's per-row maxima [hits][rows].
struct ScreenHits {
  std::vector<int64_t> groups;
  std::vector<float> maxima;
  float floor[marco::kScreenRows];  // per row: largest maximum seen less the row's margin
};

// Greedy decoding over a head (float32 tiles, or bf16 tiles widened as PackedArgmax widens them)
// in two passes, with PackedArgmax's outputs and answer:
// AMX tiles multiply x rounded to bf16 by a bf16 copy of the head (`screen`, amx_screen.h), then
// the float32 tiles holding every column that can still be the argmax are computed exactly, by
// the same code as PackedArgmax, in column order.
//
// Why the answer is exact: for row r and column j, let x^ and w^ be x and w rounded to bf16, dx =
// x^ - x, dw = w^ - w. The screened product a (x^ . w^ summed in float32) and the float32 one f
// (x . w, summed in float32) differ by at most
//   D = |dx| |w^_j| + |x| |dw_j| + g (|x^| |w^_j| + |x| |w_j|),   g = 1.01 K 2^-24
// (L2 norms; x^ . w^ - x . w = dx . w^ + x . dw; each float32 sum of K products errs by at most
// g times the sum of their magnitudes), with the head's largest column norms of w^, dw and w
// (`norms`) in place of column j's. The argmax column j* then has a_j* >= f_j* - D >= f_m - D >=
// a_m - 2D for the largest screened product a_m: every column within 2D of a_m is computed
// exactly, every column tied for the largest float32 product among them. Margin: 2.5 D (the
// norms' own rounding), plus the flushed denormals of AMX (DAZ/FTZ: below 1.2e-38 per term).
// The rounding residuals are measured, not bounded: |dx| is about a third of 2^-8 |x| on real
// data, so the margin is about 3 times tighter than the worst case.
// Read every tile instead (as PackedArgmax) without AMX, for more than 16 rows, for a
// non-finite or huge x or head (|x| * norm > 1e30: no product can overflow), or where more than
// a sixteenth of the tiles would be computed exactly.
template <ffi::DataType T>
ffi::Error PackedArgmaxScreened(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x,
                                ffi::Buffer<T> w, ffi::Buffer<ffi::BF16> screen,
                                ffi::Buffer<ffi::F32> norms, int64_t columns,
                                ffi::ResultBuffer<ffi::F32> best,
                                ffi::ResultBuffer<ffi::S32> column) {
  const auto bad = ffi::Error::InvalidArgument(
      "marco_packed_argmax_screened: expected x [M, K], w [N / 32, K, 32], screen "
      "[ceil(N / 64), ceil(K / 32), 4, 16, 16, 2], norms [3], 0 < columns <= N, best and column "
      "[M, slots, 32]");
  const auto xd = x.dimensions(), wd = w.dimensions(), sd = screen.dimensions();
  if (!ArgmaxShapesOk(xd, wd, columns, best->dimensions(), column->dimensions())) return bad;
  const int64_t m = xd[0], k = xd[1], tiles = wd[0];
  const int64_t chunks = (k + marco::kScreenChunk - 1) / marco::kScreenChunk;
  const int64_t groups = (tiles * kTile + marco::kScreenGroup - 1) / marco::kScreenGroup;
  if (sd.size() != 6 || sd[0] != groups || sd[1] != chunks || sd[2] != 4 || sd[3] != 16 ||
      sd[4] != 16 || sd[5] != 2 || norms.element_count() != 3) {
    return bad;
  }
  const int64_t slots = best->dimensions()[1];
  float* best_data = best->typed_data();
  int32_t* column_data = column->typed_data();
  std::fill_n(best_data, best->element_count(), -__builtin_inff());
  std::fill_n(column_data, column->element_count(), static_cast<int32_t>(columns));
  if (m == 0) return ffi::Error::Success();
  const float* xs = x.typed_data();
  auto read_every_tile = [&] {
    screen_stats[1].fetch_add(1, std::memory_order_relaxed);
    FullArgmax(pool, xs, m, k, w.typed_data(), columns, best_data, column_data, slots);
    return ffi::Error::Success();
  };
  // The head's largest column norms: of w^, of dw = w^ - w, of w.
  const double w_hat = norms.typed_data()[0], dw = norms.typed_data()[1],
               w_norm = norms.typed_data()[2];
  if (!marco::AmxReady() || m > marco::kScreenRows || !(std::max({w_hat, dw, w_norm}) <= 1e30)) {
    return read_every_tile();
  }
  // x rounded to bf16 (nearest even), zero-padded to whole chunks; each row's margin.
  std::vector<uint16_t> x_bf16(m * chunks * marco::kScreenChunk, 0);
  float margin[marco::kScreenRows];
  const double g = 1.01 * static_cast<double>(k) * 0x1p-24;
  for (int64_t r = 0; r < m; ++r) {
    double x2 = 0, dx2 = 0, x_hat2 = 0;
    for (int64_t i = 0; i < k; ++i) {
      const float v = xs[r * k + i];
      if (!(std::fabs(v) <= 1e30f)) return read_every_tile();
      uint32_t bits;
      std::memcpy(&bits, &v, sizeof(bits));
      bits += 0x7fff + ((bits >> 16) & 1);
      const uint16_t rounded = static_cast<uint16_t>(bits >> 16);
      x_bf16[r * chunks * marco::kScreenChunk + i] = rounded;
      const uint32_t wide = static_cast<uint32_t>(rounded) << 16;
      float v_hat;
      std::memcpy(&v_hat, &wide, sizeof(v_hat));
      x2 += static_cast<double>(v) * v;
      x_hat2 += static_cast<double>(v_hat) * v_hat;
      dx2 += (static_cast<double>(v_hat) - v) * (static_cast<double>(v_hat) - v);
    }
    const double x_norm = std::sqrt(x2), x_hat = std::sqrt(x_hat2), dx = std::sqrt(dx2);
    if (!(x_norm * std::max(w_hat, w_norm) <= 1e30)) return read_every_tile();
    const double d = dx * w_hat + x_norm * dw + g * (x_hat * w_hat + x_norm * w_norm);
    const double flushed = 2.4e-38 * static_cast<double>(k) * (1 + x_hat + w_hat);
    margin[r] = static_cast<float>(2.5 * d + flushed);
  }
  const int64_t screened_groups = (columns + marco::kScreenGroup - 1) / marco::kScreenGroup;
  const int64_t helpers = marco::Helpers(
      pool, m * k * screened_groups * marco::kScreenGroup >= kMinParallelFma, screened_groups);
  std::vector<ScreenHits> hits(helpers + 1);
  const uint16_t* screen_data = reinterpret_cast<const uint16_t*>(screen.typed_data());
  auto start = [&](int64_t worker) {
    hits[worker].groups.clear();
    hits[worker].maxima.clear();
    std::fill_n(hits[worker].floor, marco::kScreenRows, -__builtin_inff());
  };
  auto screen_groups = [&](int64_t g0, int64_t g1, int64_t worker) {
    ScreenHits& mine = hits[worker];
    alignas(64) float products[marco::kScreenRows * marco::kScreenGroup];
    marco::ConfigureScreenTiles(m);
    for (int64_t g = g0; g < g1; ++g) {
      marco::ScreenGroup(x_bf16.data(), chunks, screen_data + g * chunks * marco::kScreenGroupValues,
                         products);
      const int64_t valid = std::min(marco::kScreenGroup, columns - g * marco::kScreenGroup);
      if (valid < marco::kScreenGroup) {  // columns past `columns` never count
        for (int64_t r = 0; r < m; ++r) {
          std::fill_n(products + r * marco::kScreenGroup + valid, marco::kScreenGroup - valid,
                      -__builtin_inff());
        }
      }
      Vec16 row_max[marco::kScreenRows];
      Int16 over = {};
      for (int64_t r = 0; r < m; ++r) {
        const float* p = products + r * marco::kScreenGroup;
        const Vec16 a = Load(p), b = Load(p + 16), d = Load(p + 32), e = Load(p + 48);
        const Vec16 ab = a > b ? a : b, de = d > e ? d : e;
        row_max[r] = ab > de ? ab : de;
        over |= row_max[r] >= marco::Splat(mine.floor[r]);
      }
      bool hit = false;
      for (int i = 0; i < 16; ++i) hit |= over[i] != 0;
      if (!hit) continue;
      mine.groups.push_back(g);
      for (int64_t r = 0; r < m; ++r) {
        float most = row_max[r][0];
        for (int i = 1; i < 16; ++i) most = std::max(most, row_max[r][i]);
        mine.maxima.push_back(most);
        mine.floor[r] = std::max(mine.floor[r], most - margin[r]);
      }
    }
    marco::ReleaseScreenTiles();
  };
  marco::ShareOut(pool, screened_groups, helpers, start, screen_groups);
  // Every worker's floor is at most the final one, so a group no worker kept is ruled out.
  float floor[marco::kScreenRows];
  for (int64_t r = 0; r < m; ++r) {
    float most = -__builtin_inff();
    for (const ScreenHits& h : hits) {
      for (size_t i = 0; i < h.groups.size(); ++i) most = std::max(most, h.maxima[i * m + r]);
    }
    floor[r] = most - margin[r];
  }
  std::vector<int64_t> exact_tiles;
  for (const ScreenHits& h : hits) {
    for (size_t i = 0; i < h.groups.size(); ++i) {
      bool kept = false;
      for (int64_t r = 0; r < m; ++r) kept |= h.maxima[i * m + r] >= floor[r];
      if (!kept) continue;
      for (int64_t t = h.groups[i] * 2; t < h.groups[i] * 2 + 2 && t * kTile < columns; ++t) {
        exact_tiles.push_back(t);
      }
    }
  }
  const int64_t read_tiles = (columns + kTile - 1) / kTile;
  if (static_cast<int64_t>(exact_tiles.size()) > std::max<int64_t>(16, read_tiles / 16)) {
    return read_every_tile();
  }
  std::sort(exact_tiles.begin(), exact_tiles.end());
  using W = std::remove_pointer_t<decltype(w.typed_data())>;
  Panel<W> panel{xs, m, k, read_tiles};
  panel.w[0] = w.typed_data();
  panel.greedy = true;
  panel.columns = columns;
  panel.slots = slots;
  panel.best = best_data;
  panel.best_column = column_data;
  // Shared out as PackedArgmax shares its tiles: each worker's tiles in increasing order, its
  // running maxima in its own slot.
  const int64_t exact = static_cast<int64_t>(exact_tiles.size());
  const int64_t exact_helpers = marco::Helpers(pool, m * k * exact * kTile >= kMinParallelFma,
                                               std::min(slots, exact) - 1);
  auto start_exact = [&](int64_t) { Panel<W>::Running().Start(m); };
  auto exact_pass = [&](int64_t i0, int64_t i1, int64_t worker) {
    for (int64_t i = i0; i < i1; ++i) panel.Track(exact_tiles[i]);
    panel.Publish(worker);
  };
  marco::ShareOut(pool, exact, exact_helpers, start_exact, exact_pass);
  screen_stats[0].fetch_add(1, std::memory_order_relaxed);
  screen_stats[2].fetch_add(static_cast<int64_t>(exact_tiles.size()), std::memory_order_relaxed);
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

XLA_FFI_DEFINE_HANDLER_SYMBOL(MarcoPackedArgmaxScreened, PackedArgmaxScreened<ffi::F32>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("columns")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MarcoPackedArgmaxScreenedBf16, PackedArgmaxScreened<ffi::BF16>,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::BF16>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Attr<int64_t>("columns")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::S32>>());

// Whether the screened greedy kernel can use AMX tiles in this process (1) or reads every tile.
extern "C" int MarcoAmxScreenReady() { return marco::AmxReady() ? 1 : 0; }

// screen_stats (above) into out[3].
extern "C" void MarcoScreenStats(int64_t* out) {
  for (int i = 0; i < 3; ++i) out[i] = screen_stats[i].load(std::memory_order_relaxed);
}
