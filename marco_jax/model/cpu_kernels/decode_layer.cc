// One decode step (one token per batch row) of a Qwen2 decoder layer on CPU in one XLA FFI call,
// for marco_jax/model/decode_layer.py: RMSNorm, the q/k/v projections and their biases, RoPE,
// the step's key and value written into the KV cache and attention over it, the o projection and
// the residual, RMSNorm, gate/up, silu(gate) * up, down and the residual. Weights are the packed
// tiles of packed_matmul.cc (float32 or bf16), activations and the cache float32.
//
// Why: the same step as five kernel calls (q/k/v, attention, o, gate/up, down) with XLA's fusions
// between them (norms, biases, rotations, residual adds: ~20 small ops a layer, ~1 us each to
// dispatch) handed work to the thread pool five times a layer, and at a small model's sizes a
// hand-off costs about what the work does. Here the pool is asked once per layer
// (marco::PhasedWork), the elementwise steps ride along with the phases that produce or consume
// their operands (bias and RoPE in each attention item, silu(gate) * up where a gate and an up
// tile meet, the residuals in the o and down tiles' stores), and only the two norms run between
// phases, on the calling thread. Measured in one process against the unfused step (2-core
// Sapphire Rapids VM, greedy, prompt 128 + 128 new tokens, 9 rounds taking turns; whole runs,
// prefill included): tiny-20m batch 8 0.945 [0.933, 0.965] (-79 us a step), batch 1 0.982;
// the layer-heavy bench model batch 8 0.924, batch 1 0.958 (bench/bench_decode_layer.py).
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <vector>

#include "attention_items.h"
#include "packed_tiles.h"
#include "share_out.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using marco::AttendItem;
using marco::Exp;
using marco::kLanes;
using marco::kTile;
using marco::Load;
using marco::RowSlots;
using marco::Shapes;
using marco::Splat;
using marco::Store;
using marco::Tile;
using marco::Vec16;
using marco::WriteSlot;

// Below this many multiply-adds a layer (rows x weights) the call runs on the calling thread
// alone (a helper's start costs more than it saves); the packed matmul's threshold per call.
// tiny-20m at batch 1 (196K a layer) against 2^18, which kept it on one thread
// (bench_decode_layer.py, 11 rounds): fused / unfused 0.942 and 0.951 (fp32, bf16 weights),
// where one thread gave 1.017 and 0.979.
constexpr int64_t kMinParallelFma = 1 << 17;
// The least weight bytes a worker claims at once: a run of contiguous tiles streams on through
// the hardware prefetchers, where a worker hopping between tiles others took restarts them.
// Against ~4 chunks a worker (phases timed by rdtsc, 3 runs each, taking turns): tiny-20m batch
// 8 q/k/v 7.1 -> 5.4 us, gate/up 16.9 -> 14.1; the layer-heavy model's phases unchanged.
constexpr int64_t kChunkBytes = 128 << 10;

enum Phase { kQkv, kAttention, kOut, kGateUp, kDown };

int64_t Tiles(int64_t n) { return (n + kTile - 1) / kTile; }

// x [n] -> scale * (x / rms(x)), as the model's RMSNorm in float32: x * rsqrt(mean(x^2) + eps),
// then times the scale (the sum of squares in 16 lanes, then across them: another order than
// XLA's).
void RmsNorm(const float* x, int64_t n, const float* scale, float eps, float* out) {
  Vec16 lanes{};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const Vec16 v = Load(x + i);
    lanes += v * v;
  }
  float sum = 0.0f;
  for (int j = 0; j < kLanes; ++j) sum += lanes[j];
  for (; i < n; ++i) sum += x[i] * x[i];
  const float r = 1.0f / std::sqrt(sum / static_cast<float>(n) + eps);
  i = 0;
  for (; i + kLanes <= n; i += kLanes) Store(out + i, Load(scale + i) * (Load(x + i) * r));
  for (; i < n; ++i) out[i] = scale[i] * (x[i] * r);
}

// silu(g) = g * sigmoid(g), sigmoid from exp(-|g|) (no overflow): 1 / (1 + e) for g >= 0, else
// e / (1 + e); exp to about 1 ulp (marco::Exp), NaN stays NaN.
inline Vec16 Silu(Vec16 g) {
  const Vec16 e = Exp(g < 0.0f ? g : -g);
  const Vec16 one = Splat(1.0f);
  return g * ((g >= 0.0f ? one : e) / (one + e));
}

// The first `n` (at most 32) floats of lo, hi to out.
inline void StoreTile(float* out, Vec16 lo, Vec16 hi, int64_t n) {
  if (n == kTile) {
    Store(out, lo);
    Store(out + 16, hi);
    return;
  }
  float both[kTile];
  Store(both, lo);
  Store(both + 16, hi);
  std::memcpy(out, both, n * sizeof(float));
}

struct Dims {
  int64_t rows, hidden, heads, kv_heads, dim, inter, slots;
};

template <typename W>
struct Layer {
  Dims d;
  const float* x;
  const float* norm1;
  const W* wq;
  const W* wk;
  const W* wv;
  const float* bq;
  const float* bk;
  const float* bv;
  const float* cos;
  const float* sin;
  float* k_cache;
  float* v_cache;
  int64_t slot;
  const bool* valid;
  const W* wo;
  const float* norm2;
  const W* wg;
  const W* wu;
  const W* wd;
  float eps, scale, mask_value;
  float* out;
};

// Bias, then RoPE (rotate-half, as the model's apply_rope: x * cos + rotated * sin) of `heads`
// heads of `dim` starting at raw, into out.
inline void BiasRope(const float* raw, const float* bias, const float* cos, const float* sin,
                     int64_t heads, int64_t dim, float* out) {
  const int64_t half = dim / 2;
  for (int64_t h = 0; h < heads; ++h) {
    const float* x = raw + h * dim;
    const float* b = bias + h * dim;
    float* o = out + h * dim;
    for (int64_t j = 0; j < dim; ++j) {
      const float xj = x[j] + b[j];
      const float rot = j < half ? -(x[j + half] + b[j + half]) : x[j - half] + b[j - half];
      o[j] = xj * cos[j] + rot * sin[j];
    }
  }
}

template <typename W>
void RunLayer(ffi::ThreadPool& pool, const Layer<W>& L) {
  const Dims& d = L.d;
  const int64_t b = d.rows, h = d.hidden, kvh = d.kv_heads, dim = d.dim, f = d.inter;
  const int64_t groups = d.heads / kvh, items = b * kvh;
  const int64_t tq = Tiles(d.heads * dim), tk = Tiles(kvh * dim), th = Tiles(h), tf = Tiles(f);
  const int64_t nq = tq * kTile, nk = tk * kTile, nh = th * kTile;  // padded widths
  const Shapes shapes{items, kvh, groups, dim, d.slots, (d.slots + kLanes - 1) / kLanes * kLanes};

  // Buffers of the calling thread, reached by the helpers through these pointers (a
  // thread_local named in the lambda below would be each thread's own).
  thread_local std::vector<float> buffers;
  thread_local std::vector<RowSlots> slots_of_rows;
  const int64_t sizes[] = {b * h, b * nq, b * nk, b * nk, b * d.heads * dim, b * nh, b * nh,
                           b * h, b * f, b * nh};
  int64_t total = 0;
  for (int64_t n : sizes) total += n;
  buffers.resize(total);
  float* at = buffers.data();
  float* parts[10];
  for (int i = 0; i < 10; ++i) {
    parts[i] = at;
    at += sizes[i];
  }
  float *xn = parts[0], *q = parts[1], *k = parts[2], *v = parts[3], *attn = parts[4];
  float *x_pad = parts[5], *x1 = parts[6], *xn2 = parts[7], *act = parts[8], *y = parts[9];
  // The slots each row attends to: the same mask for every layer of a step, so worked out again
  // only when it changed since this thread's last call (a byte compare, where working it out
  // took ~5 us a layer at batch 8 x 255 slots).
  thread_local std::vector<uint8_t> mask_of_rows;  // bool: PRED's bytes are 0 or 1
  thread_local int64_t mask_rows = -1;
  const int64_t mask_size = b * d.slots;
  if (mask_rows != b || static_cast<int64_t>(mask_of_rows.size()) != mask_size ||
      std::memcmp(mask_of_rows.data(), L.valid, mask_size) != 0) {
    mask_rows = b;
    if (static_cast<int64_t>(slots_of_rows.size()) < b) slots_of_rows.resize(b);
    for (int64_t r = 0; r < b; ++r) {
      slots_of_rows[r].Set(L.valid + r * d.slots, d.slots, shapes.padded);
    }
    mask_of_rows.resize(mask_size);
    std::memcpy(mask_of_rows.data(), L.valid, mask_size);
  }
  const RowSlots* row_slots = slots_of_rows.data();
  std::fill_n(x_pad, b * nh, 0.0f);
  for (int64_t r = 0; r < b; ++r) {
    RmsNorm(L.x + r * h, h, L.norm1, L.eps, xn + r * h);
    std::memcpy(x_pad + r * nh, L.x + r * h, h * sizeof(float));
  }

  auto body = [&](int phase, int64_t c0, int64_t c1, int64_t) {
    switch (phase) {
      case kQkv:
        for (int64_t t = c0; t < c1; ++t) {
          const W* w = t < tq ? L.wq : (t < tq + tk ? L.wk : L.wv);
          float* out = t < tq ? q : (t < tq + tk ? k : v);
          const int64_t local = t < tq ? t : (t < tq + tk ? t - tq : t - tq - tk);
          const int64_t n = t < tq ? nq : nk;
          auto store = [&](int64_t r, Vec16 lo, Vec16 hi) {
            Store(out + r * n + local * kTile, lo);
            Store(out + r * n + local * kTile + 16, hi);
          };
          Tile(xn, b, h, w, local, store);
        }
        break;
      case kAttention:
        for (int64_t i = c0; i < c1; ++i) {
          const int64_t row = i / kvh, head = i % kvh;
          thread_local std::vector<float> rows;  // the item's q [G, D], key [D], value [D]
          rows.resize((groups + 2) * dim);
          float* qi = rows.data();
          float* ki = qi + groups * dim;
          float* vi = ki + dim;
          const float* cos = L.cos + row * dim;
          const float* sin = L.sin + row * dim;
          BiasRope(q + row * nq + head * groups * dim, L.bq + head * groups * dim, cos,
                   sin, groups, dim, qi);
          BiasRope(k + row * nk + head * dim, L.bk + head * dim, cos, sin, 1, dim, ki);
          const float* vr = v + row * nk + head * dim;
          for (int64_t j = 0; j < dim; ++j) vi[j] = vr[j] + L.bv[head * dim + j];
          WriteSlot(shapes, i, L.k_cache, L.v_cache, ki, vi, L.slot);
          AttendItem(shapes, qi, L.k_cache + i * dim * d.slots, L.v_cache + i * d.slots * dim,
                     row_slots[row], L.scale, L.mask_value, attn + i * groups * dim);
        }
        break;
      case kOut:
        for (int64_t t = c0; t < c1; ++t) {
          auto store = [&](int64_t r, Vec16 lo, Vec16 hi) {
            const int64_t at = r * nh + t * kTile;
            Store(x1 + at, lo + Load(x_pad + at));
            Store(x1 + at + 16, hi + Load(x_pad + at + 16));
          };
          Tile(attn, b, d.heads * dim, L.wo, t, store);
        }
        break;
      case kGateUp:
        for (int64_t t = c0; t < c1; ++t) {
          thread_local std::vector<Vec16> gate;  // [b][2]
          gate.resize(2 * b);
          auto keep = [&](int64_t r, Vec16 lo, Vec16 hi) {
            gate[2 * r] = lo;
            gate[2 * r + 1] = hi;
          };
          Tile(xn2, b, h, L.wg, t, keep);
          const int64_t n = std::min(kTile, f - t * kTile);
          auto gated = [&](int64_t r, Vec16 lo, Vec16 hi) {
            StoreTile(act + r * f + t * kTile, Silu(gate[2 * r]) * lo,
                      Silu(gate[2 * r + 1]) * hi, n);
          };
          Tile(xn2, b, h, L.wu, t, gated);
        }
        break;
      case kDown:
        for (int64_t t = c0; t < c1; ++t) {
          auto store = [&](int64_t r, Vec16 lo, Vec16 hi) {
            const int64_t at = r * nh + t * kTile;
            Store(y + at, lo + Load(x1 + at));
            Store(y + at + 16, hi + Load(x1 + at + 16));
          };
          Tile(act, b, f, L.wd, t, store);
        }
        break;
      default:
        break;
    }
  };

  const int64_t weights = h * (nq + 2 * nk) + d.heads * dim * nh + 2 * h * tf * kTile + f * nh;
  const int64_t helpers = marco::Helpers(pool, b * weights >= kMinParallelFma, 64);
  const int64_t workers = helpers + 1;
  // Chunks of tiles: about four per worker (as marco::ShareOut), but at least kChunkBytes of
  // weights and at most a worker's even share.
  auto tiles_per_chunk = [&](int64_t count, int64_t tile_bytes) {
    const int64_t at_least = (kChunkBytes + tile_bytes - 1) / tile_bytes;
    return std::min((count + workers - 1) / workers, std::max(count / (4 * workers), at_least));
  };
  const int64_t w_bytes = sizeof(W) * kTile;
  marco::PhasedWork<decltype(body)> work(pool, helpers, body);
  work.Run(kQkv, tq + 2 * tk, tiles_per_chunk(tq + 2 * tk, w_bytes * h));
  work.Run(kAttention, items, items / (4 * workers));
  work.Run(kOut, th, tiles_per_chunk(th, w_bytes * d.heads * dim));
  for (int64_t r = 0; r < b; ++r) {
    RmsNorm(x1 + r * nh, h, L.norm2, L.eps, xn2 + r * h);
  }
  work.Run(kGateUp, tf, tiles_per_chunk(tf, 2 * w_bytes * h));
  work.Run(kDown, th, tiles_per_chunk(th, w_bytes * f));
  for (int64_t r = 0; r < b; ++r) {
    std::memcpy(L.out + r * h, y + r * nh, h * sizeof(float));
  }
}

bool Is(ffi::Span<const int64_t> dims, std::initializer_list<int64_t> want) {
  return dims.size() == want.size() && std::equal(want.begin(), want.end(), dims.begin());
}

template <ffi::DataType T>
ffi::Error DecodeLayer(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> norm1,
                       ffi::Buffer<T> wq, ffi::Buffer<T> wk, ffi::Buffer<T> wv,
                       ffi::Buffer<ffi::F32> bq, ffi::Buffer<ffi::F32> bk,
                       ffi::Buffer<ffi::F32> bv, ffi::Buffer<ffi::F32> cos,
                       ffi::Buffer<ffi::F32> sin, ffi::Buffer<ffi::F32>,
                       ffi::Buffer<ffi::F32>, ffi::Buffer<ffi::S32> slot,
                       ffi::Buffer<ffi::PRED> valid, ffi::Buffer<T> wo,
                       ffi::Buffer<ffi::F32> norm2, ffi::Buffer<T> wg, ffi::Buffer<T> wu,
                       ffi::Buffer<T> wd, float eps, float scale, float mask_value,
                       ffi::ResultBuffer<ffi::F32> out, ffi::ResultBuffer<ffi::F32> k_out,
                       ffi::ResultBuffer<ffi::F32> v_out) {
  using W = ffi::NativeType<T>;
  const auto xd = x.dimensions(), cd = cos.dimensions(), kd = k_out->dimensions();
  const auto bad = ffi::Error::InvalidArgument(
      "marco_decode_layer: expected x [B, H], norms [H], q/k/v tiles [ceil(N/32), H, 32] "
      "(N = heads x D, kv heads x D), biases [N], cos and sin [B, D] (D a multiple of 16), k "
      "cache [B*KV, D, S], v cache [B*KV, S, D], slot [], valid [B, S], o tiles "
      "[ceil(H/32), heads x D, 32], gate/up tiles [ceil(F/32), H, 32], down tiles "
      "[ceil(H/32), F, 32], out [B, H]");
  if (xd.size() != 2 || cd.size() != 2 || kd.size() != 3 || bq.dimensions().size() != 1 ||
      wd.dimensions().size() != 3) {
    return bad;
  }
  const int64_t rows = xd[0], h = xd[1], dim = cd[1];
  if (rows < 1 || dim < 1 || dim % kLanes != 0 || kd[0] % rows != 0 ||
      bq.dimensions()[0] % dim != 0) {
    return bad;
  }
  const int64_t kvh = kd[0] / rows, heads = bq.dimensions()[0] / dim, f = wd.dimensions()[1];
  const int64_t slots = kd[2];
  if (kvh < 1 || heads % kvh != 0 || !Is(cd, {rows, dim}) || !Is(sin.dimensions(), {rows, dim}) ||
      !Is(norm1.dimensions(), {h}) || !Is(norm2.dimensions(), {h}) ||
      !Is(wq.dimensions(), {Tiles(heads * dim), h, kTile}) ||
      !Is(wk.dimensions(), {Tiles(kvh * dim), h, kTile}) ||
      !Is(wv.dimensions(), {Tiles(kvh * dim), h, kTile}) ||
      !Is(bk.dimensions(), {kvh * dim}) || !Is(bv.dimensions(), {kvh * dim}) ||
      !Is(kd, {rows * kvh, dim, slots}) || !Is(v_out->dimensions(), {rows * kvh, slots, dim}) ||
      slot.element_count() != 1 || !Is(valid.dimensions(), {rows, slots}) ||
      !Is(wo.dimensions(), {Tiles(h), heads * dim, kTile}) ||
      !Is(wg.dimensions(), {Tiles(f), h, kTile}) || !Is(wu.dimensions(), {Tiles(f), h, kTile}) ||
      !Is(wd.dimensions(), {Tiles(h), f, kTile}) || !Is(out->dimensions(), {rows, h})) {
    return bad;
  }
  Layer<W> layer{Dims{rows, h, heads, kvh, dim, f, slots},
                 x.typed_data(), norm1.typed_data(), wq.typed_data(), wk.typed_data(),
                 wv.typed_data(), bq.typed_data(), bk.typed_data(), bv.typed_data(),
                 cos.typed_data(), sin.typed_data(), k_out->typed_data(), v_out->typed_data(),
                 std::clamp<int64_t>(slot.typed_data()[0], 0, std::max<int64_t>(0, slots - 1)),
                 valid.typed_data(), wo.typed_data(), norm2.typed_data(), wg.typed_data(),
                 wu.typed_data(), wd.typed_data(), eps, scale, mask_value, out->typed_data()};
  RunLayer(pool, layer);
  return ffi::Error::Success();
}

}  // namespace

// Operands in DecodeLayer's order; the caches (args 10 and 11) aliased to k_out and v_out.
#define MARCO_DECODE_LAYER_BINDING(T)                                                      \
  ffi::Ffi::Bind()                                                                          \
      .Ctx<ffi::ThreadPool>()                                                               \
      .Arg<ffi::Buffer<ffi::F32>>()                                                         \
      .Arg<ffi::Buffer<ffi::F32>>()                                                         \
      .Arg<ffi::Buffer<T>>()                                                                \
      .Arg<ffi::Buffer<T>>()                                                                \
      .Arg<ffi::Buffer<T>>()                                                                \
      .Arg<ffi::Buffer<ffi::F32>>()                                                         \
      .Arg<ffi::Buffer<ffi::F32>>()                                                         \
      .Arg<ffi::Buffer<ffi::F32>>()                                                         \
      .Arg<ffi::Buffer<ffi::F32>>()                                                         \
      .Arg<ffi::Buffer<ffi::F32>>()                                                         \
      .Arg<ffi::Buffer<ffi::F32>>()                                                         \
      .Arg<ffi::Buffer<ffi::F32>>()                                                         \
      .Arg<ffi::Buffer<ffi::S32>>()                                                         \
      .Arg<ffi::Buffer<ffi::PRED>>()                                                        \
      .Arg<ffi::Buffer<T>>()                                                                \
      .Arg<ffi::Buffer<ffi::F32>>()                                                         \
      .Arg<ffi::Buffer<T>>()                                                                \
      .Arg<ffi::Buffer<T>>()                                                                \
      .Arg<ffi::Buffer<T>>()                                                                \
      .Attr<float>("eps")                                                                   \
      .Attr<float>("scale")                                                                 \
      .Attr<float>("mask_value")                                                            \
      .Ret<ffi::Buffer<ffi::F32>>()                                                         \
      .Ret<ffi::Buffer<ffi::F32>>()                                                         \
      .Ret<ffi::Buffer<ffi::F32>>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(MarcoDecodeLayer, DecodeLayer<ffi::F32>,
                              MARCO_DECODE_LAYER_BINDING(ffi::F32));
XLA_FFI_DEFINE_HANDLER_SYMBOL(MarcoDecodeLayerBf16, DecodeLayer<ffi::BF16>,
                              MARCO_DECODE_LAYER_BINDING(ffi::BF16));
