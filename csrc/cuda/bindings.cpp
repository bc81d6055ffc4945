// pybind11 module mithridate._C_cuda: the CUDA kernels, on raw device pointers
// (integers, e.g. torch's tensor.data_ptr()) and a cudaStream_t as an integer.
// Arguments are validated by the Python facades.
#include <pybind11/pybind11.h>

#include "fixed_point.h"

namespace py = pybind11;
namespace fp = mithridate::fixed_point;

namespace {

py::tuple status(fp::Status s) { return py::make_tuple(s.code, s.index); }

template <class F>
fp::Status without_gil(F&& f) {
  py::gil_scoped_release nogil;
  return f();
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "mithridate CUDA kernels (see mithridate.fixedpoint for the public API)";

  auto f = m.def_submodule("fixed_point", "exact reversible int64 fixed point");
  f.def("encode",
        [](uintptr_t x, uintptr_t q, int64_t n, int frac_bits, int device, uintptr_t stream) {
          return status(without_gil([&] { return fp::cuda::encode(x, q, n, frac_bits, device, stream); }));
        },
        py::arg("x"), py::arg("q"), py::arg("n"), py::arg("frac_bits"), py::arg("device"),
        py::arg("stream"));
  f.def("decode",
        [](uintptr_t q, uintptr_t x, int64_t n, int frac_bits, int device, uintptr_t stream) {
          py::gil_scoped_release nogil;
          fp::cuda::decode(q, x, n, frac_bits, device, stream);
        },
        py::arg("q"), py::arg("x"), py::arg("n"), py::arg("frac_bits"), py::arg("device"),
        py::arg("stream"));
  f.def("mul",
        [](uintptr_t x, uintptr_t b, int64_t n, int w, uint32_t num, uint32_t den, int device,
           uintptr_t stream) {
          return status(without_gil([&] { return fp::cuda::mul(x, b, n, w, num, den, device, stream); }));
        },
        py::arg("x"), py::arg("b"), py::arg("n"), py::arg("w"), py::arg("num"), py::arg("den"),
        py::arg("device"), py::arg("stream"));
}
