// The Python module of hadainit's compiled CPU kernels (built by hadainit/_kernels.py).
#include "kernels.h"

#include <torch/csrc/utils/pybind.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  namespace py = pybind11;
  m.doc() = "hadainit's compiled CPU kernels: the fast Walsh-Hadamard transform, the reduced step's passes";
  m.def("fwht", &hadainit::fwht, "Unnormalized Walsh-Hadamard transform of x along dim: a new contiguous tensor",
        py::arg("x"), py::arg("dim"));
  m.def("fwht_", &hadainit::fwht_, "The transform of a contiguous tensor along dim, in place", py::arg("x"),
        py::arg("dim"));
  m.def("fwht_into", &hadainit::fwht_into, "The transform of x along dim written into out (x's shape and dtype, contiguous)",
        py::arg("x"), py::arg("out"), py::arg("dim"));
  m.def("cache_bytes", &hadainit::cache_bytes, "(L1 data, L2) cache sizes in bytes the transform blocks for");
  m.def("logits_input", &hadainit::logits_input, "z = (a * b) / K");
  m.def("top_of", &hadainit::top_of, "(top, overflow) per row: the largest z(m) - z(0) (0 at least), and whether it overflows");
  m.def("shift", &hadainit::shift, "e = neg - top (-inf where neg == top, marked in mask); returns the tie counts");
  m.def("probs", &hadainit::probs,
        "others = count - 1 + sum; e <- e / (1 + others) (1 / (1 + others) where marked), column 0 set to 0; returns others");
  m.def("update_ce", &hadainit::update_ce, "c = max(rest - mu, 0) (c_0 = 0), then the GD step or the derivatives");
  m.def("ce_walsh", &hadainit::ce_walsh,
        "the whole walsh CE evaluation (the passes above, torch's exp_ and sum between them): (top, others, overflow)");
  m.def("update_mse", &hadainit::update_mse, "c = 1 - a b, then the GD step or the derivatives");
}
