// The problem descriptions that mithridate/hypergrad/native.py hands to the
// bindings of both extension modules, read into hypergrad::Problem descriptors with
// host pointers. Values are validated in Python; these checks only keep a
// direct caller from reading or writing out of bounds.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <string>
#include <vector>

#include "hypergrad.h"

namespace mithridate {
namespace hypergrad {
namespace args {

namespace py = pybind11;

// A problem is an object with named attributes (mithridate/hypergrad/native.py
// NativeProblem): the rows Xc, yc, Xp, yp, Xv, yv; theta0; the model
// description `model` (loss_code, fit_intercept: the same object the numba
// route reads); the inner loop T, alpha, gamma, e = exp(lam); the reversible
// fixed point num, den, words, frac_bits; the outputs theta_T, dXp, scalars.

// The array attribute `name` of `obj`, exactly of dtype V and C-contiguous
// (never a converted copy), of the given shape (-1: any extent).
template <class V>
py::array checked(py::handle obj, const char* name, std::vector<py::ssize_t> shape, bool writeable) {
  py::object h = obj.attr(name);
  if (!py::isinstance<py::array_t<V, py::array::c_style>>(h))
    throw py::type_error(std::string(name) + " must be a C-contiguous numpy array of dtype " +
                         std::string(py::str(py::dtype::of<V>())));
  auto a = py::reinterpret_borrow<py::array>(h);
  bool ok = a.ndim() == static_cast<py::ssize_t>(shape.size());
  for (size_t i = 0; ok && i < shape.size(); ++i) ok = shape[i] < 0 || a.shape(i) == shape[i];
  if (!ok) throw py::value_error(std::string(name) + " has the wrong shape");
  if (writeable && !a.writeable()) throw py::value_error(std::string(name) + " must be writeable");
  return a;
}

// Whether the batch's rows are float32 (else float64: checked per problem).
inline bool is_float32(const py::list& problems) {
  if (problems.empty()) throw py::value_error("problems must not be empty");
  return py::isinstance<py::array_t<float>>(problems[0].attr("Xc"));
}

template <class R>
R scalar(py::handle obj, const char* name) {
  try {
    return obj.attr(name).cast<R>();
  } catch (const py::cast_error&) {
    throw py::type_error(std::string(name) + " has the wrong type");
  }
}

template <class T>
Problem<T> parse(py::handle f, int mode) {
  auto Xc = checked<T>(f, "Xc", {-1, -1}, false);
  const py::ssize_t nc = Xc.shape(0), d = Xc.shape(1);
  auto Xp = checked<T>(f, "Xp", {-1, d}, false);
  auto Xv = checked<T>(f, "Xv", {-1, d}, false);
  const py::ssize_t k = Xp.shape(0), nv = Xv.shape(0);
  if (d < 1 || nc + k < 1 || nv < 1) throw py::value_error("need d >= 1, a training row and a validation row");
  Problem<T> P{};
  P.Xc = static_cast<const T*>(Xc.data());
  P.yc = static_cast<const T*>(checked<T>(f, "yc", {nc}, false).data());
  P.Xp = static_cast<const T*>(Xp.data());
  P.yp = static_cast<const T*>(checked<T>(f, "yp", {k}, false).data());
  P.Xv = static_cast<const T*>(Xv.data());
  P.yv = static_cast<const T*>(checked<T>(f, "yv", {nv}, false).data());
  P.theta0 = static_cast<const double*>(checked<double>(f, "theta0", {d + 1}, false).data());
  P.nc = nc;
  P.k = k;
  P.nv = nv;
  P.d = d;
  P.steps = scalar<int64_t>(f, "T");
  P.alpha = scalar<double>(f, "alpha");
  P.gamma = scalar<double>(f, "gamma");
  P.e = scalar<double>(f, "e");
  P.num = scalar<uint32_t>(f, "num");
  P.den = scalar<uint32_t>(f, "den");
  P.words = scalar<int>(f, "words");
  P.frac_bits = scalar<int>(f, "frac_bits");
  py::object model = f.attr("model");
  P.loss = scalar<int>(model, "loss_code");
  P.fit_b = scalar<bool>(model, "fit_intercept");
  P.theta_T = static_cast<double*>(checked<double>(f, "theta_T", {d + 1}, true).mutable_data());
  P.dXp = static_cast<double*>(checked<double>(f, "dXp", {k, d}, true).mutable_data());
  P.scalars = static_cast<double*>(checked<double>(f, "scalars", {3}, true).mutable_data());
  if (P.steps < 1) throw py::value_error("T must be >= 1");
  if (P.loss != kLogistic && P.loss != kSquared)
    throw py::value_error("model.loss_code must be 0 (logistic) or 1 (squared)");
  if (mode == kReversible &&
      (P.words < 1 || P.num < 1 || P.den < 1 || P.num >= (1u << 31) || P.den >= (1u << 31) ||
       P.frac_bits < 0 || P.frac_bits > 62))
    throw py::value_error("reversible: need words >= 1, num and den in [1, 2^31), frac_bits in [0, 62]");
  return P;
}

template <class T>
std::vector<Problem<T>> parse_all(const py::list& problems, int mode) {
  if (mode != kTrajectory && mode != kForward && mode != kReversible && mode != kValue)
    throw py::value_error("mode must be 0 (trajectory), 1 (forward), 2 (reversible) or 3 (value)");
  std::vector<Problem<T>> out;
  for (auto item : problems) out.push_back(parse<T>(item, mode));
  return out;
}

inline py::list statuses(const std::vector<Status>& st) {
  py::list out;
  for (const auto& s : st) out.append(py::make_tuple(s.code, s.step, s.index));
  return out;
}

}  // namespace args
}  // namespace hypergrad
}  // namespace mithridate
