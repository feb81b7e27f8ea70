// Portable SIMD through GCC/Clang vector extensions: the register width the build targets.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace hadainit {

#if defined(__AVX512F__)
constexpr int kVecBytes = 64;
#elif defined(__AVX__)
constexpr int kVecBytes = 32;
#else
constexpr int kVecBytes = 16;
#endif

template <typename T>
struct Simd {
  static constexpr int W = kVecBytes / static_cast<int>(sizeof(T));  // lanes
  using I = std::conditional_t<sizeof(T) == 8, int64_t, int32_t>;
  typedef T vec __attribute__((vector_size(kVecBytes)));
  typedef I ivec __attribute__((vector_size(kVecBytes)));
};

template <typename V, typename T>
inline V load(const T* p) {  // unaligned
  V v;
  std::memcpy(&v, p, sizeof(V));
  return v;
}

template <typename V, typename T>
inline void store(T* p, const V& v) {  // unaligned
  std::memcpy(p, &v, sizeof(V));
}

}  // namespace hadainit
