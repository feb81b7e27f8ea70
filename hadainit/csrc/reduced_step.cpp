// The elementwise passes of one reduced gradient step (hadainit/ufm/_fused_step.py), fused.
//
// Each function does, in one pass over memory, what the reference implementation
// (hadainit/ufm/dynamics.py spectral_rhs, hadainit/ufm/spectral.py softmax_spectrum)
// does in several torch operations, with the same IEEE operations in the same
// order: the build uses -ffp-contract=off (no fused multiply-add), so every
// value is bit-for-bit the reference's. Exponentials and sums stay torch
// operations in the caller (their rounding is torch's).

#include "fwht_kernel.h"
#include "kernels.h"
#include "simd.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <tuple>
#include <vector>

namespace hadainit {
namespace {

constexpr int64_t kSerial = 1 << 15;  // fewer elements than this: one thread
constexpr int64_t kGrain = 1 << 15;   // elements per parallel chunk, at least

// f(row, lo, hi) over the columns [lo, hi) of every row, on torch's threads: rows are cut into
// chunks of at least kGrain elements, and (row, chunk) items are shared out.
template <typename F>
void over_rows(int64_t rows, int64_t k, const F& f) {
  const int64_t per_row = std::max<int64_t>(1, k / kGrain);
  const int64_t chunk = (k + per_row - 1) / per_row;
  auto body = [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) {
      const int64_t r = i / per_row, c = i % per_row;
      f(r, c * chunk, std::min(k, (c + 1) * chunk));
    }
  };
  if (rows * k < kSerial) {
    body(0, rows * per_row);
  } else {
    at::parallel_for(0, rows * per_row, std::max<int64_t>(1, kGrain / chunk), body);
  }
}

template <typename T>
inline T clamp_huge(T x) {  // torch.clamp(x, -max, max): NaN stays NaN
  constexpr T huge = std::numeric_limits<T>::max();
  return x < -huge ? -huge : (x > huge ? huge : x);
}

template <typename T>
inline T clamp_min0(T x) {  // torch.clamp_min(x, 0): NaN stays NaN
  return x < T(0) ? T(0) : x;
}

// x / d, as a multiplication by 1 / d when d is a power of two (then both are the exact x * 2^-e,
// correctly rounded: the same value), else a division.
template <typename T>
struct Divide {
  T d, inverse;
  bool power_of_two;
  explicit Divide(double divisor) : d(static_cast<T>(divisor)), inverse(T(1) / d) {
    int e = 0;
    power_of_two = divisor > 0 && std::frexp(divisor, &e) == 0.5;
  }
  inline T operator()(T x) const { return power_of_two ? x * inverse : x / d; }
};

void check_rows(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == like.scalar_type(),
              "hadainit reduced step: ", name, " must be a contiguous CPU tensor of dtype ", like.scalar_type());
}

void check_same(const at::Tensor& t, const at::Tensor& like, const char* name) {
  check_rows(t, like, name);
  TORCH_CHECK(t.numel() == like.numel(), "hadainit reduced step: ", name, " has the wrong size");
}

// The largest of p[0 .. len) and whether one is NaN (torch's amax gives NaN then).
template <typename T>
inline void range_max(const T* __restrict p, int64_t len, T& best, bool& nan) {
  using S = Simd<T>;
  using vec = typename S::vec;
  vec b = vec{} - std::numeric_limits<T>::infinity(), n = vec{};  // n: NaN seen (x != x) in a lane
  int64_t m = 0;
  for (; m + S::W <= len; m += S::W) {
    const vec x = load<vec>(p + m);
    b = x > b ? x : b;
    n = (x != x) ? x : n;
  }
  T bs = -std::numeric_limits<T>::infinity();
  bool ns = false;
  for (int l = 0; l < S::W; ++l) {
    bs = b[l] > bs ? b[l] : bs;
    ns |= n[l] != n[l];
  }
  for (; m < len; ++m) {
    bs = p[m] > bs ? p[m] : bs;
    ns |= p[m] != p[m];
  }
  best = bs;
  nan = ns;
}

// From z(0), the largest non-NaN z(m) over m >= 1 (-inf if none) and whether some z(m) is NaN:
// min over m of gamma(m) = z(0) - z(m) is z(0) - max z (rounding is monotone), NaN if a z(m) is NaN
// (torch's amax), so top = max(neg(0) = 0, max over m of -clamp(gamma(m))) = clamp_min(-clamp(gamma_min), 0).
// A margin is -inf (the loss overflows, the reference's any(gamma == -inf)) exactly when the least
// non-NaN margin z(0) - zmax is: a NaN elsewhere in the row does not hide it.
template <typename T>
inline void top_from_max(T z0, T zmax, bool nan, T& top, bool& overflow) {
  const T gamma_least = z0 - zmax;
  overflow = gamma_least == -std::numeric_limits<T>::infinity();
  const T gamma_min = nan ? std::numeric_limits<T>::quiet_NaN() : gamma_least;
  top = clamp_min0<T>(-clamp_huge<T>(gamma_min));
}

#define HADAINIT_FLOAT_TYPES(dtype, ...)                                                  \
  switch (dtype) {                                                                        \
    case at::kDouble: { using T = double; __VA_ARGS__(); break; }                        \
    case at::kFloat: { using T = float; __VA_ARGS__(); break; }                          \
    default: TORCH_CHECK(false, "hadainit reduced step: float32 or float64, got ", dtype); \
  }

}  // namespace

void logits_input(const at::Tensor& a, const at::Tensor& b, at::Tensor& z) {
  check_rows(a, a, "a");
  check_same(b, a, "b");
  check_same(z, a, "z");
  const int64_t k = a.size(-1), rows = a.numel() / std::max<int64_t>(k, 1);
  HADAINIT_FLOAT_TYPES(a.scalar_type(), [&] {
    const T* pa0 = a.const_data_ptr<T>();
    const T* pb0 = b.const_data_ptr<T>();
    T* pz0 = z.mutable_data_ptr<T>();
    const Divide<T> by_k(static_cast<double>(k));
    over_rows(rows, k, [=](int64_t r, int64_t lo, int64_t hi) {
      const T* __restrict pa = pa0 + r * k;
      const T* __restrict pb = pb0 + r * k;
      T* __restrict pz = pz0 + r * k;
      for (int64_t m = lo; m < hi; ++m) pz[m] = by_k(pa[m] * pb[m]);  // (a * b) / K
    });
  });
}

std::tuple<at::Tensor, at::Tensor> top_of(const at::Tensor& z) {
  check_rows(z, z, "z");
  const int64_t k = z.size(-1), rows = z.numel() / std::max<int64_t>(k, 1);
  TORCH_CHECK(k >= 2, "hadainit reduced step: K >= 2 modes");
  at::Tensor top = at::empty({rows}, z.options());
  at::Tensor overflow = at::empty({rows}, z.options().dtype(at::kBool));
  bool* po = overflow.mutable_data_ptr<bool>();
  HADAINIT_FLOAT_TYPES(z.scalar_type(), [&] {
    const T* pz0 = z.const_data_ptr<T>();
    T* pt = top.mutable_data_ptr<T>();
    auto row_max = [=](int64_t r, int64_t m0, int64_t m1, T& best, bool& nan) {
      range_max<T>(pz0 + r * k + m0, m1 - m0, best, nan);
    };
    auto finish_row = [=](int64_t r, T zmax, bool nan) {
      bool overflow;
      top_from_max<T>(pz0[r * k], zmax, nan, pt[r], overflow);
      po[r] = overflow;
    };
    const int64_t threads = at::get_num_threads();
    if (rows >= threads || k < 2 * kGrain) {
      at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / k), [&](int64_t lo, int64_t hi) {
        for (int64_t r = lo; r < hi; ++r) {
          T zmax;
          bool nan;
          row_max(r, 1, k, zmax, nan);
          finish_row(r, zmax, nan);
        }
      });
    } else {
      std::vector<T> part_max(threads);
      std::vector<uint8_t> part_nan(threads);
      for (int64_t r = 0; r < rows; ++r) {
        at::parallel_for(0, threads, 1, [&](int64_t lo, int64_t hi) {
          for (int64_t c = lo; c < hi; ++c) {
            bool nan;
            row_max(r, 1 + c * (k - 1) / threads, 1 + (c + 1) * (k - 1) / threads, part_max[c], nan);
            part_nan[c] = nan;
          }
        });
        T zmax = -std::numeric_limits<T>::infinity();
        bool nan = false;
        for (int64_t c = 0; c < threads; ++c) {
          zmax = part_max[c] > zmax ? part_max[c] : zmax;
          nan |= part_nan[c] != 0;
        }
        finish_row(r, zmax, nan);
      }
    }
  });
  return {top, overflow};
}

at::Tensor shift(const at::Tensor& z, const at::Tensor& top, at::Tensor& e, at::Tensor& mask) {
  check_rows(z, z, "z");
  check_same(e, z, "e");
  const int64_t k = z.size(-1), rows = z.numel() / std::max<int64_t>(k, 1);
  check_rows(top, z, "top");
  TORCH_CHECK(top.numel() == rows, "hadainit reduced step: top needs one value per row");
  TORCH_CHECK(mask.is_contiguous() && mask.scalar_type() == at::kByte && mask.numel() == z.numel(),
              "hadainit reduced step: mask must be a contiguous uint8 tensor like z");
  at::Tensor count = at::zeros({rows}, z.options().dtype(at::kLong));
  int64_t* pc = count.mutable_data_ptr<int64_t>();
  uint8_t* pm = mask.mutable_data_ptr<uint8_t>();
  HADAINIT_FLOAT_TYPES(z.scalar_type(), [&] {
    const T* pz0 = z.const_data_ptr<T>();
    const T* pt = top.const_data_ptr<T>();
    T* pe0 = e.mutable_data_ptr<T>();
    std::vector<T> first(rows);  // z(0) of every row, read before e (which may be z) is written
    for (int64_t r = 0; r < rows; ++r) first[r] = pz0[r * k];
    const T* pfirst = first.data();
    over_rows(rows, k, [=](int64_t r, int64_t lo, int64_t hi) {
      const T* pz = pz0 + r * k;  // may alias pe: elementwise, read before written
      T* pe = pe0 + r * k;
      uint8_t* __restrict mk = pm + r * k;
      const T z0 = pfirst[r], t = pt[r];
      constexpr T minus_inf = -std::numeric_limits<T>::infinity();
      int64_t ties = 0;
      for (int64_t m = std::max<int64_t>(lo, 1); m < hi; ++m) {
        // neg(m) = z(m) - z(0) as the reference forms it: -clamp(gamma(m)), gamma(m) = z(0) - z(m)
        const T neg = -clamp_huge<T>(z0 - pz[m]);
        const bool at_top = neg == t;
        pe[m] = at_top ? minus_inf : neg - t;  // exp(-inf) = 0: the reference's where(at_top, 0, e)
        mk[m] = at_top;
        ties += at_top;
      }
      if (lo == 0) {  // neg(0) = 0
        const bool at_top = T(0) == t;
        pe[0] = at_top ? minus_inf : T(0) - t;
        mk[0] = at_top;
        ties += at_top;
      }
      __atomic_fetch_add(pc + r, ties, __ATOMIC_RELAXED);
    });
  });
  return count;
}

at::Tensor probs(at::Tensor& e, const at::Tensor& mask, const at::Tensor& count, const at::Tensor& sum) {
  check_rows(e, e, "e");
  const int64_t k = e.size(-1), rows = e.numel() / std::max<int64_t>(k, 1);
  check_rows(sum, e, "sum");
  TORCH_CHECK(sum.numel() == rows && count.numel() == rows && count.scalar_type() == at::kLong &&
                  count.is_contiguous() && mask.numel() == e.numel() && mask.scalar_type() == at::kByte,
              "hadainit reduced step: probs needs one count and sum per row and a uint8 mask like e");
  at::Tensor others = at::empty({rows}, e.options());
  const uint8_t* pm = mask.const_data_ptr<uint8_t>();
  const int64_t* pc = count.const_data_ptr<int64_t>();
  HADAINIT_FLOAT_TYPES(e.scalar_type(), [&] {
    T* pe0 = e.mutable_data_ptr<T>();
    const T* ps = sum.const_data_ptr<T>();
    T* po = others.mutable_data_ptr<T>();
    for (int64_t r = 0; r < rows; ++r) po[r] = static_cast<T>(pc[r] - 1) + ps[r];  // ties beyond one + the rest
    over_rows(rows, k, [=](int64_t r, int64_t lo, int64_t hi) {
      T* __restrict pe = pe0 + r * k;
      const uint8_t* __restrict mk = pm + r * k;
      const Divide<T> by_d(static_cast<double>(T(1) + po[r]));
      const T at_top = by_d(T(1));  // the reference: e / (1 + others), e = exp(0) = 1 at the top
      for (int64_t m = lo; m < hi; ++m) pe[m] = mk[m] ? at_top : by_d(pe[m]);
      if (lo == 0) pe[0] = T(0);  // p_rest: the true class's mass left out
    });
  });
  return others;
}

namespace {

// c -> (da, db) -> the step (or the derivatives), per element, as spectral_rhs and spectral_gd form them,
// over the elements [lo, hi) of one row (pointers at the row's start).
template <typename T, bool Step, typename Row>
inline void update_range(const Row& c_row, bool zero_mode0, const T* __restrict pa, const T* __restrict pb,
                         T* __restrict qa, T* __restrict qb, int64_t lo, int64_t hi, const Divide<T>& by_k,
                         const Divide<T>& by_nk, T ww, T wh, T s) {
  auto one = [&](int64_t m, T c) {
    const T av = pa[m], bv = pb[m];
    const T da = by_k(c * bv) - ww * av;   // c * b / K - wd_W * a
    const T db = by_nk(c * av) - wh * bv;  // c * a / (n K) - wd_H * b
    qa[m] = Step ? av + s * da : da;
    qb[m] = Step ? bv + s * db : db;
  };
  for (int64_t m = lo; m < hi; ++m) one(m, c_row(m, pa[m], pb[m]));
  if (lo == 0 && zero_mode0) one(0, T(0));  // c(0) = 0 for CE: mode 0 never moves
}

// update_range over every row, on torch's threads; c(m) from C (a functor of the row).
template <typename T, bool Step, typename C>
void finish(const C& c_of, const T* pa0, const T* pb0, T* qa0, T* qb0, int64_t rows, int64_t k,
            int64_t samples_per_class, double wd_w, double wd_h, double lr) {
  const Divide<T> by_k(static_cast<double>(k)), by_nk(static_cast<double>(samples_per_class * k));
  const T ww = static_cast<T>(wd_w), wh = static_cast<T>(wd_h), s = static_cast<T>(lr);
  over_rows(rows, k, [=](int64_t r, int64_t lo, int64_t hi) {
    update_range<T, Step>(c_of.row(r), C::zero_mode0, pa0 + r * k, pb0 + r * k, qa0 + r * k, qb0 + r * k, lo, hi,
                          by_k, by_nk, ww, wh, s);
  });
}

template <typename T, typename C>
void finish_any(const C& c_of, const at::Tensor& a, const at::Tensor& b, at::Tensor& out_a, at::Tensor& out_b,
                int64_t samples_per_class, double wd_w, double wd_h, double lr, bool step) {
  const int64_t k = a.size(-1), rows = a.numel() / std::max<int64_t>(k, 1);
  const T* pa = a.const_data_ptr<T>();
  const T* pb = b.const_data_ptr<T>();
  T* qa = out_a.mutable_data_ptr<T>();
  T* qb = out_b.mutable_data_ptr<T>();
  if (step) {
    finish<T, true>(c_of, pa, pb, qa, qb, rows, k, samples_per_class, wd_w, wd_h, lr);
  } else {
    finish<T, false>(c_of, pa, pb, qa, qb, rows, k, samples_per_class, wd_w, wd_h, lr);
  }
}

// CE: c = max(rest - mu, 0), with c(0) = 0 (mode 0 never moves)
template <typename T>
struct OneMinusMu {
  const T* mu;
  const T* rest;
  int64_t k;
  static constexpr bool zero_mode0 = true;
  auto row(int64_t r) const {
    const T* __restrict pm = mu + r * k;
    const T rr = rest[r];
    return [=](int64_t m, T, T) { return clamp_min0<T>(rr - pm[m]); };
  }
};

// MSE: c = 1 - a b
template <typename T>
struct OneMinusLam {
  static constexpr bool zero_mode0 = false;
  auto row(int64_t) const {
    return [](int64_t, T av, T bv) { return T(1) - av * bv; };
  }
};

void check_outputs(const at::Tensor& a, const at::Tensor& b, const at::Tensor& out_a, const at::Tensor& out_b) {
  if (a.numel() == 0) return;  // empty tensors share the null data pointer: nothing is written
  for (const at::Tensor* out : {&out_a, &out_b}) {
    TORCH_CHECK(out->data_ptr() != a.data_ptr() && out->data_ptr() != b.data_ptr(),
                "hadainit reduced step: the outputs must not be the inputs");
  }
}

}  // namespace

void update_ce(const at::Tensor& mu, const at::Tensor& rest, const at::Tensor& a, const at::Tensor& b,
               at::Tensor& out_a, at::Tensor& out_b, int64_t samples_per_class, double wd_w, double wd_h,
               double lr, bool step) {
  check_rows(a, a, "a");
  check_outputs(a, b, out_a, out_b);
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&mu, &b, &out_a, &out_b}) check_same(*t, a, "mu, b, out_a, out_b");
  const int64_t k = a.size(-1);
  check_rows(rest, a, "rest");
  TORCH_CHECK(rest.numel() * k == a.numel(), "hadainit reduced step: rest needs one value per row");
  HADAINIT_FLOAT_TYPES(a.scalar_type(), [&] {
    const OneMinusMu<T> c_of{mu.const_data_ptr<T>(), rest.const_data_ptr<T>(), k};
    finish_any<T>(c_of, a, b, out_a, out_b, samples_per_class, wd_w, wd_h, lr, step);
  });
}

void update_mse(const at::Tensor& a, const at::Tensor& b, at::Tensor& out_a, at::Tensor& out_b,
                int64_t samples_per_class, double wd_w, double wd_h, double lr, bool step) {
  check_rows(a, a, "a");
  check_outputs(a, b, out_a, out_b);
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&b, &out_a, &out_b}) check_same(*t, a, "b, out_a, out_b");
  HADAINIT_FLOAT_TYPES(a.scalar_type(), [&] {
    finish_any<T>(OneMinusLam<T>{}, a, b, out_a, out_b, samples_per_class, wd_w, wd_h, lr, step);
  });
}

namespace {

// The transform's prologue for z = H((a b) / K): each block's input computed as logits_input does.
template <typename T>
struct ProductInput {
  static constexpr bool active = true;
  const T* a;
  const T* b;
  int64_t k;
  Divide<T> by_k;
  void operator()(int64_t r, int64_t off, int64_t len, T* out) const {
    const T* __restrict pa = a + r * k + off;
    const T* __restrict pb = b + r * k + off;
    T* __restrict po = out;
    for (int64_t m = 0; m < len; ++m) po[m] = by_k(pa[m] * pb[m]);  // (a * b) / K
  }
};

// The transform's epilogue for top_of: max over m >= 1 of z(m) per row, one slot per thread.
template <typename T>
struct RowMax {
  T* best;        // [thread][row]
  uint8_t* nan;   // [thread][row]
  int64_t rows;
  void operator()(int64_t r, int64_t off, int64_t len, const T* d) const {
    const int64_t skip = off == 0 ? 1 : 0;  // z(0) is not a competitor
    if (len <= skip) return;
    T b;
    bool n;
    range_max<T>(d + skip, len - skip, b, n);
    const int64_t slot = at::get_thread_num() * rows + r;
    best[slot] = b > best[slot] ? b : best[slot];
    nan[slot] |= n;
  }
};

// The transform's epilogue for update_ce: each range of mu, as soon as it is final.
template <typename T, bool Step>
struct UpdateFromMu {
  const T* rest;
  const T* a;
  const T* b;
  T* qa;
  T* qb;
  int64_t k;
  Divide<T> by_k, by_nk;
  T ww, wh, s;
  void operator()(int64_t r, int64_t off, int64_t len, const T* mu) const {
    const T rr = rest[r];
    const T* __restrict pm = mu - off;  // the row's start
    auto c_row = [=](int64_t m, T, T) { return clamp_min0<T>(rr - pm[m]); };
    update_range<T, Step>(c_row, true, a + r * k, b + r * k, qa + r * k, qb + r * k, off, off + len, by_k, by_nk,
                          ww, wh, s);
  }
};

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> ce_walsh(const at::Tensor& a, const at::Tensor& b, at::Tensor& z,
                                                        at::Tensor& e, at::Tensor& mask,
                                                        const std::optional<at::Tensor>& out_a,
                                                        const std::optional<at::Tensor>& out_b,
                                                        int64_t samples_per_class, double wd_w, double wd_h,
                                                        double lr, bool step) {
  // The passes of hadainit/ufm/_fused_step.py FusedRHS._softmax_spectrum (walsh) and update_ce, with
  // logits_input as the first transform's prologue, top_of as its epilogue, and update_ce as the second
  // transform's epilogue (each on data still in cache); exp_ and sum are the ATen operations the Python
  // sequence calls. Same operations on the same values: the same results, bit for bit.
  check_rows(a, a, "a");
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&b, &z, &e}) check_same(*t, a, "b, z, e");
  const int64_t k = a.size(-1), rows = a.numel() / std::max<int64_t>(k, 1);
  TORCH_CHECK(k >= 2 && fwht_kernel::is_pow2(k), "hadainit reduced step: walsh needs K = 2^e >= 2");
  TORCH_CHECK(out_a.has_value() == out_b.has_value(), "hadainit reduced step: both outputs or neither");
  if (out_a.has_value()) {
    check_outputs(a, b, *out_a, *out_b);
    check_same(*out_a, a, "out_a");
    check_same(*out_b, a, "out_b");
  }
  at::Tensor top = at::empty({rows}, a.options());
  at::Tensor overflow = at::empty({rows}, a.options().dtype(at::kBool));
  const int64_t threads = at::get_num_threads();
  HADAINIT_FLOAT_TYPES(a.scalar_type(), [&] {
    std::vector<T> best(threads * rows, -std::numeric_limits<T>::infinity());
    std::vector<uint8_t> nan(threads * rows, 0);
    T* pz = z.mutable_data_ptr<T>();
    fwht_kernel::transform<T>(pz, pz, rows, k, 1,
                              ProductInput<T>{a.const_data_ptr<T>(), b.const_data_ptr<T>(), k, Divide<T>(double(k))},
                              RowMax<T>{best.data(), nan.data(), rows});
    T* pt = top.mutable_data_ptr<T>();
    bool* po = overflow.mutable_data_ptr<bool>();
    for (int64_t r = 0; r < rows; ++r) {
      T zmax = -std::numeric_limits<T>::infinity();
      bool any_nan = false;
      for (int64_t t = 0; t < threads; ++t) {
        zmax = best[t * rows + r] > zmax ? best[t * rows + r] : zmax;
        any_nan |= nan[t * rows + r] != 0;
      }
      top_from_max<T>(pz[r * k], zmax, any_nan, pt[r], po[r]);
    }
  });
  at::Tensor count = shift(z, top, e, mask);  // e may be z: in place
  e.exp_();
  at::Tensor others = probs(e, mask, count, e.sum(-1));
  if (out_a.has_value()) {  // mu = H p_rest, consumed range by range
    at::Tensor rest = e.sum(-1);
    HADAINIT_FLOAT_TYPES(a.scalar_type(), [&] {
      const Divide<T> by_k(static_cast<double>(k)), by_nk(static_cast<double>(samples_per_class * k));
      const T ww = static_cast<T>(wd_w), wh = static_cast<T>(wd_h), s = static_cast<T>(lr);
      T* pe = e.mutable_data_ptr<T>();
      const T* pr = rest.const_data_ptr<T>();
      const T* pa = a.const_data_ptr<T>();
      const T* pb = b.const_data_ptr<T>();
      T* qa = out_a->mutable_data_ptr<T>();
      T* qb = out_b->mutable_data_ptr<T>();
      if (step) {
        fwht_kernel::transform<T>(pe, pe, rows, k, 1, fwht_kernel::NoPrologue{},
                                  UpdateFromMu<T, true>{pr, pa, pb, qa, qb, k, by_k, by_nk, ww, wh, s});
      } else {
        fwht_kernel::transform<T>(pe, pe, rows, k, 1, fwht_kernel::NoPrologue{},
                                  UpdateFromMu<T, false>{pr, pa, pb, qa, qb, k, by_k, by_nk, ww, wh, s});
      }
    });
  }
  return {top, others, overflow};
}

}  // namespace hadainit
