// The compiled kernels of hadainit (CPU): declarations shared by the sources and the Python module.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace hadainit {

// fwht.cpp: the unnormalized Walsh–Hadamard transform along dim (0 <= dim < x.dim(), a power-of-two
// length), float32/float64/complex: a new contiguous tensor; fwht_ transforms a contiguous tensor in place.
at::Tensor fwht(const at::Tensor& x, int64_t dim);
void fwht_(at::Tensor& x, int64_t dim);
// fwht_into: the transform of x written into out (contiguous, x's shape and dtype; may be x itself).
void fwht_into(const at::Tensor& x, at::Tensor& out, int64_t dim);
// The cache sizes the transform blocks for (bytes): (L1 data, L2), as read at the first call.
std::tuple<int64_t, int64_t> cache_bytes();

// reduced_step.cpp: the elementwise passes of one reduced CE/MSE step (hadainit/ufm/_fused_step.py).
// All tensors are contiguous CPU float32/float64 of shape (rows, K), per-row values of shape (rows,).
void logits_input(const at::Tensor& a, const at::Tensor& b, at::Tensor& z);
std::tuple<at::Tensor, at::Tensor> top_of(const at::Tensor& z);
at::Tensor shift(const at::Tensor& z, const at::Tensor& top, at::Tensor& e, at::Tensor& mask);  // e may be z
at::Tensor probs(at::Tensor& e, const at::Tensor& mask, const at::Tensor& count, const at::Tensor& sum);
void update_ce(const at::Tensor& mu, const at::Tensor& rest, const at::Tensor& a, const at::Tensor& b,
               at::Tensor& out_a, at::Tensor& out_b, int64_t samples_per_class, double wd_w, double wd_h,
               double lr, bool step);
// logits_input, fwht_, top_of, shift, exp_, probs, fwht_ and update_ce (walsh, CE) in one call: (top, others, overflow).
std::tuple<at::Tensor, at::Tensor, at::Tensor> ce_walsh(const at::Tensor& a, const at::Tensor& b, at::Tensor& z,
                                                        at::Tensor& e, at::Tensor& mask,
                                                        const std::optional<at::Tensor>& out_a,
                                                        const std::optional<at::Tensor>& out_b,
                                                        int64_t samples_per_class, double wd_w, double wd_h,
                                                        double lr, bool step);
void update_mse(const at::Tensor& a, const at::Tensor& b, at::Tensor& out_a, at::Tensor& out_b,
                int64_t samples_per_class, double wd_w, double wd_h, double lr, bool step);

}  // namespace hadainit
