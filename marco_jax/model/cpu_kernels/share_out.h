// Work shared out over XLA's intra-op thread pool: chunks of [0, count) claimed by whichever
// thread asks next. The caller works too, so a call finishes even if no pool thread ever starts;
// a task that starts late finds no chunk left and touches nothing of the caller's.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace marco {

// Pool threads worth asking to help: none for small work (handing work out costs more than it
// saves), else up to `at_most`, and never more than the cores less the caller's (XLA's pool has
// a thread per forced host device, --xla_force_host_platform_device_count, which may exceed the
// cores).
inline int64_t Helpers(xla::ffi::ThreadPool& pool, bool worth_it, int64_t at_most) {
  if (!worth_it) return 0;
  // Asked once per process: glibc answers hardware_concurrency() from the kernel on every call
  // (5.7 us on a 2-core VM, more than a whole 128 x 128 one-row matmul takes).
  static const int64_t cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
  return std::max<int64_t>(0, std::min({static_cast<int64_t>(pool.num_threads()), cores - 1,
                                        at_most}));
}

// body(begin, end, worker) over chunks of [0, count), about four per thread (even shares when
// one starts late); worker 0 is the caller, 1..helpers the pool's threads. start(worker) runs on
// a worker before its first chunk. Returns when every chunk is done: `start` and `body` are only
// called for a claimed chunk, which the caller waits for, so they may refer to its stack.
template <typename Start, typename Body>
void ShareOut(xla::ffi::ThreadPool& pool, int64_t count, int64_t helpers, const Start& start,
              const Body& body) {
  if (count <= 0) return;
  struct State {
    std::atomic<int64_t> next{0};
    std::atomic<int64_t> done{0};
    int64_t count = 0, chunk = 1;
    const Start* start = nullptr;
    const Body* body = nullptr;

    void Run(int64_t worker) {
      for (bool first = true;; first = false) {
        const int64_t c0 = next.fetch_add(chunk, std::memory_order_relaxed);
        if (c0 >= count) return;
        if (first) (*start)(worker);
        const int64_t c1 = std::min(count, c0 + chunk);
        (*body)(c0, c1, worker);
        done.fetch_add(c1 - c0, std::memory_order_release);
      }
    }
  };
  auto state = std::make_shared<State>();
  state->count = count;
  state->chunk = std::max<int64_t>(1, count / (4 * (helpers + 1)));
  state->start = &start;
  state->body = &body;
  for (int64_t i = 0; i < helpers; ++i) pool.Schedule([state, i]() { state->Run(i + 1); });
  state->Run(0);
  while (state->done.load(std::memory_order_acquire) < count) std::this_thread::yield();
}

// Relaxes a waiting core (x86 pause, Arm yield) without giving up the thread.
inline void Relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield");
#endif
}

// One call's work in phases that depend on each other (a decode layer: q/k/v, attention, o,
// gate/up, down): Run(p, count, chunk) opens phase p, every worker claims chunks of [0, count)
// of the open phase, and Run returns when all are done; the caller then does what the next phase
// needs on its own (a norm) and opens it. The helpers are asked from the pool once per call,
// not once per phase, and wait for the next phase spinning (then yielding): at a small decode
// step's sizes a hand-off to the pool cost about what the work it hands off does. Phases run in
// increasing order, each once, at most kMaxPhases. As ShareOut, the caller works too and only
// claimed chunks touch `body` (which may refer to the caller's stack); a helper that starts late
// joins the phase open then, or finds the call finished (the destructor) and returns.
template <typename Body>
class PhasedWork {
 public:
  static constexpr int kMaxPhases = 8;

  // body(phase, begin, end, worker); worker 0 is the caller, 1..helpers the pool's threads.
  PhasedWork(xla::ffi::ThreadPool& pool, int64_t helpers, const Body& body)
      : state_(std::make_shared<State>()) {
    state_->body = &body;
    for (int64_t i = 0; i < helpers; ++i) {
      pool.Schedule([state = state_, i]() { state->Help(i + 1); });
    }
  }
  ~PhasedWork() { state_->open.store(kFinished, std::memory_order_release); }
  PhasedWork(const PhasedWork&) = delete;
  PhasedWork& operator=(const PhasedWork&) = delete;

  void Run(int phase, int64_t count, int64_t chunk) {
    State& s = *state_;
    if (count <= 0) return;
    s.count[phase] = count;
    s.chunk[phase] = std::max<int64_t>(1, chunk);
    s.next[phase].store(0, std::memory_order_relaxed);
    s.done[phase].store(0, std::memory_order_relaxed);
    s.open.store(phase, std::memory_order_release);
    s.Claim(phase, 0);
    // A helper descheduled in the middle of a chunk (more threads than cores) is waited for by
    // yielding, after a short spin, not by spinning on its core.
    for (int idle = 0; s.done[phase].load(std::memory_order_acquire) < count;) {
      if (++idle < kSpins) {
        Relax();
      } else {
        std::this_thread::yield();
      }
    }
  }

 private:
  static constexpr int kFinished = -2;
  static constexpr int kSpins = 1 << 12;  // pauses before a waiting helper starts yielding

  struct State {
    std::atomic<int> open{-1};
    std::atomic<int64_t> next[kMaxPhases] = {};
    std::atomic<int64_t> done[kMaxPhases] = {};
    int64_t count[kMaxPhases] = {}, chunk[kMaxPhases] = {};
    const Body* body = nullptr;

    void Claim(int phase, int64_t worker) {
      for (;;) {
        const int64_t c0 = next[phase].fetch_add(chunk[phase], std::memory_order_relaxed);
        if (c0 >= count[phase]) return;
        const int64_t c1 = std::min(count[phase], c0 + chunk[phase]);
        (*body)(phase, c0, c1, worker);
        done[phase].fetch_add(c1 - c0, std::memory_order_release);
      }
    }

    void Help(int64_t worker) {
      int seen = -1;
      for (int idle = 0;;) {
        const int phase = open.load(std::memory_order_acquire);
        if (phase == kFinished) return;
        if (phase != seen) {
          seen = phase;
          idle = 0;
          Claim(phase, worker);
        } else if (++idle < kSpins) {
          Relax();
        } else {
          std::this_thread::yield();
        }
      }
    }
  };

  std::shared_ptr<State> state_;
};

}  // namespace marco
