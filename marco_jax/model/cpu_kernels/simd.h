// 16-lane vectors of GCC's vector extensions (AVX-512, two AVX2 or four NEON registers, whichever
// -march=native gives), with unaligned loads and stores.
#pragma once

#include <cstdint>
#include <cstring>

namespace marco {

typedef float Vec16 __attribute__((vector_size(64)));
typedef uint16_t Half16 __attribute__((vector_size(32)));
typedef uint32_t Word16 __attribute__((vector_size(64)));
typedef int32_t Int16 __attribute__((vector_size(64)));

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

inline Vec16 Splat(float x) { return Vec16{} + x; }

}  // namespace marco
