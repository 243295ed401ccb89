// A decode step's attention, item by item: item i = (batch row, kv head) is the group's G query
// heads q[i] [G, D] against keys k[i] [D, S] (keys-minor) and values v[i] [S, D], slots masked
// by valid[row] [S]; fp32 throughout. The pieces of decode_attention.cc and of the fused decode
// layer (decode_layer.cc); why they are built so: decode_attention.cc.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "simd.h"

namespace marco {

constexpr int64_t kLanes = 16;


// exp(x), float32, to about 1 ulp, for x <= 0: 2^n * e^r with n = round(x / ln 2), r = x - n ln 2
// (in two parts), e^r by Cephes' expf polynomial; 0 below -87.34 (where float32's exp underflows
// to denormals or 0; the softmax's masked slots sit far below); NaN stays NaN (clamped first, so
// the integer steps never see it).
inline Vec16 Exp(Vec16 x) {
  const Vec16 in = x;
  const Int16 under = (x >= -87.33654f) == 0;  // NaN too
  x = under ? Splat(-87.33654f) : x;
  const Vec16 fx = x * 1.44269504088896341f + 0.5f;
  Int16 n = __builtin_convertvector(fx, Int16);  // toward zero: floor below
  n = __builtin_convertvector(n, Vec16) > fx ? n - 1 : n;
  const Vec16 nf = __builtin_convertvector(n, Vec16);
  x = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  Vec16 y = Splat(1.9875691500e-4f);
  y = y * x + 1.3981999507e-3f;
  y = y * x + 8.3334519073e-3f;
  y = y * x + 4.1665795894e-2f;
  y = y * x + 1.6666665459e-1f;
  y = y * x + 5.0000001201e-1f;
  y = y * (x * x) + x + 1.0f;
  const Word16 bits = __builtin_convertvector(n + 127, Word16) << 23;  // n in [-126, 0]
  Vec16 scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const Vec16 out = under ? Splat(0.0f) : y * scale;
  return in != in ? in : out;
}

struct Shapes {
  int64_t items, kv_heads, groups, dim, slots;
  int64_t padded;  // slots rounded up to whole 16-slot vectors
};

// Prefetches, all into L2 (prefetcht2, __builtin_prefetch's locality 1). Keys: the rows two row
// blocks on (8 key rows: the next item's first rows near the end of an item's). Values: the
// live slot 32 on. Measured in one process (bench/bench_kernel_builds.py, caches cold, 2-core
// Intel Sapphire Rapids VM), the key rows read in address order with these prefetches against
// the earlier 64-slot chunks (each chunk's 64 key rows at the cache's slot stride, prefetched
// non-temporally): 0.47-0.61x the time per call at batch 1 and 8 with 192-1,100 live slots (11
// rounds); the same reads with non-temporal prefetches took 1.6-3.3x as long as into L2 (one
// process each); the values 32 slots on against 8: 0.91-0.97x (64: no better); 1, 3 or 4 row
// blocks ahead, or 8 rows side by side: no better than 2 and 4.
constexpr int64_t kKeyRowBlock = 4;  // key rows (head dims) multiplied at once
constexpr int64_t kKeysAheadBlocks = 2;
constexpr int64_t kValuesAhead = 32;
constexpr int kLocality = 1;
constexpr int64_t kMaxGroup = 8;  // query heads per kv head scored at once

// scores[g, 16j:16j+16] += sum over head dims d in [d0, d0 + R) of q[g, d] * keys[d, 16j:16j+16]
// for vectors j in [j0, j1) of the key rows (row stride `stride`), G query heads: the R rows are
// read side by side, left to right, and each score vector is loaded and stored once per R rows.
template <int G, int R>
void ScoreRowBlock(const float* q, int64_t dim, const float* keys, int64_t stride, int64_t d0,
                   int64_t j0, int64_t j1, float* scores, int64_t padded) {
  const float* rows = keys + d0 * stride;
  const float* ahead = rows + kKeysAheadBlocks * kKeyRowBlock * stride;
  for (int64_t j = j0; j < j1; ++j) {
    Vec16 key[R];
    for (int r = 0; r < R; ++r) {
      __builtin_prefetch(ahead + r * stride + j * kLanes, 0, kLocality);
      key[r] = Load(rows + r * stride + j * kLanes);
    }
    for (int g = 0; g < G; ++g) {
      float* out = scores + g * padded + j * kLanes;
      Vec16 acc = Load(out);
      for (int r = 0; r < R; ++r) acc += q[g * dim + d0 + r] * key[r];
      Store(out, acc);
    }
  }
}

// Every head dim's row, kKeyRowBlock at a time: scores[g, 16j:16j+16] for j in [j0, j1) (start
// from zeros), the sum over d in increasing order.
template <int G>
void ScoreRows(const float* q, int64_t dim, const float* keys, int64_t stride, int64_t j0,
               int64_t j1, float* scores, int64_t padded) {
  int64_t d = 0;
  for (; d + kKeyRowBlock <= dim; d += kKeyRowBlock) {
    ScoreRowBlock<G, kKeyRowBlock>(q, dim, keys, stride, d, j0, j1, scores, padded);
  }
  for (; d < dim; ++d) ScoreRowBlock<G, 1>(q, dim, keys, stride, d, j0, j1, scores, padded);
}

inline void ScoreRowsAnyGroup(const float* q, int64_t groups, int64_t dim, const float* keys,
                       int64_t stride, int64_t j0, int64_t j1, float* scores, int64_t padded) {
  for (int64_t g0 = 0; g0 < groups; g0 += kMaxGroup) {
    const float* qg = q + g0 * dim;
    float* out = scores + g0 * padded;
    switch (std::min(kMaxGroup, groups - g0)) {
      case 1: ScoreRows<1>(qg, dim, keys, stride, j0, j1, out, padded); break;
      case 2: ScoreRows<2>(qg, dim, keys, stride, j0, j1, out, padded); break;
      case 3: ScoreRows<3>(qg, dim, keys, stride, j0, j1, out, padded); break;
      case 4: ScoreRows<4>(qg, dim, keys, stride, j0, j1, out, padded); break;
      case 5: ScoreRows<5>(qg, dim, keys, stride, j0, j1, out, padded); break;
      case 6: ScoreRows<6>(qg, dim, keys, stride, j0, j1, out, padded); break;
      case 7: ScoreRows<7>(qg, dim, keys, stride, j0, j1, out, padded); break;
      default: ScoreRows<8>(qg, dim, keys, stride, j0, j1, out, padded); break;
    }
  }
}

// Which slots of a batch row count, worked out once per call (not per item of the row).
struct RowSlots {
  std::vector<int32_t> state;  // [padded]: 1 valid, 0 masked (the mask value), -1 past the slots
  std::vector<int32_t> live;  // slots whose values are weighed: the valid ones, every one if none
  std::vector<std::pair<int64_t, int64_t>> key_runs;  // runs [j0, j1) of 16-slot vectors
                                                      // holding a live slot: the keys read

  // Branch-free over the slots: it runs once per batch row on the calling thread before the
  // items are shared out, where a push_back per valid slot took ~9% of a batch-8 call's cycles
  // (perf; vocab-heavy heads 2 x 2 x 32, 192 of 255 slots live). Against that,
  // bench_kernel_builds.py --warm, 9 rounds: 0.925 [0.884, 0.938] at batch 8, 0.943 at batch 1.
  void Set(const bool* valid, int64_t slots, int64_t padded) {
    state.resize(padded);
    live.resize(slots);
    int64_t n = 0;
    for (int64_t t = 0; t < slots; ++t) {
      const int32_t on = valid[t] ? 1 : 0;
      state[t] = on;
      live[n] = static_cast<int32_t>(t);
      n += on;
    }
    std::fill(state.begin() + slots, state.end(), -1);
    const bool any = n > 0;
    if (!any) {  // none valid: uniform over every slot, as XLA's softmax
      for (int64_t t = 0; t < slots; ++t) live[t] = static_cast<int32_t>(t);
      n = slots;
    }
    live.resize(n);
    key_runs.clear();
    for (int64_t j = 0; j * kLanes < slots; ++j) {
      bool hit = !any;
      for (int64_t t = j * kLanes; t < std::min(slots, (j + 1) * kLanes); ++t) hit |= valid[t];
      if (!hit) continue;
      if (!key_runs.empty() && key_runs.back().second == j) {
        key_runs.back().second = j + 1;
      } else {
        key_runs.emplace_back(j, j + 1);
      }
    }
  }
};

// out[g, 16c:16c+16] = sum over live slots t of p[g, t] * v[t, 16c:16c+16] / total[g], for G
// query heads and DV vectors of columns at once: each live value row read once for the group.
template <int G, int DV>
void WeighBlock(const float* p, int64_t padded, const float* v, int64_t dim,
                const std::vector<int32_t>& live, const float* total, float* out) {
  Vec16 acc[G][DV];
  for (int g = 0; g < G; ++g) {
    for (int c = 0; c < DV; ++c) acc[g][c] = Vec16{};
  }
  const int64_t n = static_cast<int64_t>(live.size());
  for (int64_t i = 0; i < n; ++i) {
    const int64_t t = live[i];
    const float* vt = v + t * dim;
    if (i + kValuesAhead < n) {
      for (int c = 0; c < DV; ++c) {
        __builtin_prefetch(v + live[i + kValuesAhead] * dim + c * kLanes, 0, kLocality);
      }
    }
    Vec16 row[DV];
    for (int c = 0; c < DV; ++c) row[c] = Load(vt + c * kLanes);
    for (int g = 0; g < G; ++g) {
      const float pg = p[g * padded + t];
      for (int c = 0; c < DV; ++c) acc[g][c] += pg * row[c];
    }
  }
  for (int g = 0; g < G; ++g) {
    for (int c = 0; c < DV; ++c) Store(out + g * dim + c * kLanes, acc[g][c] / total[g]);
  }
}

template <int G>
void WeighColumns(int64_t vectors, const float* p, int64_t padded, const float* v, int64_t dim,
                  const std::vector<int32_t>& live, const float* total, float* out) {
  switch (vectors) {
    case 1: WeighBlock<G, 1>(p, padded, v, dim, live, total, out); return;
    case 2: WeighBlock<G, 2>(p, padded, v, dim, live, total, out); return;
    case 3: WeighBlock<G, 3>(p, padded, v, dim, live, total, out); return;
    default: WeighBlock<G, 4>(p, padded, v, dim, live, total, out); return;
  }
}

constexpr int64_t kWeighGroup = 6;  // query heads weighed at once: 6 x 4 accumulators + 4 loads

// Every query head's weighted values: blocks of up to 6 heads x 64 columns in registers.
inline void WeighValues(const float* p, int64_t groups, int64_t padded, const float* v,
                        int64_t dim,
                 const std::vector<int32_t>& live, const float* total, float* out) {
  for (int64_t c = 0; c < dim; c += 4 * kLanes) {
    const int64_t vectors = std::min<int64_t>(4, (dim - c) / kLanes);
    for (int64_t g = 0; g < groups; g += kWeighGroup) {
      const float* pg = p + g * padded;
      float* og = out + g * dim + c;
      switch (std::min(kWeighGroup, groups - g)) {
        case 1: WeighColumns<1>(vectors, pg, padded, v + c, dim, live, total + g, og); break;
        case 2: WeighColumns<2>(vectors, pg, padded, v + c, dim, live, total + g, og); break;
        case 3: WeighColumns<3>(vectors, pg, padded, v + c, dim, live, total + g, og); break;
        case 4: WeighColumns<4>(vectors, pg, padded, v + c, dim, live, total + g, og); break;
        case 5: WeighColumns<5>(vectors, pg, padded, v + c, dim, live, total + g, og); break;
        default: WeighColumns<6>(vectors, pg, padded, v + c, dim, live, total + g, og); break;
      }
    }
  }
}

// Item i's output out[i] [G, D].
inline void AttendItem(const Shapes& s, const float* q, const float* k, const float* v,
                const RowSlots& row, float scale, float mask_value, float* out) {
  const int64_t groups = s.groups, dim = s.dim, slots = s.slots;
  if (slots == 0) {  // nothing to attend to: zeros, as XLA's empty sums
    std::fill_n(out, groups * dim, 0.0f);
    return;
  }
  const int64_t padded = s.padded, whole = slots / kLanes;
  thread_local std::vector<float> scores;  // [G, padded]
  thread_local std::vector<float> total;  // [G]
  scores.assign(groups * padded, 0.0f);
  total.assign(groups, 0.0f);
  // Scores of the vectors holding a live slot. A last partial vector's key rows are copied into a
  // zero-padded [D, 16] buffer first (16 floats read past a row's end would be the next row's,
  // or past the cache); its missing slots' products, 0, are overwritten by the mask below.
  for (const auto& [j0, j1] : row.key_runs) {
    if (j0 < std::min(j1, whole)) {
      ScoreRowsAnyGroup(q, groups, dim, k, slots, j0, std::min(j1, whole), scores.data(), padded);
    }
    if (j1 <= whole) continue;
    thread_local std::vector<float> tail;  // [D, 16]
    tail.assign(dim * kLanes, 0.0f);
    for (int64_t d = 0; d < dim; ++d) {
      std::memcpy(tail.data() + d * kLanes, k + d * slots + whole * kLanes,
                  (slots - whole * kLanes) * sizeof(float));
    }
    ScoreRowsAnyGroup(q, groups, dim, tail.data(), kLanes, 0, 1, scores.data() + whole * kLanes,
                      padded);
  }
  // softmax over the slots, masked as XLA's path masks (scale, then the mask value); slots past
  // the end are -inf (probability 0). The max skips NaN scores as std::max(top, score) does.
  const Vec16 masked = Splat(mask_value), past = Splat(-__builtin_inff());
  for (int64_t g = 0; g < groups; ++g) {
    float* sc = scores.data() + g * padded;
    Vec16 tops = masked;
    for (int64_t b = 0; b < padded; b += kLanes) {
      Int16 state;
      std::memcpy(&state, row.state.data() + b, sizeof(state));
      const Vec16 x = Load(sc + b) * scale;
      const Vec16 m = state > 0 ? x : (state == 0 ? masked : past);
      Store(sc + b, m);
      tops = tops < m ? m : tops;
    }
    float top = mask_value;
    for (int i = 0; i < kLanes; ++i) top = std::max(top, tops[i]);
    Vec16 sum = Vec16{};
    for (int64_t b = 0; b < padded; b += kLanes) {
      const Vec16 p = Exp(Load(sc + b) - top);
      Store(sc + b, p);
      sum += p;
    }
    for (int i = 0; i < kLanes; ++i) total[g] += sum[i];
  }
  WeighValues(scores.data(), groups, padded, v, dim, row.live, total.data(), out);
}

// The step's own key and value per item ([items, D] each), written into the cache's slot `slot`
// by the thread that then reads the item: where XLA wrote them before the call (a
// dynamic-update-slice), the keys' column of slots, one value per cache line of D x S, cost
// 33-35 us a layer at batch 8 over 255 slots on a 2-core CPU, each line's miss paid twice.
struct NewSlot {
  const float* k;
  const float* v;
  int64_t slot;
};

// Item i's new key and value (D floats each) into its cache slot `slot` of kp and vp.
inline void WriteSlot(const Shapes& s, int64_t i, float* kp, float* vp, const float* key,
                      const float* value, int64_t slot) {
  if (s.slots == 0) return;
  float* keys = kp + i * s.dim * s.slots + slot;
  for (int64_t d = 0; d < s.dim; ++d) keys[d * s.slots] = key[d];
  std::memcpy(vp + (i * s.slots + slot) * s.dim, value, s.dim * sizeof(float));
}

}  // namespace marco
