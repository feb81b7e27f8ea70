// The elementwise passes of one reduced gradient step (hadainit/ufm/_fused_step.py), fused.
//
// Each function does, in one pass over memory, what the reference implementation
// (hadainit/ufm/dynamics.py spectral_rhs, hadainit/ufm/spectral.py softmax_spectrum)
// does in several torch operations, with the same IEEE operations in the same
// order: the build uses -ffp-contract=off (no fused multiply-add), so every
// value is bit-for-bit the reference's. Exponentials and sums stay torch
// operations in the caller (their rounding is torch's).

#include "kernels.h"

#include <ATen/Parallel.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <limits>

namespace hadainit {
namespace {

constexpr int64_t kSerial = 1 << 15;  // fewer elements than this: one thread
constexpr int64_t kGrain = 1 << 15;   // elements per parallel chunk, at least

// f(row, lo, hi) over the columns [lo, hi) of every row, on torch's threads.
template <typename F>
void over_rows(int64_t rows, int64_t k, const F& f) {
  if (rows * k < kSerial) {
    for (int64_t r = 0; r < rows; ++r) f(r, 0, k);
  } else if (rows >= at::get_num_threads() || k < 2 * kGrain) {
    at::parallel_for(0, rows, std::max<int64_t>(1, kGrain / k), [&](int64_t lo, int64_t hi) {
      for (int64_t r = lo; r < hi; ++r) f(r, 0, k);
    });
  } else {
    for (int64_t r = 0; r < rows; ++r) at::parallel_for(0, k, kGrain, [&](int64_t lo, int64_t hi) { f(r, lo, hi); });
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

void check_rows(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous() && t.scalar_type() == like.scalar_type(),
              "hadainit reduced step: ", name, " must be a contiguous CPU tensor of dtype ", like.scalar_type());
}

void check_same(const at::Tensor& t, const at::Tensor& like, const char* name) {
  check_rows(t, like, name);
  TORCH_CHECK(t.numel() == like.numel(), "hadainit reduced step: ", name, " has the wrong size");
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
    const T* pa = a.const_data_ptr<T>();
    const T* pb = b.const_data_ptr<T>();
    T* pz = z.mutable_data_ptr<T>();
    const T kk = static_cast<T>(k);
    over_rows(rows, k, [&](int64_t r, int64_t lo, int64_t hi) {
      const int64_t o = r * k;
      for (int64_t m = lo; m < hi; ++m) pz[o + m] = (pa[o + m] * pb[o + m]) / kk;  // (a * b) / K
    });
  });
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
    const T* pz = z.const_data_ptr<T>();
    const T* pt = top.const_data_ptr<T>();
    T* pe = e.mutable_data_ptr<T>();
    over_rows(rows, k, [&](int64_t r, int64_t lo, int64_t hi) {
      const int64_t o = r * k;
      const T z0 = pz[o], t = pt[r];
      int64_t ties = 0;
      for (int64_t m = lo; m < hi; ++m) {
        // neg(m) = z(m) - z(0) as the reference forms it: -clamp(gamma(m)), gamma(m) = z(0) - z(m); neg(0) = 0
        const T neg = m == 0 ? T(0) : -clamp_huge<T>(z0 - pz[o + m]);
        const bool at_top = neg == t;
        pe[o + m] = at_top ? -std::numeric_limits<T>::infinity() : neg - t;  // exp(-inf) = 0: the reference's where()
        pm[o + m] = at_top;
        ties += at_top;
      }
      __atomic_fetch_add(pc + r, ties, __ATOMIC_RELAXED);
    });
  });
  return count;
}

void probs(at::Tensor& e, const at::Tensor& mask, const at::Tensor& denom) {
  check_rows(e, e, "e");
  const int64_t k = e.size(-1), rows = e.numel() / std::max<int64_t>(k, 1);
  check_rows(denom, e, "denom");
  TORCH_CHECK(denom.numel() == rows && mask.numel() == e.numel() && mask.scalar_type() == at::kByte,
              "hadainit reduced step: probs needs one denominator per row and a uint8 mask like e");
  const uint8_t* pm = mask.const_data_ptr<uint8_t>();
  HADAINIT_FLOAT_TYPES(e.scalar_type(), [&] {
    T* pe = e.mutable_data_ptr<T>();
    const T* pd = denom.const_data_ptr<T>();
    over_rows(rows, k, [&](int64_t r, int64_t lo, int64_t hi) {
      const int64_t o = r * k;
      const T d = pd[r], at_top = T(1) / d;  // the reference: e / (1 + others), e = exp(0) = 1 at the top
      for (int64_t m = lo; m < hi; ++m) pe[o + m] = pm[o + m] ? at_top : pe[o + m] / d;
      if (lo == 0) pe[o] = T(0);  // p_rest: the true class's mass left out
    });
  });
}

namespace {

// c -> (da, db) -> the step (or the derivatives), per element, as spectral_rhs and spectral_gd form them.
template <typename T, typename C>
void finish(const C& c_of, const at::Tensor& a, const at::Tensor& b, at::Tensor& out_a, at::Tensor& out_b,
            int64_t samples_per_class, double wd_w, double wd_h, double lr, bool step) {
  const int64_t k = a.size(-1), rows = a.numel() / std::max<int64_t>(k, 1);
  const T* pa = a.const_data_ptr<T>();
  const T* pb = b.const_data_ptr<T>();
  T* qa = out_a.mutable_data_ptr<T>();
  T* qb = out_b.mutable_data_ptr<T>();
  const T kk = static_cast<T>(k), nk = static_cast<T>(samples_per_class * k);
  const T ww = static_cast<T>(wd_w), wh = static_cast<T>(wd_h), s = static_cast<T>(lr);
  over_rows(rows, k, [&](int64_t r, int64_t lo, int64_t hi) {
    const int64_t o = r * k;
    for (int64_t m = lo; m < hi; ++m) {
      const T av = pa[o + m], bv = pb[o + m], c = c_of(r, m, av, bv);
      const T da = (c * bv) / kk - ww * av;  // c * b / K - wd_W * a
      const T db = (c * av) / nk - wh * bv;  // c * a / (n K) - wd_H * b
      qa[o + m] = step ? av + s * da : da;
      qb[o + m] = step ? bv + s * db : db;
    }
  });
}

}  // namespace

void update_ce(const at::Tensor& mu, const at::Tensor& rest, const at::Tensor& a, const at::Tensor& b,
               at::Tensor& out_a, at::Tensor& out_b, int64_t samples_per_class, double wd_w, double wd_h,
               double lr, bool step) {
  check_rows(a, a, "a");
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&mu, &b, &out_a, &out_b}) check_same(*t, a, "mu, b, out_a, out_b");
  const int64_t k = a.size(-1);
  check_rows(rest, a, "rest");
  TORCH_CHECK(rest.numel() * k == a.numel(), "hadainit reduced step: rest needs one value per row");
  HADAINIT_FLOAT_TYPES(a.scalar_type(), [&] {
    const T* pmu = mu.const_data_ptr<T>();
    const T* pr = rest.const_data_ptr<T>();
    // 1 - mu = rest - (H p_rest), clamped at 0; mode 0 never moves
    auto c_of = [&](int64_t r, int64_t m, T, T) { return m == 0 ? T(0) : clamp_min0<T>(pr[r] - pmu[r * k + m]); };
    finish<T>(c_of, a, b, out_a, out_b, samples_per_class, wd_w, wd_h, lr, step);
  });
}

void update_mse(const at::Tensor& a, const at::Tensor& b, at::Tensor& out_a, at::Tensor& out_b,
                int64_t samples_per_class, double wd_w, double wd_h, double lr, bool step) {
  check_rows(a, a, "a");
  for (const at::Tensor* t : std::initializer_list<const at::Tensor*>{&b, &out_a, &out_b}) check_same(*t, a, "b, out_a, out_b");
  HADAINIT_FLOAT_TYPES(a.scalar_type(), [&] {
    auto c_of = [](int64_t, int64_t, T av, T bv) { return T(1) - av * bv; };  // 1 - lam
    finish<T>(c_of, a, b, out_a, out_b, samples_per_class, wd_w, wd_h, lr, step);
  });
}

}  // namespace hadainit
