// Attention of one decode step over the CPU KV cache: per item i = (row, kv head), the group's
// G query heads q[i] [G, D] against keys k[i] [D, S] (keys-minor) and values v[i] [S, D], slots
// masked by valid[row] [S]; fp32 throughout; an XLA FFI custom call for
// marco_jax/model/attention.py.
//
// Why: XLA:CPU ran the step's attention as five small fusions per layer (two batched dots and
// the softmax's reductions), 150-200 us a layer at batch 8 and 256 slots on a 2-core CPU (the
// keys and values are 2 MB: ~65 us to read), and every slot is read, written or not. Here each
// item is one pass over its keys and one over its values, both in address order; keys of
// 16-slot vectors with no live slot and values of dead slots (not yet written, or padding) are
// never read (their probabilities are exactly 0: exp(mask - max) underflows); the items are
// shared out over XLA's intra-op thread pool.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "attention_items.h"
#include "share_out.h"
#include "simd.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// Below this many bytes of keys and values the call runs on the calling thread alone.
constexpr int64_t kMinParallelBytes = 1 << 20;

using marco::AttendItem;
using marco::kLanes;
using marco::NewSlot;
using marco::RowSlots;
using marco::Shapes;
using marco::WriteSlot;

// Shapes of a call's operands, or false: q [B*K, G, D], k [B*K, D, S], v [B*K, S, D], valid
// [B, S], out [B*K, G, D].
bool ShapesOf(ffi::Span<const int64_t> qd, ffi::Span<const int64_t> kd,
              ffi::Span<const int64_t> vd, ffi::Span<const int64_t> md,
              ffi::Span<const int64_t> od, Shapes& s) {
  const bool ranks = qd.size() == 3 && kd.size() == 3 && vd.size() == 3 && md.size() == 2 &&
                     od.size() == 3;
  if (!ranks || kd[0] != qd[0] || vd[0] != qd[0] || kd[1] != qd[2] || vd[2] != qd[2] ||
      vd[1] != kd[2] || md[1] != kd[2] || md[0] < 1 || qd[0] % md[0] != 0 ||
      qd[2] % kLanes != 0 || od[0] != qd[0] || od[1] != qd[1] || od[2] != qd[2]) {
    return false;
  }
  s = Shapes{qd[0], qd[0] / md[0], qd[1], qd[2], kd[2], (kd[2] + kLanes - 1) / kLanes * kLanes};
  return true;
}

// Every item's attention; with `write`, each item's new key and value first go into the cache
// (kp, vp), which is otherwise only read.
void Attend(ffi::ThreadPool& pool, const Shapes& s, const float* qp, float* kp, float* vp,
            const bool* mp, float scale, float mask_value, float* op, const NewSlot* write) {
  const int64_t rows = s.items / s.kv_heads;
  thread_local std::vector<RowSlots> row_slots;
  if (static_cast<int64_t>(row_slots.size()) < rows) row_slots.resize(rows);
  for (int64_t r = 0; r < rows; ++r) row_slots[r].Set(mp + r * s.slots, s.slots, s.padded);
  const RowSlots* row_of = row_slots.data();
  const int64_t bytes = s.items * 2 * s.dim * s.slots * 4;
  const int64_t helpers = marco::Helpers(pool, bytes >= kMinParallelBytes, s.items - 1);
  auto start = [](int64_t) {};
  auto items = [&](int64_t i0, int64_t i1, int64_t) {
    for (int64_t i = i0; i < i1; ++i) {
      if (write != nullptr) {
        WriteSlot(s, i, kp, vp, write->k + i * s.dim, write->v + i * s.dim, write->slot);
      }
      AttendItem(s, qp + i * s.groups * s.dim, kp + i * s.dim * s.slots,
                 vp + i * s.slots * s.dim, row_of[i / s.kv_heads], scale, mask_value,
                 op + i * s.groups * s.dim);
    }
  };
  marco::ShareOut(pool, s.items, helpers, start, items);
}

ffi::Error DecodeAttention(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                           ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                           ffi::Buffer<ffi::PRED> valid, float scale, float mask_value,
                           ffi::ResultBuffer<ffi::F32> out) {
  Shapes s;
  if (!ShapesOf(q.dimensions(), k.dimensions(), v.dimensions(), valid.dimensions(),
                out->dimensions(), s)) {
    return ffi::Error::InvalidArgument(
        "marco_decode_attention: expected q [B*K, G, D], k [B*K, D, S], v [B*K, S, D], valid "
        "[B, S], out [B*K, G, D], D a multiple of 16");
  }
  Attend(pool, s, q.typed_data(), k.typed_data(), v.typed_data(), valid.typed_data(), scale,
         mask_value, out->typed_data(), nullptr);
  return ffi::Error::Success();
}

// DecodeAttention after writing the step's keys and values (k_new, v_new [B*K, D]) into the
// cache at slot `slot` (clamped into [0, S), as XLA's dynamic-update-slice clamps): the cache
// operands are aliased to k_out and v_out (XLA's input_output_aliases), updated in place.
ffi::Error DecodeAttentionWrite(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q,
                                ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                                ffi::Buffer<ffi::F32> k_new, ffi::Buffer<ffi::F32> v_new,
                                ffi::Buffer<ffi::S32> slot, ffi::Buffer<ffi::PRED> valid,
                                float scale, float mask_value, ffi::ResultBuffer<ffi::F32> out,
                                ffi::ResultBuffer<ffi::F32> k_out,
                                ffi::ResultBuffer<ffi::F32> v_out) {
  Shapes s;
  const auto nd = k_new.dimensions(), vnd = v_new.dimensions();
  if (!ShapesOf(q.dimensions(), k_out->dimensions(), v_out->dimensions(), valid.dimensions(),
                out->dimensions(), s) || nd.size() != 2 || vnd.size() != 2 ||
      nd[0] != s.items || nd[1] != s.dim || vnd[0] != s.items || vnd[1] != s.dim ||
      slot.element_count() != 1) {
    return ffi::Error::InvalidArgument(
        "marco_decode_attention_write: expected q [B*K, G, D], k [B*K, D, S], v [B*K, S, D], "
        "k_new and v_new [B*K, D], slot [], valid [B, S], out [B*K, G, D], D a multiple of 16");
  }
  const int64_t last = std::max<int64_t>(0, s.slots - 1);
  const NewSlot write{k_new.typed_data(), v_new.typed_data(),
                      std::clamp<int64_t>(slot.typed_data()[0], 0, last)};
  Attend(pool, s, q.typed_data(), k_out->typed_data(), v_out->typed_data(), valid.typed_data(),
         scale, mask_value, out->typed_data(), &write);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MarcoDecodeAttention, DecodeAttention,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Attr<float>("scale")
                                  .Attr<float>("mask_value")
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(MarcoDecodeAttentionWrite, DecodeAttentionWrite,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::PRED>>()
                                  .Attr<float>("scale")
                                  .Attr<float>("mask_value")
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
