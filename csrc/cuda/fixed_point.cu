// CUDA kernels of the exact fixed-point arithmetic; the scalar math is the
// header's, shared with csrc/cpu/fixed_point.cpp. Pointers come from the
// caller (e.g. torch's tensor.data_ptr()) as integers.
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "fixed_point.h"

namespace mithridate {
namespace fixed_point {
namespace cuda {
namespace {

constexpr int kThreads = 256;
constexpr unsigned long long kNone = ~0ull;

// fail[c] = smallest index of an element that failed with code c (kNone if none).
__device__ void record(unsigned long long* fail, int code, int64_t i) {
  atomicMin(&fail[code], static_cast<unsigned long long>(i));
}

__global__ void encode_kernel(const double* x, int64_t* q, int64_t n, int frac_bits,
                              unsigned long long* fail) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int code = fixed_point::encode(x[i], frac_bits, &q[i]);
    if (code != kOk) record(fail, code, i);
  }
}

__global__ void decode_kernel(const int64_t* q, double* x, int64_t n, int frac_bits) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] = fixed_point::decode(q[i], frac_bits);
}

__global__ void check_kernel(const int64_t* x, const uint32_t* b, int64_t n, int w, uint32_t m,
                             uint32_t d, unsigned long long* fail) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int code = step_check(x[i], b + i * w, w, m, d);
    if (code != kOk) record(fail, code, i);
  }
}

__global__ void apply_kernel(int64_t* x, uint32_t* b, int64_t n, int w, uint32_t m, uint32_t d) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    step_apply(&x[i], b + i * w, w, m, d);
}

void check(cudaError_t err) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(err));
}

unsigned grid(int64_t n) {  // grid-stride loops: cap the grid, not the problem size
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);
}

// Device array of failure indices per code; read back as the first failure.
class Failures {
 public:
  explicit Failures(cudaStream_t s) : s_(s) {
    check(cudaMallocAsync(&d_, sizeof(h_), s_));
    check(cudaMemsetAsync(d_, 0xff, sizeof(h_), s_));  // every entry kNone
  }
  ~Failures() { cudaFreeAsync(d_, s_); }
  unsigned long long* get() { return d_; }
  // Synchronises the stream; reports the lowest failing code.
  Status read() {
    check(cudaGetLastError());
    check(cudaMemcpyAsync(h_, d_, sizeof(h_), cudaMemcpyDeviceToHost, s_));
    check(cudaStreamSynchronize(s_));
    for (int c = 1; c < kCodes; ++c)
      if (h_[c] != kNone) return {c, static_cast<int64_t>(h_[c])};
    return {kOk, -1};
  }

 private:
  static constexpr int kCodes = kRange + 1;
  cudaStream_t s_;
  unsigned long long* d_ = nullptr;
  unsigned long long h_[kCodes];
};

}  // namespace

Status encode(uintptr_t x, uintptr_t q, int64_t n, int frac_bits, int device, uintptr_t stream) {
  check(cudaSetDevice(device));
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  Failures fail(s);
  encode_kernel<<<grid(n), kThreads, 0, s>>>(reinterpret_cast<const double*>(x),
                                              reinterpret_cast<int64_t*>(q), n, frac_bits, fail.get());
  return fail.read();
}

void decode(uintptr_t q, uintptr_t x, int64_t n, int frac_bits, int device, uintptr_t stream) {
  check(cudaSetDevice(device));
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  decode_kernel<<<grid(n), kThreads, 0, s>>>(reinterpret_cast<const int64_t*>(q),
                                              reinterpret_cast<double*>(x), n, frac_bits);
  check(cudaGetLastError());
}

Status mul(uintptr_t x, uintptr_t b, int64_t n, int w, uint32_t num, uint32_t den, int device,
           uintptr_t stream) {
  check(cudaSetDevice(device));
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  auto* xp = reinterpret_cast<int64_t*>(x);
  auto* bp = reinterpret_cast<uint32_t*>(b);
  // Two passes, as on the host: nothing is written unless every element passes.
  Failures fail(s);
  check_kernel<<<grid(n), kThreads, 0, s>>>(xp, bp, n, w, num, den, fail.get());
  const Status st = fail.read();
  if (st.code == kOk) {
    apply_kernel<<<grid(n), kThreads, 0, s>>>(xp, bp, n, w, num, den);
    check(cudaGetLastError());
  }
  return st;
}

}  // namespace cuda
}  // namespace fixed_point
}  // namespace mithridate
