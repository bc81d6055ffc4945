// pybind11 module mithridate._C_cuda: the CUDA kernels, on raw device pointers
// (integers, e.g. torch's tensor.data_ptr()) and a cudaStream_t as an integer.
// Arguments are validated by the Python facades.
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "fixed_point.h"
#include "hypergrad_args.h"

namespace py = pybind11;
namespace fp = mithridate::fixed_point;

namespace {

py::tuple status(fp::Status s) { return py::make_tuple(s.code, s.index); }

template <class F>
fp::Status without_gil(F&& f) {
  py::gil_scoped_release nogil;
  return f();
}

void cuda_check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}

// Device copies of host arrays, freed on scope exit.
class DeviceArrays {
 public:
  ~DeviceArrays() {
    for (void* p : ptrs_) cudaFree(p);
  }
  template <class V>
  V* copy(const V* host, size_t count) {
    void* p = nullptr;
    cuda_check(cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(V)), "cudaMalloc");
    ptrs_.push_back(p);
    cuda_check(cudaMemcpy(p, host, count * sizeof(V), cudaMemcpyHostToDevice), "cudaMemcpy");
    return static_cast<V*>(p);
  }

 private:
  std::vector<void*> ptrs_;
};

// problem descriptions (numpy arrays): copied to the current device, run, outputs copied back.
template <class T>
py::list hypergrad_run(int mode, const py::list& problems) {
  namespace hg = mithridate::hypergrad;
  auto host = hg::args::parse_all<T>(problems, mode);
  std::vector<hg::Status> st(host.size());
  {
    py::gil_scoped_release nogil;
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0)
      throw std::runtime_error(std::string("backend='cuda' needs a CUDA GPU and none is usable (") +
                               (err != cudaSuccess ? cudaGetErrorString(err) : "no device") +
                               "); use backend='cpp'.");
    int device = 0;
    cuda_check(cudaGetDevice(&device), "cudaGetDevice");
    DeviceArrays mem;
    std::vector<hg::Problem<T>> dev(host);
    for (size_t b = 0; b < host.size(); ++b) {
      const auto& H = host[b];
      auto& D = dev[b];
      const size_t p = H.d + 1;
      D.Xc = mem.copy(H.Xc, H.nc * H.d);
      D.yc = mem.copy(H.yc, H.nc);
      D.Xp = mem.copy(H.Xp, H.k * H.d);
      D.yp = mem.copy(H.yp, H.k);
      D.Xv = mem.copy(H.Xv, H.nv * H.d);
      D.yv = mem.copy(H.yv, H.nv);
      D.theta0 = mem.copy(H.theta0, p);
      D.theta_T = mem.copy(H.theta_T, p);
      D.dXp = mem.copy(H.dXp, H.k * H.d);
      D.scalars = mem.copy(H.scalars, 3);
    }
    hg::cuda::run<T>(mode, dev.data(), static_cast<int64_t>(dev.size()), st.data(), device, 0);
    for (size_t b = 0; b < host.size(); ++b) {
      const auto& H = host[b];
      const auto& D = dev[b];
      cuda_check(cudaMemcpy(H.theta_T, D.theta_T, (H.d + 1) * sizeof(double), cudaMemcpyDeviceToHost), "cudaMemcpy");
      cuda_check(cudaMemcpy(H.dXp, D.dXp, H.k * H.d * sizeof(double), cudaMemcpyDeviceToHost), "cudaMemcpy");
      cuda_check(cudaMemcpy(H.scalars, D.scalars, 3 * sizeof(double), cudaMemcpyDeviceToHost), "cudaMemcpy");
    }
  }
  return mithridate::hypergrad::args::statuses(st);
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "mithridate CUDA kernels (see mithridate.fixed_point for the public API)";

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

  auto r = m.def_submodule("hypergrad", "fused hypergradient loops for linear models");
  r.def("run",
        [](int mode, const py::list& problems) {
          return mithridate::hypergrad::args::is_float32(problems) ? hypergrad_run<float>(mode, problems)
                                                             : hypergrad_run<double>(mode, problems);
        },
        py::arg("mode"), py::arg("problems"),
        "copy the problem descriptions (numpy arrays) to the GPU, run the batch, copy the outputs back; "
        "returns [(code, step, index)]");
}
