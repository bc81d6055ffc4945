// pybind11 module mithridate._C: the host (CPU) kernels.
// Arguments are validated by the Python facades; the checks here only keep a
// direct caller from reading out of bounds.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <stdexcept>

#include "fixed_point.h"
#include "hypergrad_args.h"

namespace py = pybind11;
namespace fp = mithridate::fixed_point;

namespace {

template <class T>
using carray = py::array_t<T, py::array::c_style>;  // no forcecast: never a silent copy

py::tuple status(fp::Status s) { return py::make_tuple(s.code, s.index); }

template <class F>
fp::Status without_gil(F&& f) {
  py::gil_scoped_release nogil;
  return f();
}

void require(bool ok, const char* what) {
  if (!ok) throw py::value_error(what);
}

py::tuple encode(carray<double> x, carray<int64_t> q, int frac_bits) {
  require(x.size() == q.size(), "x and q must have the same size");
  const double* xp = x.data();
  int64_t* qp = q.mutable_data();
  const int64_t n = x.size();
  return status(without_gil([&] { return fp::cpu::encode(xp, qp, n, frac_bits); }));
}

void decode(carray<int64_t> q, carray<double> x, int frac_bits) {
  require(x.size() == q.size(), "q and x must have the same size");
  const int64_t* qp = q.data();
  double* xp = x.mutable_data();
  const int64_t n = q.size();
  py::gil_scoped_release nogil;
  fp::cpu::decode(qp, xp, n, frac_bits);
}

py::tuple mul(carray<int64_t> x, carray<uint32_t> b, int w, uint32_t num, uint32_t den) {
  require(w >= 1 && b.size() == x.size() * w, "buffer must hold w >= 1 limbs per element");
  require(num >= 1 && den >= 1 && num < (1u << 31) && den < (1u << 31),
          "num and den must be in [1, 2^31)");
  int64_t* xp = x.mutable_data();
  uint32_t* bp = b.mutable_data();
  const int64_t n = x.size();
  return status(without_gil([&] { return fp::cpu::mul(xp, bp, n, w, num, den); }));
}

template <class T>
py::list hypergrad_run(int mode, const py::list& problems) {
  auto descs = mithridate::hypergrad::args::parse_all<T>(problems, mode);
  std::vector<mithridate::hypergrad::Status> st(descs.size());
  {
    py::gil_scoped_release nogil;
    mithridate::hypergrad::cpu::run<T>(mode, descs.data(), static_cast<int64_t>(descs.size()), st.data());
  }
  return mithridate::hypergrad::args::statuses(st);
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "mithridate host kernels (see mithridate.fixed_point for the public API)";

  auto f = m.def_submodule("fixed_point", "exact reversible int64 fixed point");
  f.def("encode", &encode, py::arg("x").noconvert(), py::arg("q").noconvert(), py::arg("frac_bits"),
        "q = round(x * 2^frac_bits); returns (code, first bad index)");
  f.def("decode", &decode, py::arg("q").noconvert(), py::arg("x").noconvert(), py::arg("frac_bits"));
  f.def("mul", &mul, py::arg("x").noconvert(), py::arg("b").noconvert(), py::arg("w"),
        py::arg("num"), py::arg("den"),
        "x *= num/den exactly, lost digits kept in b; all or nothing; returns (code, index)");
  f.attr("OK") = int(fp::kOk);
  f.attr("CAPACITY") = int(fp::kCapacity);
  f.attr("INT64") = int(fp::kInt64);
  f.attr("NOT_FINITE") = int(fp::kNotFinite);
  f.attr("RANGE") = int(fp::kRange);
  f.def("required_words", &fp::required_words, py::arg("n_steps"), py::arg("num"), py::arg("den"));

  auto r = m.def_submodule("hypergrad", "fused hypergradient loops for linear models");
  r.def("run",
        [](int mode, const py::list& problems) {
          return mithridate::hypergrad::args::is_float32(problems) ? hypergrad_run<float>(mode, problems)
                                                             : hypergrad_run<double>(mode, problems);
        },
        py::arg("mode"), py::arg("problems"),
        "run a batch of problem descriptions (mithridate.hypergrad.native.NativeProblem); returns [(code, step, index)]");
}
