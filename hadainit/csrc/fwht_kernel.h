// The butterfly kernel of hadainit's fast Walsh–Hadamard transform (see fwht.cpp for the plan),
// as templates: fwht.cpp instantiates it plainly, reduced_step.cpp with a prologue that computes
// the input on the fly and an epilogue that consumes each output range while it is in cache.
#pragma once

#include "simd.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include <unistd.h>

namespace hadainit {
namespace fwht_kernel {

constexpr int kRadixBits = 3;                  // butterfly stages per sweep between registers (16 was slower)
constexpr int64_t kParallelBytes = 256 * 1024; // less work than this per thread is not split

// The blocking follows the caches of the machine it runs on, not of the one it was tuned on: an
// L2 of 512 KB (Zen 2/3, many Intel parts) cannot hold the 1 MB sub-segments that suit a 1 MB L2
// (Zen 4), and a sweep planned for the larger cache then runs from L3. Read once: sysconf on
// Linux/glibc, else 32 KB / 512 KB; HADAINIT_CACHE_BYTES="L1,L2" overrides (benchmarks, tests).
struct CachePlan {
  int64_t block;  // low bits: a block that stays in L1 (half of it: the rest holds the strips' neighbours)
  int64_t l1;     // high bits: a column strip that stays in L1
  int64_t strip;  // high bits: a column strip that stays in L2 (half of it)
  int64_t fuse;   // segments up to this size: one thread, start to end, in L2
};

inline int64_t pow2_floor(int64_t v) {
  int64_t p = 1;
  while (p * 2 <= v) p *= 2;
  return p;
}

inline CachePlan make_cache_plan() {
  int64_t l1 = 0, l2 = 0;
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE)
  l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE);
  l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
#endif
  if (const char* env = std::getenv("HADAINIT_CACHE_BYTES")) {
    long long a = 0, b = 0;
    if (std::sscanf(env, "%lld,%lld", &a, &b) == 2 && a > 0 && b > 0) l1 = a, l2 = b;
  }
  if (l1 < 8 * 1024 || l1 > 1024 * 1024) l1 = 32 * 1024;
  if (l2 < 64 * 1024 || l2 > 64 * 1024 * 1024) l2 = 512 * 1024;
  l1 = pow2_floor(l1);
  l2 = pow2_floor(l2);
  return CachePlan{l1 / 2, l1, l2 / 2, l2};
}

inline const CachePlan& cache_plan() {
  static const CachePlan plan = make_cache_plan();
  return plan;
}

inline bool is_pow2(int64_t v) { return v > 0 && (v & (v - 1)) == 0; }

inline int log2i(int64_t v) {
  int b = 0;
  while ((int64_t{1} << b) < v) ++b;
  return b;
}

// One butterfly stage between lanes l and l ^ H of one register.
template <typename T, int H>
inline typename Simd<T>::vec lane_stage(typename Simd<T>::vec v) {
  using S = Simd<T>;
  typename S::ivec idx;
  typename S::vec sign;
  for (int l = 0; l < S::W; ++l) {
    idx[l] = static_cast<typename S::I>(l ^ H);
    sign[l] = (l & H) ? T(-1) : T(1);
  }
  typename S::vec t = __builtin_shuffle(v, idx);
  return fused_sign_add(sign, v, t);  // lane l without bit H: v_l + v_(l+H); with it: v_(l-H) - v_l
}

// The stages at lane distances from, 2 from, ..., W / 2 (from a power of two below W).
template <typename T>
inline typename Simd<T>::vec lane_stages(typename Simd<T>::vec v, int64_t from) {
  constexpr int W = Simd<T>::W;
  if (from <= 1) v = lane_stage<T, 1>(v);
  if constexpr (W > 2) if (from <= 2) v = lane_stage<T, 2>(v);
  if constexpr (W > 4) if (from <= 4) v = lane_stage<T, 4>(v);
  if constexpr (W > 8) if (from <= 8) v = lane_stage<T, 8>(v);
  return v;
}

// R butterfly stages among the 2^R values v[0 .. 2^R).
template <typename X, int R>
inline void butterflies(X* v) {
#pragma GCC unroll 8
  for (int s = 0; s < R; ++s) {
    const int h = 1 << s;
#pragma GCC unroll 16
    for (int m = 0; m < (1 << R); ++m) {
      if (!(m & h)) {
        X a = v[m], b = v[m | h];
        v[m] = a + b;
        v[m | h] = a - b;
      }
    }
  }
}

// Radix-2^R butterflies of distance dist, for j in [0, width): among src[j + m * dist], m < 2^R,
// into dst (may be src). With Lanes, first the lane stages from lane distance `lanes_from` on each
// loaded register (then dist must be W: the 2^R registers are contiguous).
template <typename T, int R, bool Lanes = false>
inline void vertical(const T* src, T* dst, int64_t dist, int64_t width, int64_t lanes_from = 1) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int M = 1 << R;
  int64_t j = 0;
  for (; j + S::W <= width; j += S::W) {
    vec v[M];
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      v[m] = load<vec>(src + j + m * dist);
      if constexpr (Lanes) v[m] = lane_stages<T>(v[m], lanes_from);
    }
    butterflies<vec, R>(v);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) store(dst + j + m * dist, v[m]);
  }
  for (; j < width; ++j) {
    T v[M];
    for (int m = 0; m < M; ++m) v[m] = src[j + m * dist];
    butterflies<T, R>(v);
    for (int m = 0; m < M; ++m) dst[j + m * dist] = v[m];
  }
}

// The radix-2^R butterflies of distance dist over every group of dist << R elements in [0, len).
template <typename T, int R, bool Lanes = false>
void groups(const T* src, T* dst, int64_t dist, int64_t len, int64_t lanes_from = 1) {
  for (int64_t g = 0; g < len; g += dist << R) vertical<T, R, Lanes>(src + g, dst + g, dist, dist, lanes_from);
}

template <typename T, bool Lanes = false>
void groups_r(int r, const T* src, T* dst, int64_t dist, int64_t len, int64_t lanes_from = 1) {
  switch (r) {
    case 1: groups<T, 1, Lanes>(src, dst, dist, len, lanes_from); break;
    case 2: groups<T, 2, Lanes>(src, dst, dist, len, lanes_from); break;
    case 3: groups<T, 3, Lanes>(src, dst, dist, len, lanes_from); break;
    default: groups<T, 4, Lanes>(src, dst, dist, len, lanes_from); break;
  }
}

template <typename T>
void vertical_r(int r, const T* src, T* dst, int64_t dist, int64_t width) {
  switch (r) {
    case 1: vertical<T, 1>(src, dst, dist, width); break;
    case 2: vertical<T, 2>(src, dst, dist, width); break;
    case 3: vertical<T, 3>(src, dst, dist, width); break;
    default: vertical<T, 4>(src, dst, dist, width); break;
  }
}

// The first pass of a block when lanes hold several index values: the lane stages from lane distance
// From, then R stages between the 2^R contiguous registers of each group, over [0, len). One loop
// with everything known at compile time (a call per group, with the lane distance tested per
// register, cost as much as the arithmetic).
template <typename T, int R, int From>
void lane_groups(const T* src, T* dst, int64_t len) {
  using S = Simd<T>;
  using vec = typename S::vec;
  constexpr int M = 1 << R;
  for (int64_t g = 0; g < len; g += int64_t{S::W} * M) {
    vec v[M];
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) {
      v[m] = load<vec>(src + g + m * S::W);
      if constexpr (From <= 1) v[m] = lane_stage<T, 1>(v[m]);
      if constexpr (S::W > 2 && From <= 2) v[m] = lane_stage<T, 2>(v[m]);
      if constexpr (S::W > 4 && From <= 4) v[m] = lane_stage<T, 4>(v[m]);
      if constexpr (S::W > 8 && From <= 8) v[m] = lane_stage<T, 8>(v[m]);
    }
    butterflies<vec, R>(v);
#pragma GCC unroll 16
    for (int m = 0; m < M; ++m) store(dst + g + m * S::W, v[m]);
  }
}

template <typename T, int R>
void lane_groups_from(const T* src, T* dst, int64_t len, int64_t from) {
  switch (from) {
    case 1: lane_groups<T, R, 1>(src, dst, len); break;
    case 2: lane_groups<T, R, 2>(src, dst, len); break;
    case 4: lane_groups<T, R, 4>(src, dst, len); break;
    default: lane_groups<T, R, 8>(src, dst, len); break;
  }
}

template <typename T>
void lane_pass(int r, const T* src, T* dst, int64_t len, int64_t from) {
  switch (r) {
    case 1: lane_groups_from<T, 1>(src, dst, len, from); break;
    case 2: lane_groups_from<T, 2>(src, dst, len, from); break;
    case 3: lane_groups_from<T, 3>(src, dst, len, from); break;
    default: lane_groups_from<T, 4>(src, dst, len, from); break;
  }
}

// Bits [0, kb) of the index along n, for one block of inner << kb contiguous elements. When inner is a
// power of two below a register, the first pass reads src once and does the lane stages and the
// next R bits together; the later passes are in place in dst (in L1).
template <typename T>
void block_low(const T* src, T* dst, int64_t inner, int kb) {
  using S = Simd<T>;
  const int64_t len = inner << kb;
  const T* from = src;
  int b = 0;
  if (is_pow2(inner) && inner < S::W && len >= S::W) {
    b = log2i(S::W / inner);  // the lane bits
    const int r = std::min(kRadixBits, kb - b);
    if (r == 0) {
      for (int64_t j = 0; j < len; j += S::W) store(dst + j, lane_stages<T>(load<typename S::vec>(src + j), inner));
    } else {
      lane_pass<T>(r, src, dst, len, inner);
    }
    b += r;
    from = dst;
  }
  while (b < kb) {
    const int r = std::min(kRadixBits, kb - b);
    groups_r<T>(r, from, dst, inner << b, len);
    from = dst;
    b += r;
  }
  if (from != dst) std::memcpy(dst, src, len * sizeof(T));  // kb == 0: nothing to do in this block
}

// Columns per strip: rows * width * sizeof(T) about budget, whole cache lines, at most a row.
template <typename T>
int64_t strip_width(int64_t block_len, int64_t rows, int64_t budget) {
  const int64_t line = 64 / static_cast<int64_t>(sizeof(T));
  const int64_t w = budget / (rows * static_cast<int64_t>(sizeof(T)));
  return std::min(block_len, std::max(line, w / line * line));
}

// Bits [kb, bits) for the columns [c0, c0 + w) of a segment seen as rows of block_len elements.
template <typename T>
void strip_high(T* seg, int64_t block_len, int kb, int bits, int64_t c0, int64_t w) {
  const int64_t rows = int64_t{1} << (bits - kb);
  for (int b = kb; b < bits;) {
    const int r = std::min(kRadixBits, bits - b);
    const int64_t step = int64_t{1} << (b - kb);  // partner distance in rows
    for (int64_t g = 0; g < rows; g += step << r) {
      for (int64_t m = 0; m < step; ++m) {
        T* p = seg + (g + m) * block_len + c0;
        vertical_r<T>(r, p, p, step * block_len, w);
      }
    }
    b += r;
  }
}

// Bits [kb, bits) of one segment, in column strips whose rows fill about budget bytes.
template <typename T>
void high_bits(T* seg, int64_t block_len, int kb, int bits, int64_t budget) {
  const int64_t w = strip_width<T>(block_len, int64_t{1} << (bits - kb), budget);
  for (int64_t c0 = 0; c0 < block_len; c0 += w) strip_high<T>(seg, block_len, kb, bits, c0, std::min(w, block_len - c0));
}

// No prologue: the input is read from src.
struct NoPrologue {
  static constexpr bool active = false;
  template <typename T>
  void operator()(int64_t, int64_t, int64_t, T*) const {}
};

// No epilogue.
struct NoEpilogue {
  template <typename T>
  void operator()(int64_t, int64_t, int64_t, T*) const {}
};

// One (sub)segment of 2^sb index values by one thread: L1 blocks of kb bits, then bits [kb, sb) in
// L1-sized column strips (the sub-segment itself stays in L2). An active prologue writes each
// block's input into dst (pro(o, offset in the segment, length, dst)) just before it is transformed.
template <typename T, typename Pro>
void segment(const T* src, T* dst, int64_t inner, int kb, int sb, const Pro& pro, int64_t o, int64_t off) {
  const int64_t block_len = inner << kb;
  const int64_t blocks = int64_t{1} << (sb - kb);
  for (int64_t c = 0; c < blocks; ++c) {
    if constexpr (Pro::active) {
      pro(o, off + c * block_len, block_len, dst + c * block_len);
      block_low<T>(dst + c * block_len, dst + c * block_len, inner, kb);
    } else {
      block_low<T>(src + c * block_len, dst + c * block_len, inner, kb);
    }
  }
  if (kb < sb) high_bits<T>(dst, block_len, kb, sb, cache_plan().l1);
}

// The transform of (outer, n, inner) along n, src -> dst (may be the same). The epilogue is called,
// from the worker threads, on every range of final values as it is finished (still in cache):
// epi(o, offset in the segment, length, dst + o * n * inner + offset); the ranges of a segment are
// disjoint and cover it.
template <typename T, typename Pro = NoPrologue, typename Epi = NoEpilogue>
void transform(const T* src, T* dst, int64_t outer, int64_t n, int64_t inner, const Pro& pro = Pro{},
               const Epi& epi = Epi{}) {
  const int bits = log2i(n);
  const int64_t seg_len = n * inner;
  const int64_t elem = static_cast<int64_t>(sizeof(T));
  const int64_t threads = at::get_num_threads();
  const CachePlan& cache = cache_plan();
  int kb = 0;  // low bits per L1 block
  while (kb < bits && (inner << (kb + 1)) * elem <= cache.block) ++kb;
  // sub-segments of sb bits, one thread each, in L2: as large as cache.fuse allows, and small
  // enough that every thread has one when a segment is worth splitting
  int sb = kb;
  while (sb < bits && (inner << (sb + 1)) * elem <= cache.fuse) ++sb;
  if (seg_len * elem > kParallelBytes) {
    while (sb > kb && (outer << (bits - sb)) < threads) --sb;
  }
  const int64_t sub_len = inner << sb;
  const int64_t subs = n >> sb;  // per segment
  // sweep 1: every sub-segment start to end (read src once, write dst once)
  at::parallel_for(0, outer * subs, std::max<int64_t>(1, kParallelBytes / (sub_len * elem)), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t o = i / subs, off = (i % subs) * sub_len;
      T* d = dst + o * seg_len + off;
      segment<T>(src + o * seg_len + off, d, inner, kb, sb, pro, o, off);
      if (sb == bits) epi(o, off, sub_len, d);
    }
  });
  if (sb == bits) return;
  // sweep 2: bits [sb, bits) across sub-segments, in column strips that fit in L1 if they can be at least
  // 4 cache lines wide, else in L2; enough strips for every thread
  const int64_t line = 64 / elem;
  int64_t w = strip_width<T>(sub_len, subs, cache.l1);
  if (w < 4 * line) w = strip_width<T>(sub_len, subs, cache.strip);
  const int64_t per_segment = (threads + outer - 1) / outer;
  if (per_segment > 1) w = std::min(w, std::max(line, sub_len / per_segment / line * line));
  const int64_t strips = (sub_len + w - 1) / w;
  at::parallel_for(0, outer * strips, std::max<int64_t>(1, kParallelBytes / (w * subs * elem)), [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t o = i / strips, c0 = (i % strips) * w, width = std::min(w, sub_len - c0);
      T* seg = dst + o * seg_len;
      strip_high<T>(seg, sub_len, sb, bits, c0, width);
      for (int64_t q = 0; q < subs; ++q) epi(o, q * sub_len + c0, width, seg + q * sub_len + c0);
    }
  });
}

}  // namespace fwht_kernel
}  // namespace hadainit
