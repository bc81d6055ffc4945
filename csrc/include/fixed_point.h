// Exact reversible fixed-point arithmetic (Maclaurin, Duvenaud & Adams 2015).
//
// Values are int64 fixed point (x * 2^frac_bits). Multiplying by a rational
// gamma = num/den loses the digit x mod den; it is kept in a per-element
// arbitrary-precision buffer B (n_words little-endian uint32 limbs), so the
// multiplication is a bijection on (x, B):
//   mul:   B = B*den + (x mod den); x = floor(x/den)*num; x += B mod num; B /= num
//   unmul: the same with num and den swapped (it undoes mul bit for bit).
// Division is floor division, so negative x are exact too.
//
// The scalar math is MITHRIDATE_HD so host loops and CUDA kernels share it.
#pragma once

#include <cmath>
#include <cstdint>

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
  int64_t q = x / d, m = x % d;
  if (m < 0) { m += d; q -= 1; }  // x < 0 and d >= 2 here, so q - 1 cannot overflow
  *r = m;
  return q;
}

// Whether q*m + r fits int64, for m > 0 and 0 <= r < m.
MITHRIDATE_HD inline bool mul_add_fits(int64_t q, int64_t m, int64_t r) {
  if (q >= 0) return q <= (INT64_MAX - r) / m;
  return q >= INT64_MIN / m;  // C++ division truncates: this is ceil(INT64_MIN/m)
}

// ---- the buffer: an unsigned big integer of w limbs -------------------------

// Carry-out of B*base + r (0 iff the result fits the w limbs); read-only.
MITHRIDATE_HD inline uint32_t push_carry(const uint32_t* b, int w, uint32_t base, uint32_t r) {
  uint64_t carry = r;
  for (int j = 0; j < w; ++j) carry = (static_cast<uint64_t>(b[j]) * base + carry) >> 32;
  return static_cast<uint32_t>(carry);
}

// B = B*base + r; the caller has checked push_carry() == 0.
MITHRIDATE_HD inline void push(uint32_t* b, int w, uint32_t base, uint32_t r) {
  uint64_t carry = r;  // < 2^31, so limb*base + carry < 2^63
  for (int j = 0; j < w; ++j) {
    const uint64_t cur = static_cast<uint64_t>(b[j]) * base + carry;
    b[j] = static_cast<uint32_t>(cur);
    carry = cur >> 32;
  }
}

// B mod base; read-only.
MITHRIDATE_HD inline uint32_t mod(const uint32_t* b, int w, uint32_t base) {
  uint64_t rem = 0;
  for (int j = w - 1; j >= 0; --j) rem = ((rem << 32) | b[j]) % base;
  return static_cast<uint32_t>(rem);
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

// ---- one element of mul (in = den, out = num) or unmul (in = num, out = den)

// Whether the step can run: kOk, kCapacity (B*in + r would not fit the limbs)
// or kInt64 (the new x would not fit int64). Reads only.
MITHRIDATE_HD inline int step_check(int64_t x, const uint32_t* b, int w, uint32_t in, uint32_t out) {
  int64_t r_in;
  const int64_t q = floor_divmod(x, in, &r_in);
  if (push_carry(b, w, in, static_cast<uint32_t>(r_in)) != 0) return kCapacity;
  if (mul_add_fits(q, out, out - 1)) return kOk;  // fits whatever digit pops
  // Exact digit that would pop: (B*in + r_in) mod out, without touching B.
  const uint64_t r_out = (static_cast<uint64_t>(mod(b, w, out)) * in + r_in) % out;
  return mul_add_fits(q, out, static_cast<int64_t>(r_out)) ? kOk : kInt64;
}

// Apply the step; the caller has checked step_check() == kOk.
MITHRIDATE_HD inline void step_apply(int64_t* x, uint32_t* b, int w, uint32_t in, uint32_t out) {
  int64_t r_in;
  const int64_t q = floor_divmod(*x, in, &r_in);
  push(b, w, in, static_cast<uint32_t>(r_in));
  *x = q * out + static_cast<int64_t>(pop(b, w, out));
}

// ---- capacity ----------------------------------------------------------------

// Limbs that n_steps successive mul(num/den) starting from an empty (zero)
// buffer can never overflow.
//
// Proof. Let B_k be the buffer after k steps and D_k = B_k + 1 (D_0 = 1),
// g = den/num. Step k+1 stores the intermediate I = B_k*den + r with r < den,
// so I <= D_k*den - 1, and then B_{k+1} = floor(I/num) <= (D_k*den - 1)/num,
// hence D_{k+1} < g*D_k + 1 and D_k < sum_{i<=k} g^i <= (k+1) * max(1, g)^k.
// I is the largest value the buffer ever holds, so it suffices that
//   den * D_{T-1} <= den * T * max(1, g)^(T-1) <= 2^(32*words), i.e.
//   bits = log2(den) + log2(T) + (T-1) * max(0, log2(den) - log2(num)).
// The log2 terms are computed in float64 (relative error ~1e-16, i.e. far
// below one bit for any T that fits memory); one extra bit covers it.
inline int64_t required_words(int64_t n_steps, uint32_t num, uint32_t den) {
  if (n_steps <= 0) return 1;
  const double t = static_cast<double>(n_steps);
  const double growth = std::fmax(0.0, std::log2(static_cast<double>(den)) - std::log2(static_cast<double>(num)));
  const double bits = std::log2(static_cast<double>(den)) + std::log2(t) + (t - 1.0) * growth + 1.0;
  return static_cast<int64_t>(std::ceil(bits / 32.0));
}

// ---- host entry points (implemented in csrc/cpu and csrc/cuda) ---------------
// Shapes are flat: n values, and a buffer of n rows of w limbs. mul applies
// the step to every element, or to none when any element fails its check.

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
