// Portable SIMD through GCC/Clang vector extensions: the register width the build targets.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

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


// sign * v + t for sign = +-1: exact either way (sign * v has no rounding), so one fused
// multiply-add where the target has it gives the same bits as the separate multiply and add.
template <typename V>
inline V fused_sign_add(V sign, V v, V t) {
#if defined(__FMA__) || defined(__AVX512F__)
  using E = std::remove_reference_t<decltype(v[0])>;
  if constexpr (sizeof(V) == 64 && std::is_same_v<E, float>) return (V)_mm512_fmadd_ps((__m512)sign, (__m512)v, (__m512)t);
  if constexpr (sizeof(V) == 64 && std::is_same_v<E, double>) return (V)_mm512_fmadd_pd((__m512d)sign, (__m512d)v, (__m512d)t);
  if constexpr (sizeof(V) == 32 && std::is_same_v<E, float>) return (V)_mm256_fmadd_ps((__m256)sign, (__m256)v, (__m256)t);
  if constexpr (sizeof(V) == 32 && std::is_same_v<E, double>) return (V)_mm256_fmadd_pd((__m256d)sign, (__m256d)v, (__m256d)t);
#endif
  return sign * v + t;
}

}  // namespace hadainit
