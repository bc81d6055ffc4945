// Host loops of the exact fixed-point arithmetic over flat arrays.
#include "fixed_point.h"

namespace mithridate {
namespace fixed_point {
namespace cpu {

Status encode(const double* x, int64_t* q, int64_t n, int frac_bits) {
  for (int64_t i = 0; i < n; ++i) {
    const int code = fixed_point::encode(x[i], frac_bits, &q[i]);
    if (code != kOk) return {code, i};
  }
  return {kOk, -1};
}

void decode(const int64_t* q, double* x, int64_t n, int frac_bits) {
  for (int64_t i = 0; i < n; ++i) x[i] = fixed_point::decode(q[i], frac_bits);
}

Status mul(int64_t* x, uint32_t* b, int64_t n, int w, uint32_t num, uint32_t den) {
  // Check every element before writing any: a failure leaves x and b intact.
  for (int64_t i = 0; i < n; ++i) {
    const int code = step_check(x[i], b + i * w, w, num, den);
    if (code != kOk) return {code, i};
  }
  for (int64_t i = 0; i < n; ++i) step_apply(&x[i], b + i * w, w, num, den);
  return {kOk, -1};
}

}  // namespace cpu
}  // namespace fixed_point
}  // namespace mithridate
