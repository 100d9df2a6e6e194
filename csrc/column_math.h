// Per-column arithmetic shared by the CPU and CUDA kernels, so both compute the same thing.
#pragma once

#include <cstdint>

#include "sort_key.h"  // ASL_HOST_DEVICE

namespace asl {

// Rank variance (docs/algorithms.md section 3), one column t: if t is in the union of the
// per-layer top-k (some layer ranks it <= k), add its squared deviations from its mean rank
// over the layers to `acc` and return true.
ASL_HOST_DEVICE inline bool add_column_rank_deviation(const int64_t* row, int64_t t, int64_t layers,
                                                      int64_t layer_stride, int64_t k, double& acc) {
  bool in_union = false;
  double sum = 0.0;
  for (int64_t j = 0; j < layers; ++j) {
    const int64_t v = row[j * layer_stride + t];
    in_union |= v <= k;  // a layer's top-k are exactly its ranks 1..k
    sum += static_cast<double>(v);
  }
  if (!in_union) return false;
  const double mean = sum / static_cast<double>(layers);
  for (int64_t j = 0; j < layers; ++j) {
    const double dev = static_cast<double>(row[j * layer_stride + t]) - mean;
    acc += dev * dev;
  }
  return true;
}

// Window scores (section 1, steps 3-4), one column j of one KV group: each of the group's
// `ratio` query heads' column sums (rows of length m from `heads`) pooled over
// [j - kernel/2, j + kernel/2] (stride 1; avg divides by kernel always, max ignores the
// padding), then summed over the heads.
ASL_HOST_DEVICE inline float pooled_group_score(const float* heads, int64_t ratio, int64_t m, int64_t j,
                                                int64_t kernel, bool avg) {
  const int64_t half = kernel / 2;
  const int64_t lo = j - half > 0 ? j - half : 0, hi = j + half < m - 1 ? j + half : m - 1;
  float total = 0.0f;
  for (int64_t h = 0; h < ratio; ++h) {
    const float* row = heads + h * m;
    float pooled;
    if (avg) {
      float acc = 0.0f;
      for (int64_t t = lo; t <= hi; ++t) acc += row[t];
      pooled = acc / static_cast<float>(kernel);
    } else {
      pooled = row[lo];
      for (int64_t t = lo + 1; t <= hi; ++t) pooled = row[t] > pooled ? row[t] : pooled;
    }
    total += pooled;
  }
  return total;
}

}  // namespace asl
