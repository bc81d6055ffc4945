// CUDA fused hypergradient RMD (math and layout: csrc/include/hypergrad.h; the host
// mirror is csrc/cpu/hypergrad.cpp). One thread block runs one problem's whole loop,
// a launch runs a batch. A row pass is two phases: warps take rows and reduce
// x . theta by a fixed butterfly; then thread j sums column j over the rows in
// row order. Every sum has an order fixed by the shape and the block size,
// and nvcc runs with --fmad=false (explicit fma only), so the reversible
// sweep recomputes the forward gradients bit for bit.
#include <cuda_runtime.h>

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "hypergrad.h"

namespace mithridate {
namespace hypergrad {
namespace cuda {
namespace {

namespace fp = fixed_point;

constexpr int kThreads = 256;  // a power of two: block_sum is a tree
constexpr int kWarp = 32;

// Device scratch of one problem (see sizes()).
struct Work {
  double *th, *v, *g, *h, *u, *tb, *vb, *dth, *dv;  // (p,)
  double *cg, *ch;                                  // per-row coefficients, (max(n, nv),)
  double *ma, *mb;                                  // mixed-product coefficients, (k,)
  double* traj;                                     // trajectory: (T + 1, p)
  int64_t *thq, *vq, *q0;                           // reversible: (p,)
  uint32_t* buf;                                    // reversible: (p, words)
  Status* status;
};

void check(cudaError_t err) {
  if (err != cudaSuccess) throw std::runtime_error(std::string("CUDA error: ") + cudaGetErrorString(err));
}

// Sum over the block in a fixed tree order; every thread gets the result.
__device__ double block_sum(double x, double* shm) {
  shm[threadIdx.x] = x;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shm[threadIdx.x] += shm[threadIdx.x + s];
    __syncthreads();
  }
  const double r = shm[0];
  __syncthreads();
  return r;
}

// The row pass of csrc/cpu/hypergrad.cpp: G: g = X^T l'(z); H: h = X^T (l'' X u);
// M: dXp[r] -= a_r th_w + b_r u_w. Returns sum_i l(z_i); ends synchronised.
template <class T, bool G, bool H, bool M>
__device__ double pass(const Rows<T>& R, int loss, bool fit_b, const double* th, const double* u,
                       double* g, double* h, double* dXp, double gamma, const Work& W, double* shm) {
  const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp, warps = blockDim.x / kWarp;
  const int64_t n = R.n, d = R.d;
  double total = 0.0;
  for (int64_t i = warp; i < n; i += warps) {
    const T* x = R.row(i);
    double z = 0.0, xu = 0.0;
    for (int64_t j = lane; j < d; j += kWarp) {
      const double xj = static_cast<double>(x[j]);
      z = fma(xj, th[j], z);
      if (H) xu = fma(xj, u[j], xu);
    }
    for (int o = kWarp / 2; o > 0; o >>= 1) {  // butterfly: every lane ends with the same bits
      z += __shfl_xor_sync(0xffffffffu, z, o);
      if (H) xu += __shfl_xor_sync(0xffffffffu, xu, o);
    }
    z += th[d];
    if (H) xu += u[d];
    double c1, c2;
    const double l = loss_terms(loss, z, R.label(i), &c1, &c2);
    if (lane == 0) {
      total += l;
      W.cg[i] = c1;
      W.ch[i] = c2 * xu;
      if (M && i >= R.na) mixed_coefs(c1, c2, xu, n, gamma, &W.ma[i - R.na], &W.mb[i - R.na]);
    }
  }
  __syncthreads();
  for (int64_t j = threadIdx.x; j <= d; j += blockDim.x) {
    double sg = 0.0, sh = 0.0;
    if (j < d) {
      for (int64_t i = 0; i < n; ++i) {
        const double xij = static_cast<double>(R.row(i)[j]);
        if (G) sg = fma(W.cg[i], xij, sg);
        if (H) sh = fma(W.ch[i], xij, sh);
      }
      if (M)
        for (int64_t r = 0; r < n - R.na; ++r) dXp[r * d + j] -= W.ma[r] * th[j] + W.mb[r] * u[j];
    } else if (fit_b) {
      for (int64_t i = 0; i < n; ++i) {
        if (G) sg += W.cg[i];
        if (H) sh += W.ch[i];
      }
    }
    if (G) g[j] = sg;
    if (H) h[j] = sh;
  }
  return block_sum(total, shm);
}

template <class T>
__device__ double validation(const Problem<T>& P, const Work& W, const double* th, double* grad,
                             double* shm) {
  const double total = pass<T, true, false, false>(validation_rows(P), P.loss, P.fit_b, th, nullptr,
                                                   grad, nullptr, nullptr, P.gamma, W, shm);
  for (int64_t j = threadIdx.x; j <= P.d; j += blockDim.x) grad[j] /= static_cast<double>(P.nv);
  __syncthreads();
  return total / static_cast<double>(P.nv);
}

// One reverse step of the adjoints (u formed, h = H_data u); returns the dlam increment.
template <class T>
__device__ double adjoint(const Problem<T>& P, const Work& W, const double* th, double* shm) {
  const int64_t d = P.d, n = P.n();
  double wu = 0.0;
  for (int64_t j = threadIdx.x; j < d; j += blockDim.x) wu += th[j] * W.u[j];
  wu = block_sum(wu, shm);
  for (int64_t j = threadIdx.x; j <= d; j += blockDim.x)
    adjoint_j(&W.tb[j], &W.vb[j], W.u[j], W.h[j], n, P.e, j < d, P.gamma);
  __syncthreads();
  return lam_term(wu, P.e, P.gamma);
}

template <class T>
__device__ void finish(const Problem<T>& P, const Work& W, const double* theta, double value, double glam,
                       double recovered, Status st) {
  for (int64_t j = threadIdx.x; j <= P.d; j += blockDim.x) P.theta_T[j] = theta[j];
  if (threadIdx.x == 0) {
    P.scalars[0] = value;
    P.scalars[1] = glam;
    P.scalars[2] = recovered;
    *W.status = st;
  }
}

template <class T>
__device__ void trajectory(const Problem<T>& P, const Work& W, double* shm) {
  const int64_t d = P.d, p = d + 1, n = P.n();
  const Rows<T> R = training_rows(P);
  for (int64_t j = threadIdx.x; j < p; j += blockDim.x) {
    W.traj[j] = P.theta0[j];
    W.v[j] = 0.0;
  }
  __syncthreads();
  Watch watch;  // the same on every thread: block sums are broadcast
  for (int64_t t = 0; t < P.steps; ++t) {
    const double* th = W.traj + t * p;
    double* next = W.traj + (t + 1) * p;
    pass<T, true, false, false>(R, P.loss, P.fit_b, th, nullptr, W.g, nullptr, nullptr, P.gamma, W, shm);
    double gg = 0.0;
    for (int64_t j = threadIdx.x; j < p; j += blockDim.x) {
      const double gj = grad_j(W.g[j], n, P.e, th[j], j < d);
      gg += gj * gj;
      next[j] = th[j];
      step_j(&next[j], &W.v[j], gj, P.alpha, P.gamma);
    }
    watch.check(block_sum(gg, shm), P.gamma, t);  // block_sum synchronises
  }
  const double* theta = W.traj + P.steps * p;
  const double value = validation(P, W, theta, W.tb, shm);
  for (int64_t j = threadIdx.x; j < p; j += blockDim.x) W.vb[j] = 0.0;
  for (int64_t i = threadIdx.x; i < P.k * d; i += blockDim.x) P.dXp[i] = 0.0;
  __syncthreads();
  double glam = 0.0;
  for (int64_t t = P.steps - 1; t >= 0; --t) {
    const double* th = W.traj + t * p;
    for (int64_t j = threadIdx.x; j < p; j += blockDim.x) W.u[j] = W.vb[j] + P.alpha * W.tb[j];
    __syncthreads();
    pass<T, false, true, true>(R, P.loss, P.fit_b, th, W.u, nullptr, W.h, P.dXp, P.gamma, W, shm);
    glam += adjoint(P, W, th, shm);
  }
  finish(P, W, theta, value, glam, 0.0,
         watch.step < 0 ? Status{fp::kOk, -1, -1} : Status{kDiverged, watch.step, -1});
}

template <class T>
__device__ void forward(const Problem<T>& P, const Work& W, double* shm) {
  const int64_t d = P.d, p = d + 1, n = P.n();
  const Rows<T> R = training_rows(P);
  for (int64_t j = threadIdx.x; j < p; j += blockDim.x) {
    W.th[j] = P.theta0[j];
    W.v[j] = W.dth[j] = W.dv[j] = 0.0;
  }
  __syncthreads();
  Watch watch;
  for (int64_t t = 0; t < P.steps; ++t) {
    pass<T, true, true, false>(R, P.loss, P.fit_b, W.th, W.dth, W.g, W.h, nullptr, P.gamma, W, shm);
    double gg = 0.0;
    for (int64_t j = threadIdx.x; j < p; j += blockDim.x) {  // the tangent first: it reads theta_t
      const double gj = grad_j(W.g[j], n, P.e, W.th[j], j < d);
      gg += gj * gj;
      tangent_step_j(&W.dth[j], &W.dv[j], W.h[j], n, P.e, W.th[j], j < d, P.alpha, P.gamma);
      step_j(&W.th[j], &W.v[j], gj, P.alpha, P.gamma);
    }
    watch.check(block_sum(gg, shm), P.gamma, t);  // block_sum synchronises
  }
  const double value = validation(P, W, W.th, W.g, shm);
  double glam = 0.0;
  for (int64_t j = threadIdx.x; j < p; j += blockDim.x) glam += W.g[j] * W.dth[j];
  glam = block_sum(glam, shm);
  finish(P, W, W.th, value, glam, 0.0,
         watch.step < 0 ? Status{fp::kOk, -1, -1} : Status{kDiverged, watch.step, -1});
}

// The training steps of trajectory without storing them, then the validation value.
template <class T>
__device__ void value_only(const Problem<T>& P, const Work& W, double* shm) {
  const int64_t d = P.d, p = d + 1, n = P.n();
  const Rows<T> R = training_rows(P);
  for (int64_t j = threadIdx.x; j < p; j += blockDim.x) {
    W.th[j] = P.theta0[j];
    W.v[j] = 0.0;
  }
  __syncthreads();
  Watch watch;
  for (int64_t t = 0; t < P.steps; ++t) {
    pass<T, true, false, false>(R, P.loss, P.fit_b, W.th, nullptr, W.g, nullptr, nullptr, P.gamma, W, shm);
    double gg = 0.0;
    for (int64_t j = threadIdx.x; j < p; j += blockDim.x) {
      const double gj = grad_j(W.g[j], n, P.e, W.th[j], j < d);
      gg += gj * gj;
      step_j(&W.th[j], &W.v[j], gj, P.alpha, P.gamma);
    }
    watch.check(block_sum(gg, shm), P.gamma, t);  // block_sum synchronises
  }
  const double value = validation(P, W, W.th, W.g, shm);
  finish(P, W, W.th, value, 0.0, 0.0,
         watch.step < 0 ? Status{fp::kOk, -1, -1} : Status{kDiverged, watch.step, -1});
}

// The first failure of the block (code, step, coordinate), in shared memory.
struct Failure {
  int code;
  long long step, index;
};

__device__ void fail(Failure* f, int code, int64_t step, int64_t j) {
  if (atomicCAS(&f->code, 0, code) == 0) {
    f->step = step;
    f->index = j;
  }
}

template <class T>
__device__ void reversible(const Problem<T>& P, const Work& W, double* shm, Failure* err) {
  const int64_t d = P.d, p = d + 1, n = P.n();
  const int f = P.frac_bits, w = P.words;
  const Rows<T> R = training_rows(P);
  const RevCoefs k = rev_coefs(P.gamma, n, P.e, P.alpha);
  for (int64_t j = threadIdx.x; j < p; j += blockDim.x) {
    const int c = fp::encode(P.theta0[j], f, &W.q0[j]);
    if (c != fp::kOk) fail(err, c, -1, j);
    W.thq[j] = W.q0[j];
    W.vq[j] = 0;
    for (int l = 0; l < w; ++l) W.buf[j * w + l] = 0u;
  }
  __syncthreads();
  if (err->code) return;
  Watch watch;  // the divergence check of trajectory, on the decoded theta_t
  for (int64_t t = 0; t < P.steps; ++t) {
    for (int64_t j = threadIdx.x; j < p; j += blockDim.x) W.th[j] = fp::decode(W.thq[j], f);
    __syncthreads();
    pass<T, true, false, false>(R, P.loss, P.fit_b, W.th, nullptr, W.g, nullptr, nullptr, P.gamma, W, shm);
    double gg = 0.0;
    for (int64_t j = threadIdx.x; j < p; j += blockDim.x) {
      const double gj = grad_j(W.g[j], n, P.e, W.th[j], j < d);
      gg += gj * gj;
      const int c = rev_forward_j(&W.thq[j], &W.vq[j], W.buf + j * w, W.g[j], j < d, k, P.num, P.den, w, f);
      if (c != fp::kOk) fail(err, c, t, j);
    }
    watch.check(block_sum(gg, shm), P.gamma, t);  // block_sum synchronises
    if (err->code) return;
  }
  double* theta_T = W.dth;  // free in this mode
  for (int64_t j = threadIdx.x; j < p; j += blockDim.x) theta_T[j] = fp::decode(W.thq[j], f);
  __syncthreads();
  const double value = validation(P, W, theta_T, W.tb, shm);
  for (int64_t j = threadIdx.x; j < p; j += blockDim.x) W.vb[j] = 0.0;
  for (int64_t i = threadIdx.x; i < P.k * d; i += blockDim.x) P.dXp[i] = 0.0;
  __syncthreads();
  double glam = 0.0;
  for (int64_t t = P.steps - 1; t >= 0; --t) {
    for (int64_t j = threadIdx.x; j < p; j += blockDim.x) {
      const int c = rev_theta_j(&W.thq[j], W.vq[j], k);
      if (c != fp::kOk) fail(err, c, t, j);
      W.th[j] = fp::decode(W.thq[j], f);
      W.u[j] = W.vb[j] + P.alpha * W.tb[j];
    }
    __syncthreads();
    if (err->code) return;
    pass<T, true, true, true>(R, P.loss, P.fit_b, W.th, W.u, W.g, W.h, P.dXp, P.gamma, W, shm);
    for (int64_t j = threadIdx.x; j < p; j += blockDim.x) {
      const int c = rev_velocity_j(&W.vq[j], W.buf + j * w, W.g[j], W.thq[j], j < d, k, P.num, P.den, w, f);
      if (c != fp::kOk) fail(err, c, t, j);
    }
    __syncthreads();
    if (err->code) return;
    glam += adjoint(P, W, W.th, shm);
  }
  bool ok = true;
  for (int64_t j = threadIdx.x; j < p; j += blockDim.x) {
    ok = ok && W.thq[j] == W.q0[j] && W.vq[j] == 0;
    for (int l = 0; l < w; ++l) ok = ok && W.buf[j * w + l] == 0u;
  }
  const bool recovered = __syncthreads_and(ok);
  finish(P, W, theta_T, value, glam, recovered ? 1.0 : 0.0,
         !recovered ? Status{kNotRecovered, -1, -1}
         : watch.step < 0 ? Status{fp::kOk, -1, -1} : Status{kDiverged, watch.step, -1});
}

template <class T>
__global__ void __launch_bounds__(kThreads) hypergrad_kernel(int mode, const Problem<T>* problems, const Work* works) {
  __shared__ double shm[kThreads];
  __shared__ Failure err;
  const Problem<T> P = problems[blockIdx.x];
  const Work W = works[blockIdx.x];
  if (threadIdx.x == 0) err = {0, -1, -1};
  __syncthreads();
  if (mode == kTrajectory) {
    trajectory(P, W, shm);
  } else if (mode == kForward) {
    forward(P, W, shm);
  } else if (mode == kValue) {
    value_only(P, W, shm);
  } else {
    reversible(P, W, shm, &err);
    if (err.code && threadIdx.x == 0) *W.status = {err.code, err.step, err.index};
  }
}

// Bytes of a problem's scratch, and the pointers into it (aligned to 16).
template <class T>
size_t layout(int mode, const Problem<T>& P, char* base, Work* W) {
  const int64_t p = P.d + 1, rows = std::max(P.nc + P.k, P.nv);
  size_t off = 0;
  auto take = [&](size_t bytes) {
    char* at = base ? base + off : nullptr;
    off += (bytes + 15) / 16 * 16;
    return at;
  };
  double** vecs[] = {&W->th, &W->v, &W->g, &W->h, &W->u, &W->tb, &W->vb, &W->dth, &W->dv};
  for (double** v : vecs) *v = reinterpret_cast<double*>(take(p * sizeof(double)));
  W->cg = reinterpret_cast<double*>(take(rows * sizeof(double)));
  W->ch = reinterpret_cast<double*>(take(rows * sizeof(double)));
  W->ma = reinterpret_cast<double*>(take(P.k * sizeof(double)));
  W->mb = reinterpret_cast<double*>(take(P.k * sizeof(double)));
  W->traj = reinterpret_cast<double*>(take(mode == kTrajectory ? (P.steps + 1) * p * sizeof(double) : 0));
  const int64_t q = mode == kReversible ? p : 0;
  W->thq = reinterpret_cast<int64_t*>(take(q * sizeof(int64_t)));
  W->vq = reinterpret_cast<int64_t*>(take(q * sizeof(int64_t)));
  W->q0 = reinterpret_cast<int64_t*>(take(q * sizeof(int64_t)));
  W->buf = reinterpret_cast<uint32_t*>(take(q * P.words * sizeof(uint32_t)));
  W->status = reinterpret_cast<Status*>(take(sizeof(Status)));
  return off;
}

}  // namespace

template <class T>
void run(int mode, const Problem<T>* problems, int64_t count, Status* status, int device, uintptr_t stream) {
  check(cudaSetDevice(device));
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  std::vector<Work> works(count);
  std::vector<size_t> offsets(count + 1, 0);
  for (int64_t b = 0; b < count; ++b) offsets[b + 1] = offsets[b] + layout(mode, problems[b], nullptr, &works[b]);
  const size_t desc_bytes = count * (sizeof(Problem<T>) + sizeof(Work));
  char* mem = nullptr;
  check(cudaMallocAsync(reinterpret_cast<void**>(&mem), offsets[count] + desc_bytes, s));
  try {
    for (int64_t b = 0; b < count; ++b) layout(mode, problems[b], mem + offsets[b], &works[b]);
    std::vector<Status> init(count, Status{fp::kOk, -1, -1});
    for (int64_t b = 0; b < count; ++b)
      check(cudaMemcpyAsync(works[b].status, &init[b], sizeof(Status), cudaMemcpyHostToDevice, s));
    auto* d_problems = reinterpret_cast<Problem<T>*>(mem + offsets[count]);
    auto* d_works = reinterpret_cast<Work*>(d_problems + count);
    check(cudaMemcpyAsync(d_problems, problems, count * sizeof(Problem<T>), cudaMemcpyHostToDevice, s));
    check(cudaMemcpyAsync(d_works, works.data(), count * sizeof(Work), cudaMemcpyHostToDevice, s));
    hypergrad_kernel<T><<<static_cast<unsigned>(count), kThreads, 0, s>>>(mode, d_problems, d_works);
    check(cudaGetLastError());
    for (int64_t b = 0; b < count; ++b)
      check(cudaMemcpyAsync(&status[b], works[b].status, sizeof(Status), cudaMemcpyDeviceToHost, s));
    check(cudaStreamSynchronize(s));
  } catch (...) {
    cudaFreeAsync(mem, s);
    throw;
  }
  check(cudaFreeAsync(mem, s));
}

template void run<float>(int, const Problem<float>*, int64_t, Status*, int, uintptr_t);
template void run<double>(int, const Problem<double>*, int64_t, Status*, int, uintptr_t);

}  // namespace cuda
}  // namespace hypergrad
}  // namespace mithridate
