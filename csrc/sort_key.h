// The sort key of a score, shared by the CPU and CUDA rank kernels.
#pragma once

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define ASL_HOST_DEVICE __host__ __device__
#else
#define ASL_HOST_DEVICE
#endif

namespace asl {

// An unsigned key whose ascending order is the descending order of the float score, with
// torch.sort's conventions: -0.0 ties with +0.0, NaN sorts above +inf (so first), -inf last.
// Ties (equal keys) are broken by the column in the sorts that use it.
ASL_HOST_DEVICE inline uint32_t descending_key(float x) {
  if (x != x) return 0u;  // NaN: the best key
  if (x == 0.0f) x = 0.0f;  // -0.0 -> +0.0
#if defined(__CUDA_ARCH__)
  const uint32_t bits = __float_as_uint(x);
#else
  uint32_t bits;
  std::memcpy(&bits, &x, sizeof(bits));
#endif
  // Ascending key of the float: flip all bits of negatives, the sign bit of positives.
  const uint32_t ascending = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
  return ~ascending;  // >= 0x007fffff (+inf): key 0 is NaN's alone
}

}  // namespace asl
