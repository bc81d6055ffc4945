// Host loops of the fused hypergradient RMD (math and layout: csrc/include/hypergrad.h).
//
// A row pass splits the rows into chunks fixed by n alone, each with its own
// float64 partial sums, and adds the chunks in order: the result does not
// depend on the thread count. A batch runs its problems in parallel (OpenMP)
// when it has at least as many problems as threads; otherwise each problem's
// chunks run in parallel. Both give the same bits.
#include <algorithm>
#include <new>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "hypergrad.h"

namespace mithridate {
namespace hypergrad {
namespace cpu {
namespace {

namespace fp = fixed_point;

constexpr int64_t kChunkRows = 64;          // rows per chunk, at least
constexpr int64_t kMaxChunks = 16;          // caps the partial sums a pass adds up
// n*d below this: one thread per pass. A pass opens two parallel regions;
// below ~2^18 row entries (~0.1 ms of work) their start and barrier cost more
// than they save, and much more when the cores are shared with other work.
constexpr int64_t kParallelWork = 1 << 18;
// Independent accumulators of a dot product: 4 AVX-512 (8 AVX2) vectors of
// add chains, enough to hide the add latency (one chain ran 2.5x slower).
constexpr int kLanes = 32;

int64_t n_chunks(int64_t n) { return std::clamp<int64_t>(n / kChunkRows, 1, kMaxChunks); }

// Sum of kLanes partial sums in a fixed (pairwise) order; consumes a.
inline double combine(double* a) {
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int l = 0; l < w; ++l) a[l] += a[l + w];
  return a[0];
}

// x . w over d entries in kLanes lanes (vectorisable without reassociation).
template <class T>
inline double dot(const T* x, const double* w, int64_t d) {
  double a[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes)
    for (int l = 0; l < kLanes; ++l) a[l] += static_cast<double>(x[j + l]) * w[j + l];
  for (int l = 0; j < d; ++j, ++l) a[l] += static_cast<double>(x[j]) * w[j];
  return combine(a);
}

// x . w and x . u in one read of x; x . w is bit-identical to dot().
template <class T>
inline void dot2(const T* x, const double* w, const double* u, int64_t d, double* xw, double* xu) {
  double a[kLanes] = {}, b[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= d; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const double xj = static_cast<double>(x[j + l]);
      a[l] += xj * w[j + l];
      b[l] += xj * u[j + l];
    }
  for (int l = 0; j < d; ++j, ++l) {
    const double xj = static_cast<double>(x[j]);
    a[l] += xj * w[j];
    b[l] += xj * u[j];
  }
  *xw = combine(a);
  *xu = combine(b);
}

template <class T>
inline void axpy(double* acc, double c, const T* x, int64_t d) {
  for (int64_t j = 0; j < d; ++j) acc[j] += c * static_cast<double>(x[j]);
}

// acc += X_rows^T c for kGroup rows: one load and store of acc per kGroup
// rows (the accumulator traffic, not the FLOPs, bounded the one-row loop).
constexpr int kGroup = 4;

template <class T>
inline void axpy4(double* acc, const double* c, const T* const* x, int64_t d) {
  for (int64_t j = 0; j < d; ++j)
    acc[j] += (c[0] * static_cast<double>(x[0][j]) + c[1] * static_cast<double>(x[1][j])) +
              (c[2] * static_cast<double>(x[2][j]) + c[3] * static_cast<double>(x[3][j]));
}

// axpy4 into two accumulators in one read of the rows; each gets the bits
// axpy4 alone would give it.
template <class T>
inline void axpy4x2(double* acc, const double* c, double* acc2, const double* c2, const T* const* x,
                    int64_t d) {
  for (int64_t j = 0; j < d; ++j) {
    const double x0 = x[0][j], x1 = x[1][j], x2 = x[2][j], x3 = x[3][j];
    acc[j] += (c[0] * x0 + c[1] * x1) + (c[2] * x2 + c[3] * x3);
    acc2[j] += (c2[0] * x0 + c2[1] * x1) + (c2[2] * x2 + c2[3] * x3);
  }
}

// acc[:d] += X_rows^T c for m <= kGroup rows; acc[d] += sum(c) if fit_b.
template <class T>
inline void accumulate(double* acc, const double* c, const T* const* x, int m, int64_t d, bool fit_b) {
  if (m == kGroup) {
    axpy4(acc, c, x, d);
  } else {
    for (int r = 0; r < m; ++r) axpy(acc, c[r], x[r], d);
  }
  if (fit_b)
    for (int r = 0; r < m; ++r) acc[d] += c[r];
}

// accumulate() into acc with c and into acc2 with c2, one read of full groups.
template <class T>
inline void accumulate2(double* acc, const double* c, double* acc2, const double* c2, const T* const* x,
                        int m, int64_t d, bool fit_b) {
  if (m != kGroup) {
    accumulate(acc, c, x, m, d, fit_b);
    accumulate(acc2, c2, x, m, d, fit_b);
    return;
  }
  axpy4x2(acc, c, acc2, c2, x, d);
  if (fit_b)
    for (int r = 0; r < m; ++r) {
      acc[d] += c[r];
      acc2[d] += c2[r];
    }
}

// Rows [i0, i1) at theta = th into the chunk sums gc, hc (p each): G: X^T l'(z);
// H: X^T (l''(z) (X u)); M: dXp[r] -= a_r th_w + b_r u_w on the poisoning rows
// (mixed_coefs). Slot d sums the coefficients when fitting an intercept.
// Returns sum_i l(z_i).
template <class T, bool G, bool H, bool M>
inline __attribute__((always_inline)) double chunk_body(const Rows<T>& R, int loss, bool fit_b,
                                                        const double* th, const double* u, double* dXp,
                                                        double gamma, int64_t i0, int64_t i1,
                                                        double* gc, double* hc) {
  static_assert(!M || H, "the mixed products need X u");
  const int64_t n = R.n, d = R.d;
  std::fill(gc, gc + d + 1, 0.0);
  std::fill(hc, hc + d + 1, 0.0);
  double total = 0.0;
  for (int64_t i = i0; i < i1; i += kGroup) {  // groups fixed by the chunk: same sums every pass
    const int m = static_cast<int>(std::min<int64_t>(kGroup, i1 - i));
    const T* x[kGroup];
    double cg[kGroup], ch[kGroup];
    for (int r = 0; r < m; ++r) {
      x[r] = R.row(i + r);
      double z, xu = 0.0;
      if (H) {
        dot2(x[r], th, u, d, &z, &xu);
        xu += u[d];
      } else {
        z = dot(x[r], th, d);
      }
      z += th[d];
      double c1, c2;
      total += loss_terms(loss, z, R.label(i + r), &c1, &c2);
      cg[r] = c1;
      ch[r] = c2 * xu;
      if (M && i + r >= R.na) {
        double a, b;
        mixed_coefs(c1, c2, xu, n, gamma, &a, &b);
        double* out = dXp + (i + r - R.na) * d;
        for (int64_t j = 0; j < d; ++j) out[j] -= a * th[j] + b * u[j];
      }
    }
    if (G && H) {
      accumulate2(gc, cg, hc, ch, x, m, d, fit_b);
    } else if (G) {
      accumulate(gc, cg, x, m, d, fit_b);
    } else if (H) {
      accumulate(hc, ch, x, m, d, fit_b);
    }
  }
  return total;
}

// The chunk loop compiled for AVX-512, AVX2 and baseline x86-64, picked at
// load time (the build itself targets baseline x86-64). One non-template
// function per instantiation: GCC clones functions, not templates.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MITHRIDATE_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MITHRIDATE_CLONES
#endif

template <class T, bool G, bool H, bool M>
struct Chunk;

#define MITHRIDATE_CHUNK(NAME, T, G, H, M)                                                          \
  MITHRIDATE_CLONES double NAME(const Rows<T>& R, int loss, bool fit_b, const double* th,          \
                                const double* u, double* dXp, double gamma, int64_t i0, int64_t i1, \
                                double* gc, double* hc) {                                          \
    return chunk_body<T, G, H, M>(R, loss, fit_b, th, u, dXp, gamma, i0, i1, gc, hc);               \
  }                                                                                                 \
  template <>                                                                                       \
  struct Chunk<T, G, H, M> {                                                                        \
    static constexpr auto run = NAME;                                                               \
  };

MITHRIDATE_CHUNK(chunk_g_f32, float, true, false, false)
MITHRIDATE_CHUNK(chunk_g_f64, double, true, false, false)
MITHRIDATE_CHUNK(chunk_gh_f32, float, true, true, false)
MITHRIDATE_CHUNK(chunk_gh_f64, double, true, true, false)
MITHRIDATE_CHUNK(chunk_hm_f32, float, false, true, true)
MITHRIDATE_CHUNK(chunk_hm_f64, double, false, true, true)
MITHRIDATE_CHUNK(chunk_ghm_f32, float, true, true, true)
MITHRIDATE_CHUNK(chunk_ghm_f64, double, true, true, true)
#undef MITHRIDATE_CHUNK

// One read of the rows (chunk_body over every chunk), then the chunk sums
// added in chunk order into g (G) and h (H); row sums, not divided by n.
// Returns sum_i l(z_i). part: scratch of n_chunks(n) * (2p + 1).
template <class T, bool G, bool H, bool M>
double pass(const Rows<T>& R, int loss, bool fit_b, const double* th, const double* u, double* g,
            double* h, double* dXp, double gamma, double* part, bool par) {
  const int64_t n = R.n, d = R.d, p = d + 1, chunks = n_chunks(n), stride = 2 * p + 1;
  const bool threads = par && n * d >= kParallelWork;
#pragma omp parallel for schedule(static) if (threads)
  for (int64_t c = 0; c < chunks; ++c) {
    double* gc = part + c * stride;
    part[c * stride + 2 * p] = Chunk<T, G, H, M>::run(R, loss, fit_b, th, u, dXp, gamma, c * n / chunks,
                                                      (c + 1) * n / chunks, gc, gc + p);
  }
#pragma omp parallel for schedule(static) if (threads)
  for (int64_t j = 0; j < p; ++j) {
    double sg = 0.0, sh = 0.0;
    for (int64_t c = 0; c < chunks; ++c) {
      sg += part[c * stride + j];
      sh += part[c * stride + p + j];
    }
    if (G) g[j] = sg;
    if (H) h[j] = sh;
  }
  double total = 0.0;
  for (int64_t c = 0; c < chunks; ++c) total += part[c * stride + 2 * p];
  return total;
}

// Scratch and the validation step common to every mode.
template <class T>
struct Loop {
  const Problem<T>& P;
  const bool par;
  const Rows<T> train, valid;
  const int64_t n, d, p;
  std::vector<double> part;

  Loop(const Problem<T>& pb, bool parallel)
      : P(pb), par(parallel), train(training_rows(pb)), valid(validation_rows(pb)),
        n(pb.nc + pb.k), d(pb.d), p(pb.d + 1),
        part(std::max(n_chunks(n), n_chunks(pb.nv)) * (2 * p + 1)) {}

  template <bool G, bool H, bool M>
  double train_pass(const double* th, const double* u, double* g, double* h, double* dXp) {
    return pass<T, G, H, M>(train, P.loss, P.fit_b, th, u, g, h, dXp, P.gamma, part.data(), par);
  }

  // Mean validation loss at th; its gradient into grad.
  double validation(const double* th, double* grad) {
    const double total = pass<T, true, false, false>(valid, P.loss, P.fit_b, th, nullptr, grad,
                                                     nullptr, nullptr, P.gamma, part.data(), par);
    for (int64_t j = 0; j < p; ++j) grad[j] /= static_cast<double>(P.nv);
    return total / static_cast<double>(P.nv);
  }

  // One reverse step of the adjoints at theta_t = th (u = vb + alpha tb was
  // formed by the caller and h holds H_data u); returns the dlam increment.
  double adjoint(const double* th, const double* u, const double* h, double* tb, double* vb) {
    double wu = 0.0;
    for (int64_t j = 0; j < d; ++j) wu += th[j] * u[j];
    for (int64_t j = 0; j < p; ++j) adjoint_j(&tb[j], &vb[j], u[j], h[j], n, P.e, j < d, P.gamma);
    return lam_term(wu, P.e, P.gamma);
  }

  void finish(const double* theta, double value, double glam, double recovered) {
    std::copy(theta, theta + p, P.theta_T);
    P.scalars[0] = value;
    P.scalars[1] = glam;
    P.scalars[2] = recovered;
  }
};

template <class T>
Status trajectory(const Problem<T>& P, bool par) {
  Loop<T> L(P, par);
  const int64_t p = L.p, d = L.d;
  std::vector<double> traj((P.steps + 1) * p), v(p, 0.0), g(p), h(p), tb(p), vb(p, 0.0), u(p);
  std::copy(P.theta0, P.theta0 + p, traj.begin());
  Watch watch;
  for (int64_t t = 0; t < P.steps; ++t) {
    const double* th = &traj[t * p];
    double* next = &traj[(t + 1) * p];
    L.template train_pass<true, false, false>(th, nullptr, g.data(), nullptr, nullptr);
    double gg = 0.0;
    for (int64_t j = 0; j < p; ++j) {
      const double gj = grad_j(g[j], L.n, P.e, th[j], j < d);
      gg += gj * gj;
      next[j] = th[j];
      step_j(&next[j], &v[j], gj, P.alpha, P.gamma);
    }
    watch.check(gg, P.gamma, t);
  }
  const double* theta = &traj[P.steps * p];
  const double value = L.validation(theta, tb.data());
  std::fill(P.dXp, P.dXp + P.k * d, 0.0);
  double glam = 0.0;
  for (int64_t t = P.steps - 1; t >= 0; --t) {
    const double* th = &traj[t * p];
    for (int64_t j = 0; j < p; ++j) u[j] = vb[j] + P.alpha * tb[j];
    L.template train_pass<false, true, true>(th, u.data(), nullptr, h.data(), P.dXp);
    glam += L.adjoint(th, u.data(), h.data(), tb.data(), vb.data());
  }
  L.finish(theta, value, glam, 0.0);
  return watch.step < 0 ? Status{fp::kOk, -1, -1} : Status{kDiverged, watch.step, -1};
}

template <class T>
Status forward(const Problem<T>& P, bool par) {
  Loop<T> L(P, par);
  const int64_t p = L.p, d = L.d;
  std::vector<double> theta(P.theta0, P.theta0 + p), v(p, 0.0), dth(p, 0.0), dv(p, 0.0), g(p), h(p);
  Watch watch;
  for (int64_t t = 0; t < P.steps; ++t) {
    L.template train_pass<true, true, false>(theta.data(), dth.data(), g.data(), h.data(), nullptr);
    double gg = 0.0;
    for (int64_t j = 0; j < p; ++j) {  // the tangent first: it reads theta_t
      const double gj = grad_j(g[j], L.n, P.e, theta[j], j < d);
      gg += gj * gj;
      tangent_step_j(&dth[j], &dv[j], h[j], L.n, P.e, theta[j], j < d, P.alpha, P.gamma);
      step_j(&theta[j], &v[j], gj, P.alpha, P.gamma);
    }
    watch.check(gg, P.gamma, t);
  }
  const double value = L.validation(theta.data(), g.data());
  double glam = 0.0;
  for (int64_t j = 0; j < p; ++j) glam += g[j] * dth[j];
  L.finish(theta.data(), value, glam, 0.0);
  return watch.step < 0 ? Status{fp::kOk, -1, -1} : Status{kDiverged, watch.step, -1};
}

// The training steps of trajectory without storing them, then the validation
// value: trajectory's theta_T and value, bit for bit.
template <class T>
Status value_only(const Problem<T>& P, bool par) {
  Loop<T> L(P, par);
  const int64_t p = L.p, d = L.d;
  std::vector<double> theta(P.theta0, P.theta0 + p), v(p, 0.0), g(p);
  Watch watch;
  for (int64_t t = 0; t < P.steps; ++t) {
    L.template train_pass<true, false, false>(theta.data(), nullptr, g.data(), nullptr, nullptr);
    double gg = 0.0;
    for (int64_t j = 0; j < p; ++j) {
      const double gj = grad_j(g[j], L.n, P.e, theta[j], j < d);
      gg += gj * gj;
      step_j(&theta[j], &v[j], gj, P.alpha, P.gamma);
    }
    watch.check(gg, P.gamma, t);
  }
  const double value = L.validation(theta.data(), g.data());
  L.finish(theta.data(), value, 0.0, 0.0);
  return watch.step < 0 ? Status{fp::kOk, -1, -1} : Status{kDiverged, watch.step, -1};
}

template <class T>
Status reversible(const Problem<T>& P, bool par) {
  Loop<T> L(P, par);
  const int64_t p = L.p, d = L.d;
  const int f = P.frac_bits, w = P.words;
  std::vector<int64_t> thq(p), vq(p, 0), q0(p);
  std::vector<uint32_t> buf(p * w, 0u);
  std::vector<double> th(p), g(p), h(p), tb(p), vb(p, 0.0), u(p);
  const RevCoefs k = rev_coefs(P.gamma, L.n, P.e, P.alpha);
  for (int64_t j = 0; j < p; ++j) {
    const int c = fp::encode(P.theta0[j], f, &q0[j]);
    if (c != fp::kOk) return {c, -1, j};
  }
  thq = q0;
  Watch watch;  // the divergence check of trajectory, on the decoded theta_t (no state changes)
  for (int64_t t = 0; t < P.steps; ++t) {
    for (int64_t j = 0; j < p; ++j) th[j] = fp::decode(thq[j], f);
    L.template train_pass<true, false, false>(th.data(), nullptr, g.data(), nullptr, nullptr);
    double gg = 0.0;
    for (int64_t j = 0; j < p; ++j) {
      const double gj = grad_j(g[j], L.n, P.e, th[j], j < d);
      gg += gj * gj;
      const int c = rev_forward_j(&thq[j], &vq[j], &buf[j * w], g[j], j < d, k, P.num, P.den, w, f);
      if (c != fp::kOk) return {c, t, j};
    }
    watch.check(gg, P.gamma, t);
  }
  std::vector<double> theta_T(p);
  for (int64_t j = 0; j < p; ++j) theta_T[j] = fp::decode(thq[j], f);
  const double value = L.validation(theta_T.data(), tb.data());
  std::fill(P.dXp, P.dXp + P.k * d, 0.0);
  double glam = 0.0;
  for (int64_t t = P.steps - 1; t >= 0; --t) {
    for (int64_t j = 0; j < p; ++j) {
      const int c = rev_theta_j(&thq[j], vq[j], k);
      if (c != fp::kOk) return {c, t, j};
      th[j] = fp::decode(thq[j], f);
      u[j] = vb[j] + P.alpha * tb[j];
    }
    // g(theta_t) again, with the HVP and mixed products in the same read.
    L.template train_pass<true, true, true>(th.data(), u.data(), g.data(), h.data(), P.dXp);
    for (int64_t j = 0; j < p; ++j) {
      const int c = rev_velocity_j(&vq[j], &buf[j * w], g[j], thq[j], j < d, k, P.num, P.den, w, f);
      if (c != fp::kOk) return {c, t, j};
    }
    glam += L.adjoint(th.data(), u.data(), h.data(), tb.data(), vb.data());
  }
  const bool recovered = thq == q0 && std::all_of(vq.begin(), vq.end(), [](int64_t x) { return x == 0; }) &&
                         std::all_of(buf.begin(), buf.end(), [](uint32_t x) { return x == 0; });
  L.finish(theta_T.data(), value, glam, recovered ? 1.0 : 0.0);
  if (!recovered) return {kNotRecovered, -1, -1};
  return watch.step < 0 ? Status{fp::kOk, -1, -1} : Status{kDiverged, watch.step, -1};
}

template <class T>
Status run_one(int mode, const Problem<T>& P, bool par) {
  try {
    switch (mode) {
      case kTrajectory: return trajectory(P, par);
      case kForward: return forward(P, par);
      case kValue: return value_only(P, par);
      default: return reversible(P, par);
    }
  } catch (const std::bad_alloc&) {
    return {kNoMemory, -1, -1};
  }
}

}  // namespace

template <class T>
void run(int mode, const Problem<T>* problems, int64_t count, Status* status) {
#ifdef _OPENMP
  const int64_t threads = omp_get_max_threads();
#else
  const int64_t threads = 1;
#endif
  if (count > 1 && count >= threads) {
#pragma omp parallel for schedule(dynamic, 1)
    for (int64_t b = 0; b < count; ++b) status[b] = run_one(mode, problems[b], false);
  } else {
    for (int64_t b = 0; b < count; ++b) status[b] = run_one(mode, problems[b], true);
  }
}

template void run<float>(int, const Problem<float>*, int64_t, Status*);
template void run<double>(int, const Problem<double>*, int64_t, Status*);

}  // namespace cpu
}  // namespace hypergrad
}  // namespace mithridate
