// Fused hypergradient loops for linear models (paper 002): the problem layout
// and the scalar math of one RMD step, shared by csrc/cpu/hypergrad.cpp (row passes
// as chunked host loops) and csrc/cuda/hypergrad.cu (one thread block per problem,
// row passes as block reductions). The math mirrors kernels/cpu/hypergrad.py:
//   v_{t+1} = gamma v_t - (1 - gamma) g(theta_t),  theta_{t+1} = theta_t + alpha v_{t+1},
//   g = 1/n X^T l'(z) + e [w; 0],  z = X w + b,  e = exp(lam),  v_0 = 0;
// outer value = mean validation loss at theta_T. theta has d + 1 slots, slot
// d the intercept (it stays 0 without one). State is float64; rows are read
// in X's dtype T and promoted, so float32 and float64 share one code path.
//
// Reproducibility: every sum runs in an order fixed by the shape alone, and
// the builds disable FMA contraction (-ffp-contract=off, nvcc --fmad=false),
// so the gradient recomputed in the reverse sweep of the reversible mode is
// bit-identical to the forward one; the fixed-point increments built from it
// (rev_v_incr) do not depend on any flag: the reversal restores w0 exactly.
#pragma once

#include <cmath>
#include <cstdint>

#include "fixed_point.h"  // MITHRIDATE_HD and the exact int64 steps

namespace mithridate {
namespace hypergrad {

// kValue: training and the validation value only (theta_T, scalars[0]; no tangent, no sweep)
enum Mode : int { kTrajectory = 0, kForward = 1, kReversible = 2, kValue = 3 };
enum Loss : int { kLogistic = 0, kSquared = 1 };

// Status codes: fixed_point's (kCapacity, kInt64, kNotFinite, kRange), then:
enum Code : int {
  kNotRecovered = 5,  // reversible: the reverse sweep did not end at encode(w0), v = 0, B = 0
  kNoMemory = 6,      // host: a workspace allocation failed
  kDiverged = 7,      // the gradient-growth check flagged `step` (the run went on)
};

struct Status {
  int code;       // fixed_point::kOk or a Code
  int64_t step;   // inner step where it happened (-1: none / setup)
  int64_t index;  // coordinate of theta (-1: none)
};

// One problem. Training rows are [Xc; Xp] (the k poisoning rows last);
// pointers are host or device memory, as the entry point says.
template <class T>
struct Problem {
  const T *Xc, *yc, *Xp, *yp, *Xv, *yv;  // row-major (nc|k|nv, d); labels in X's dtype
  const double* theta0;                  // (d + 1,)
  int64_t nc, k, nv, d, steps;  // steps: T, the inner steps
  double alpha, gamma, e;  // reversible: gamma == num / den
  uint32_t num, den;       // reversible only
  int words;               // reversible: buffer limbs per coordinate
  int frac_bits;           // reversible only
  int loss, fit_b;
  // outputs
  double* theta_T;  // (d + 1,)
  double* dXp;      // (k, d); trajectory and reversible
  double* scalars;  // [value, grad_lam, w0_recovered] (kValue: grad_lam 0)

  MITHRIDATE_HD int64_t n() const { return nc + k; }
};

// Rows [A; B] (B may be empty) with their labels: the training rows [Xc; Xp]
// or the validation rows Xv. Rows from na on are the poisoning rows.
template <class T>
struct Rows {
  const T *A, *ya, *B, *yb;
  int64_t na, n, d;

  MITHRIDATE_HD const T* row(int64_t i) const { return i < na ? A + i * d : B + (i - na) * d; }
  MITHRIDATE_HD double label(int64_t i) const { return static_cast<double>(i < na ? ya[i] : yb[i - na]); }
};

template <class T>
MITHRIDATE_HD inline Rows<T> training_rows(const Problem<T>& P) {
  return {P.Xc, P.yc, P.Xp, P.yp, P.nc, P.nc + P.k, P.d};
}

template <class T>
MITHRIDATE_HD inline Rows<T> validation_rows(const Problem<T>& P) {
  return {P.Xv, P.yv, nullptr, nullptr, P.nv, P.nv, P.d};
}

// ---- the loss of one row -------------------------------------------------------

// l(z, y); *c1 = l'(z), *c2 = l''(z). Logistic (labels {0, 1}) through
// t = exp(-|z|) in (0, 1], so no exp overflows for any z.
MITHRIDATE_HD inline double loss_terms(int loss, double z, double y, double* c1, double* c2) {
  if (loss == kLogistic) {
    const double t = std::exp(-std::fabs(z));
    const double inv = 1.0 / (1.0 + t);
    *c1 = (z >= 0.0 ? inv : t * inv) - y;  // sigmoid(z) - y
    *c2 = t * inv * inv;                   // sigmoid(z) sigmoid(-z)
    return std::fmax(z, 0.0) + std::log1p(t) - y * z;
  }
  const double r = z - y;
  *c1 = r;
  *c2 = 1.0;
  return 0.5 * r * r;
}

// ---- per-coordinate updates (j in [0, d]; slot d is the intercept) -----------

// Training gradient of coordinate j from the row sum gsum_j = (X^T l')_j.
MITHRIDATE_HD inline double grad_j(double gsum_j, int64_t n, double e, double theta_j, bool weight) {
  return gsum_j / static_cast<double>(n) + (weight ? e * theta_j : 0.0);
}

// Heavy-ball step of coordinate j (float64 state).
MITHRIDATE_HD inline void step_j(double* theta_j, double* v_j, double g, double alpha, double gamma) {
  *v_j = gamma * *v_j - (1.0 - gamma) * g;
  *theta_j += alpha * *v_j;
}

// Forward mode for lam: the tangent of g is H_data dtheta + e (dw + w).
MITHRIDATE_HD inline void tangent_step_j(double* dth_j, double* dv_j, double hsum_j, int64_t n,
                                         double e, double theta_j, bool weight, double alpha,
                                         double gamma) {
  const double dg = hsum_j / static_cast<double>(n) + (weight ? e * (*dth_j + theta_j) : 0.0);
  *dv_j = gamma * *dv_j - (1.0 - gamma) * dg;
  *dth_j += alpha * *dv_j;
}

// Reverse step of the adjoints tb = dA/dtheta_{t+1}, vb = dA/dv_{t+1}, with
// u = vb + alpha tb (the adjoint of v_{t+1}) and hsum_j = (X^T (l'' X u))_j:
//   tb -= (1 - gamma) H(theta_t) u,  vb = gamma u.
MITHRIDATE_HD inline void adjoint_j(double* tb_j, double* vb_j, double u_j, double hsum_j, int64_t n,
                                    double e, bool weight, double gamma) {
  *tb_j -= (1.0 - gamma) * (hsum_j / static_cast<double>(n) + (weight ? e * u_j : 0.0));
  *vb_j = gamma * u_j;
}

// The step's d lam term -(1 - gamma) d/dlam (g . u) = -(1 - gamma) e (w_t . u_w),
// from wu = w_t . u_w.
MITHRIDATE_HD inline double lam_term(double wu, double e, double gamma) {
  return -(1.0 - gamma) * e * wu;
}

// d/dXp_r (g . u) scaled by -(1 - gamma) is  -(a th + b u)  over the w slots:
// the coefficients of poisoning row r (z = its score, xu = its x . u + u_d).
MITHRIDATE_HD inline void mixed_coefs(double c1, double c2, double xu, int64_t n, double gamma,
                                      double* a, double* b) {
  const double s = (1.0 - gamma) / static_cast<double>(n);
  *a = s * c2 * xu;
  *b = s * c1;
}

// ---- divergence (the check and its bound: kernels/cpu/hypergrad.py) ----------------

constexpr double kGrowth = 1e6;  // = GROWTH in kernels/cpu/hypergrad.py

// The first step whose squared training-gradient norm gg = ||g(theta_t)||^2 is
// nan/inf or above kGrowth gg_0 / (1 - gamma)^2.
struct Watch {
  double limit = 0.0;
  int64_t step = -1;

  MITHRIDATE_HD void check(double gg, double gamma, int64_t t) {
    if (step >= 0) return;
    if (t == 0) limit = kGrowth * gg / ((1.0 - gamma) * (1.0 - gamma));
    if (!(std::isfinite(gg) && gg <= limit)) step = t;
  }
};

// ---- reversible steps in exact fixed point -----------------------------------

// x + y (sign = +1) or x - y (sign = -1) into *out, kInt64 when it does not fit.
MITHRIDATE_HD inline int add_checked(int64_t x, int64_t y, int sign, int64_t* out) {
  const uint64_t r = sign > 0 ? static_cast<uint64_t>(x) + static_cast<uint64_t>(y)
                              : static_cast<uint64_t>(x) - static_cast<uint64_t>(y);
  const int64_t s = static_cast<int64_t>(r);
  // Signed overflow iff the result's sign differs from x's while y (or -y) has x's sign.
  const bool ovf = sign > 0 ? ((x >= 0) == (y >= 0) && (s >= 0) != (x >= 0))
                            : ((x >= 0) != (y >= 0) && (s >= 0) != (x >= 0));
  if (ovf) return fixed_point::kInt64;
  *out = s;
  return fixed_point::kOk;
}

// The increments of a reversible step (kernels/cpu/hypergrad_reversible.py states
// the invariant): v += a + b, a = rint(-cg gsum_j 2^f), b = rint(-ce thq_j)
// (cg = (1-gamma)/n, ce = (1-gamma) e, computed once per problem; b = 0 on the
// intercept); theta += c, c = rint(alpha vq_j). Each is rint of ONE rounded
// product (int64 -> double rounds to nearest, 2^f is exact), so FMA
// contraction, reciprocals or reassociation have nothing to change: the
// reverse recomputes the forward's integers whatever the compiler flags.
struct RevCoefs {
  double cg, ce, alpha;
};

MITHRIDATE_HD inline RevCoefs rev_coefs(double gamma, int64_t n, double e, double alpha) {
  return {(1.0 - gamma) / static_cast<double>(n), (1.0 - gamma) * e, alpha};
}

// a and b of coordinate j (b = 0 unless weight); a fixed_point code.
MITHRIDATE_HD inline int rev_v_incr(double gsum_j, int64_t thq_j, bool weight, const RevCoefs& k, int f,
                                    int64_t* a, int64_t* b) {
  *b = 0;
  const int c = fixed_point::encode(-k.cg * gsum_j, f, a);
  if (c != fixed_point::kOk || !weight) return c;
  return fixed_point::encode(-k.ce * static_cast<double>(thq_j), 0, b);
}

// Forward step of coordinate j: v = mul(v) + a + b; theta += c.
// The state is scratch: on failure the caller abandons it.
MITHRIDATE_HD inline int rev_forward_j(int64_t* th, int64_t* v, uint32_t* buf, double gsum_j, bool weight,
                                       const RevCoefs& k, uint32_t num, uint32_t den, int words, int f) {
  int c = fixed_point::step_check(*v, buf, words, num, den);
  if (c != fixed_point::kOk) return c;
  fixed_point::step_apply(v, buf, words, num, den);
  int64_t a, b, q;
  if ((c = rev_v_incr(gsum_j, *th, weight, k, f, &a, &b)) != fixed_point::kOk) return c;
  if ((c = add_checked(*v, a, +1, v)) != fixed_point::kOk) return c;
  if ((c = add_checked(*v, b, +1, v)) != fixed_point::kOk) return c;
  if ((c = fixed_point::encode(k.alpha * static_cast<double>(*v), 0, &q)) != fixed_point::kOk) return c;
  return add_checked(*th, q, +1, th);
}

// Reverse step, first half: theta_t = theta_{t+1} - c.
MITHRIDATE_HD inline int rev_theta_j(int64_t* th, int64_t v, const RevCoefs& k) {
  int64_t q;
  const int c = fixed_point::encode(k.alpha * static_cast<double>(v), 0, &q);
  return c != fixed_point::kOk ? c : add_checked(*th, q, -1, th);
}

// Reverse step, second half (gsum_j recomputed bit for bit at theta_t = th):
// v_t = unmul(v_{t+1} - b - a).
MITHRIDATE_HD inline int rev_velocity_j(int64_t* v, uint32_t* buf, double gsum_j, int64_t th, bool weight,
                                        const RevCoefs& k, uint32_t num, uint32_t den, int words, int f) {
  int64_t a, b;
  int c = rev_v_incr(gsum_j, th, weight, k, f, &a, &b);
  if (c != fixed_point::kOk || (c = add_checked(*v, b, -1, v)) != fixed_point::kOk ||
      (c = add_checked(*v, a, -1, v)) != fixed_point::kOk)
    return c;
  if ((c = fixed_point::step_check(*v, buf, words, den, num)) != fixed_point::kOk) return c;
  fixed_point::step_apply(v, buf, words, den, num);
  return fixed_point::kOk;
}

// ---- entry points (csrc/cpu/hypergrad.cpp, csrc/cuda/hypergrad.cu) ------------------------
// Run `mode` on problems[0..count); status[b] per problem. Validation is the
// caller's (mithridate/hypergrad/native.py); outputs are written in place.

namespace cpu {
template <class T>
void run(int mode, const Problem<T>* problems, int64_t count, Status* status);
}  // namespace cpu

namespace cuda {
// problems: a HOST array of descriptors whose pointers are DEVICE memory.
template <class T>
void run(int mode, const Problem<T>* problems, int64_t count, Status* status, int device,
         uintptr_t stream);
}  // namespace cuda

}  // namespace hypergrad
}  // namespace mithridate
