// The fast Walsh–Hadamard transform of hadainit, as a compiled CPU kernel.
//
// Built on first use by torch's extension loader (hadainit/_kernels.py); the
// pure-PyTorch transform in hadainit/hadamard.py is the fallback and the
// reference the tests compare against.
//
// Layout: the input is viewed as (outer, n, inner), contiguous; the transform
// runs along n. A complex tensor is its real view with inner doubled. Each
// length-n "segment" (n * inner elements) is transformed with butterflies:
//
// * low bits of the index, in L1-sized blocks: the stages whose partner lies
//   inside one SIMD register are lane shuffles (fused with the read of the
//   input and the first radix-8 pass), the others radix-2^R vertical
//   butterflies between registers;
// * higher bits, across blocks, in column strips that fit in L1 (else L2).
//
// A segment that fits in L2 is done start to end by one thread (one read of
// the input and one write of the output from and to memory); a larger one
// (or a single one with threads to spare) is cut into L2-sized sub-segments
// done that way, then the remaining bits take a second sweep. Only additions and
// subtractions: the result is that of the radix-2 butterfly network, exactly
// (a lane stage computes v + t or t - v as sign * v + t, exact with or without
// fused multiply-add).

#include "fwht_kernel.h"
#include "kernels.h"

#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/view_as_real.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

namespace hadainit {
namespace {

using fwht_kernel::is_pow2;
using fwht_kernel::transform;

template <typename T>
void run(const at::Tensor& s, at::Tensor& d, int64_t outer, int64_t n, int64_t inner) {
  transform<T>(s.const_data_ptr<T>(), d.mutable_data_ptr<T>(), outer, n, inner);
}

// src -> dst (same shape, both contiguous; may be the same tensor) along dim.
void transform_tensor(const at::Tensor& src, at::Tensor& dst, int64_t dim) {
  const int64_t n = src.size(dim);
  if (src.numel() == 0) return;
  int64_t inner = 1;
  for (int64_t k = dim + 1; k < src.dim(); ++k) inner *= src.size(k);
  const int64_t outer = src.numel() / (n * inner);
  at::Tensor s = src, d = dst;
  if (src.is_complex()) {
    s = at::view_as_real(src);
    d = at::view_as_real(dst);
    inner *= 2;
  }
  switch (s.scalar_type()) {
    case at::kDouble: run<double>(s, d, outer, n, inner); break;
    case at::kFloat: run<float>(s, d, outer, n, inner); break;
    default:
      TORCH_CHECK(false, "hadainit fwht kernel: float32, float64, complex64 or complex128 only, got ", src.scalar_type());
  }
}

void check(const at::Tensor& x, int64_t dim) {
  TORCH_CHECK(x.device().is_cpu(), "hadainit fwht kernel: CPU tensors only");
  TORCH_CHECK(dim >= 0 && dim < x.dim(), "hadainit fwht kernel: dim out of range");
  TORCH_CHECK(is_pow2(x.size(dim)), "hadainit fwht kernel: the length must be a power of two");
}

}  // namespace

at::Tensor fwht(const at::Tensor& x, int64_t dim) {
  check(x, dim);
  at::Tensor resolved = x.resolve_conj().resolve_neg();
  if (!resolved.is_contiguous()) {
    at::Tensor copy = resolved.contiguous();  // a fresh copy: transform it in place
    transform_tensor(copy, copy, dim);
    return copy;
  }
  at::Tensor out = at::empty(resolved.sizes(), resolved.options());
  transform_tensor(resolved, out, dim);
  return out;
}

void fwht_into(const at::Tensor& x, at::Tensor& out, int64_t dim) {
  check(x, dim);
  TORCH_CHECK(out.is_contiguous() && !out.is_conj() && !out.is_neg() && out.sizes() == x.sizes() &&
                  out.scalar_type() == x.scalar_type() && out.device() == x.device(),
              "hadainit fwht out: a contiguous, resolved tensor of x's shape, dtype and device");
  at::Tensor resolved = x.resolve_conj().resolve_neg().contiguous();
  transform_tensor(resolved, out, dim);  // resolved may be out itself: the transform works in place too
}

std::tuple<int64_t, int64_t> cache_bytes() {
  const auto& plan = fwht_kernel::cache_plan();
  return {plan.l1, plan.fuse};
}

void fwht_(at::Tensor& x, int64_t dim) {
  check(x, dim);
  TORCH_CHECK(x.is_contiguous() && !x.is_conj() && !x.is_neg(), "hadainit fwht_: a contiguous, resolved tensor");
  transform_tensor(x, x, dim);
}

}  // namespace hadainit
