// Exact reversible fixed-point arithmetic (Maclaurin, Duvenaud & Adams 2015).
//
// Values are int64 fixed point (x * 2^frac_bits). Multiplying by a rational
// gamma = num/den loses a digit in base den; it is kept in a per-element
// arbitrary-precision buffer B (w little-endian uint32 limbs), and a digit in
// base num is popped from B to fill the low end of x, so the multiplication is
// a bijection on (x, B) and unmul undoes it bit for bit (see step_apply).
// Division is floor division, so negative x are exact too.
//
// The scalar math is MITHRIDATE_HD so host loops and CUDA kernels share it.
#pragma once

#include <cmath>
#include <cstdint>

// The reversal is exact only under IEEE semantics (rint, round-to-nearest
// conversions, the recomputed gradient bit for bit): a -ffast-math or -Ofast
// build is refused here rather than allowed to fail at run time.
#if defined(__FAST_MATH__)
#error "mithridate's exact fixed point needs IEEE arithmetic: build csrc/ without -ffast-math or -Ofast"
#endif

#ifdef __CUDACC__
#define MITHRIDATE_HD __host__ __device__
#else
#define MITHRIDATE_HD
#endif

namespace mithridate {
namespace fixed_point {

// Error codes returned by the host entry points (0 = success).
enum Code : int { kOk = 0, kCapacity = 1, kInt64 = 2, kNotFinite = 3, kRange = 4 };

struct Status {
  int code;       // a Code
  int64_t index;  // first offending element (flat index), -1 on success
};

// ---- encode / decode --------------------------------------------------------

// x * 2^frac_bits rounded to nearest (ties to even); kNotFinite / kRange on
// nan/inf or a value outside int64 (then *q is left untouched).
MITHRIDATE_HD inline int encode(double x, int frac_bits, int64_t* q) {
  if (!std::isfinite(x)) return kNotFinite;
  const double y = std::rint(std::ldexp(x, frac_bits));  // ldexp is exact unless it overflows to inf
  // int64 holds [-2^63, 2^63); both bounds are exact doubles.
  if (!(y >= -9223372036854775808.0 && y < 9223372036854775808.0)) return kRange;
  *q = static_cast<int64_t>(y);
  return kOk;
}

// q / 2^frac_bits, rounded to the nearest double when |q| > 2^53.
MITHRIDATE_HD inline double decode(int64_t q, int frac_bits) {
  return std::ldexp(static_cast<double>(q), -frac_bits);
}

// ---- floor division and checked int64 arithmetic ----------------------------

// Python-style floor division by d > 0: x = q*d + r with 0 <= r < d.
MITHRIDATE_HD inline int64_t floor_divmod(int64_t x, int64_t d, int64_t* r) {
  int64_t q = x / d, rem = x % d;
  if (rem < 0) { rem += d; q -= 1; }  // x < 0 and d >= 2 here, so q - 1 cannot overflow
  *r = rem;
  return q;
}

// Whether q*m + r fits int64, for m > 0 and 0 <= r < m. Exact even where q*m
// alone does not fit (q < 0, r > 0): then q*m + r >= -2^63 iff -q*m <= 2^63 + r.
MITHRIDATE_HD inline bool mul_add_fits(int64_t q, int64_t m, int64_t r) {
  if (q >= 0) return q <= (INT64_MAX - r) / m;
  const uint64_t neg_q = 0 - static_cast<uint64_t>(q);  // -q in [1, 2^63]
  return neg_q <= ((uint64_t(1) << 63) + static_cast<uint64_t>(r)) / static_cast<uint64_t>(m);
}

// q*m + r, once mul_add_fits() holds; in uint64 since q*m may wrap on the way.
MITHRIDATE_HD inline int64_t mul_add(int64_t q, int64_t m, int64_t r) {
  return static_cast<int64_t>(static_cast<uint64_t>(q) * static_cast<uint64_t>(m) + static_cast<uint64_t>(r));
}

// ---- the buffer: an unsigned big integer of w limbs -------------------------

// B = B*base + r, for r < base < 2^31; the caller has checked that it fits.
MITHRIDATE_HD inline void push(uint32_t* b, int w, uint32_t base, uint32_t r) {
  uint64_t carry = r;  // < 2^31, so limb*base + carry < 2^63
  for (int j = 0; j < w; ++j) {
    const uint64_t cur = static_cast<uint64_t>(b[j]) * base + carry;
    b[j] = static_cast<uint32_t>(cur);
    carry = cur >> 32;
  }
}

// r = B mod base; B = B div base.
MITHRIDATE_HD inline uint32_t pop(uint32_t* b, int w, uint32_t base) {
  uint64_t rem = 0;
  for (int j = w - 1; j >= 0; --j) {
    const uint64_t cur = (rem << 32) | b[j];  // < base * 2^32 < 2^63
    b[j] = static_cast<uint32_t>(cur / base);
    rem = cur % base;
  }
  return static_cast<uint32_t>(rem);
}

// ---- one step: x *= m/d exactly ------------------------------------------------
// mul by num/den is the step with (m, d) = (num, den); unmul is (den, num).
// With x = hi*d + lo (floor division), the step is
//   s = pop(B, m); y = lo*m + s; push(B, d, y mod d); x = hi*m + y div d,
// i.e. x' = floor((x*m + s)/d) and the digit (x*m + s) mod d goes to B. It is a
// bijection on (x, B): the step with (d, m) pops that digit back, rebuilds
// x'*d + r = x*m + s and pushes s. Popping before pushing keeps x' within one
// unit of x*m/d (within m/d when m > d): |x' - x*m/d| < max(1, m/d).
// lo*m + s < d*m < 2^62 and y div d < m, so nothing overflows before the checks.

// kOk, kCapacity (the push would not fit w limbs) or kInt64 (x' would not fit
// int64). Reads only. One top-down pass divides B by m (quotient Q, remainder
// s) beside N = 2^(32w) - 1 - r by d: the push fits iff Q*d + r <= 2^(32w) - 1,
// iff Q <= floor(N/d). Only N's lowest limb depends on r, known once s is.
MITHRIDATE_HD inline int step_check(int64_t x, const uint32_t* b, int w, uint32_t m, uint32_t d) {
  int64_t lo;
  const int64_t hi = floor_divmod(x, d, &lo);
  uint64_t rem_b = 0, rem_n = 0;
  int cmp = 0;  // sign of Q - floor(N/d) on the limbs seen so far, from the top
  for (int j = w - 1; j >= 1; --j) {
    const uint64_t cb = (rem_b << 32) | b[j], cn = (rem_n << 32) | 0xFFFFFFFFu;
    const uint64_t qb = cb / m, qn = cn / d;
    rem_b = cb % m;
    rem_n = cn % d;
    if (cmp == 0 && qb != qn) cmp = qb < qn ? -1 : 1;
  }
  const uint64_t cb = (rem_b << 32) | b[0];
  const uint64_t y = static_cast<uint64_t>(lo) * m + cb % m;
  if (cmp == 0) {
    const uint64_t qb = cb / m, qn = ((rem_n << 32) | (0xFFFFFFFFu - y % d)) / d;
    cmp = qb > qn;
  }
  if (cmp > 0) return kCapacity;
  return mul_add_fits(hi, m, static_cast<int64_t>(y / d)) ? kOk : kInt64;
}

// Apply the step; the caller has checked step_check() == kOk.
MITHRIDATE_HD inline void step_apply(int64_t* x, uint32_t* b, int w, uint32_t m, uint32_t d) {
  int64_t lo;
  const int64_t hi = floor_divmod(*x, d, &lo);
  const uint64_t y = static_cast<uint64_t>(lo) * m + pop(b, w, m);
  push(b, w, d, static_cast<uint32_t>(y % d));
  *x = mul_add(hi, m, static_cast<int64_t>(y / d));
}

// ---- capacity ----------------------------------------------------------------

// Limbs that n_steps successive mul(num/den) starting from an empty (zero)
// buffer can never overflow.
//
// Proof. Let B_k be the buffer after k steps (B_0 = 0) and g = den/num. Step
// k+1 pops first, so the largest value the buffer holds is B_{k+1} itself:
// B_{k+1} = floor(B_k/num)*den + r with r < den, so B_{k+1} <= g*B_k + den - 1
// and B_k <= (den-1) * sum_{i<k} g^i < den * k * max(1, g)^(k-1). For k <= T
// this is at most den * T * max(1, g)^(T-1), which fits 32*words bits when
//   bits = log2(den) + log2(T) + (T-1) * max(0, log2(den) - log2(num)).
// unmul only revisits earlier states. The log2 terms are computed in float64
// (relative error ~1e-16, far below one bit for any T that fits in memory);
// one extra bit covers it.
inline int64_t required_words(int64_t n_steps, uint32_t num, uint32_t den) {
  if (n_steps <= 0) return 1;
  const double t = static_cast<double>(n_steps);
  const double growth = std::fmax(0.0, std::log2(static_cast<double>(den)) - std::log2(static_cast<double>(num)));
  const double bits = std::log2(static_cast<double>(den)) + std::log2(t) + (t - 1.0) * growth + 1.0;
  return static_cast<int64_t>(std::ceil(bits / 32.0));
}

// ---- host entry points (implemented in csrc/cpu and csrc/cuda) ---------------
// Shapes are flat: n values, and a buffer of n rows of w limbs. mul(num, den)
// applies the step (m, d) = (num, den) to every element, or to none when any
// element fails step_check: a failure never leaves a partial update.

namespace cpu {
Status encode(const double* x, int64_t* q, int64_t n, int frac_bits);
void decode(const int64_t* q, double* x, int64_t n, int frac_bits);
Status mul(int64_t* x, uint32_t* b, int64_t n, int w, uint32_t num, uint32_t den);
}  // namespace cpu

namespace cuda {  // device pointers; runs on `stream` (a cudaStream_t)
Status encode(uintptr_t x, uintptr_t q, int64_t n, int frac_bits, int device, uintptr_t stream);
void decode(uintptr_t q, uintptr_t x, int64_t n, int frac_bits, int device, uintptr_t stream);
Status mul(uintptr_t x, uintptr_t b, int64_t n, int w, uint32_t num, uint32_t den, int device,
           uintptr_t stream);
}  // namespace cuda

}  // namespace fixed_point
}  // namespace mithridate
