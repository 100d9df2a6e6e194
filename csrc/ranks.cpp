// CPU kernels of asl::token_ranks and asl::rank_variance (docs/algorithms.md sections 2 and 3).
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#include "checks.h"
#include "ops.h"
#include "column_math.h"
#include "sort_key.h"

namespace asl {
namespace {

// Sorts `val` by `key` ascending, stably (LSD radix sort, 11-bit digits, 3 passes).
// key/val are the inputs, key_tmp/val_tmp scratch of the same length; returns the
// array that holds the sorted values (val or val_tmp).
const uint32_t* radix_sort_pairs(uint32_t* key, uint32_t* val, uint32_t* key_tmp, uint32_t* val_tmp, int64_t m) {
  constexpr int kBits = 11;
  constexpr uint32_t kMask = (1u << kBits) - 1;
  std::vector<uint32_t> count(size_t{1} << kBits);
  for (int shift = 0; shift < 32; shift += kBits) {
    std::fill(count.begin(), count.end(), 0u);
    for (int64_t i = 0; i < m; ++i) count[(key[i] >> shift) & kMask]++;
    if (count[(key[0] >> shift) & kMask] == static_cast<uint32_t>(m)) continue;  // one digit: nothing moves
    uint32_t total = 0;
    for (auto& c : count) {
      const uint32_t here = c;
      c = total;
      total += here;
    }
    for (int64_t i = 0; i < m; ++i) {
      const uint32_t pos = count[(key[i] >> shift) & kMask]++;
      key_tmp[pos] = key[i];
      val_tmp[pos] = val[i];
    }
    std::swap(key, key_tmp);
    std::swap(val, val_tmp);
  }
  return val;
}

// Ranks of one row: `order` gets the columns best-first (ties to the lower column).
template <typename scalar_t>
void rank_row(const scalar_t* src, int64_t m, int64_t* out, std::vector<uint32_t>& scratch,
              std::vector<uint64_t>& pairs) {
  if (m < 256) {  // small rows: sort (key, column) pairs; the column breaks ties
    pairs.resize(m);
    for (int64_t j = 0; j < m; ++j) {
      pairs[j] = (uint64_t{descending_key(static_cast<float>(src[j]))} << 32) | static_cast<uint64_t>(j);
    }
    std::sort(pairs.begin(), pairs.end());
    for (int64_t p = 0; p < m; ++p) out[pairs[p] & 0xffffffffu] = p + 1;
    return;
  }
  scratch.resize(4 * m);
  uint32_t* key = scratch.data();
  uint32_t* val = key + m;
  for (int64_t j = 0; j < m; ++j) {
    key[j] = descending_key(static_cast<float>(src[j]));
    val[j] = static_cast<uint32_t>(j);  // stable sort from column order: ties keep it
  }
  const uint32_t* order = radix_sort_pairs(key, val, val + m, val + 2 * m, m);
  for (int64_t p = 0; p < m; ++p) out[order[p]] = p + 1;
}

}  // namespace

at::Tensor token_ranks_cpu(const at::Tensor& scores_in) {
  check_token_ranks(scores_in);
  TORCH_CHECK(scores_in.device().is_cpu(), "asl::token_ranks: CPU kernel got scores on ", scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  const int64_t rows = scores.size(0), m = scores.size(1);
  at::Tensor out = at::empty({rows, m}, scores.options().dtype(at::kLong));
  if (rows == 0 || m == 0) return out;
  int64_t* dst = out.data_ptr<int64_t>();
  ASL_DISPATCH_SCORE_TYPES(scores.scalar_type(), "asl::token_ranks", [&] {
    const scalar_t* src = scores.const_data_ptr<scalar_t>();
    at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
      std::vector<uint32_t> scratch;
      std::vector<uint64_t> pairs;
      for (int64_t b = begin; b < end; ++b) rank_row(src + b * m, m, dst + b * m, scratch, pairs);
    });
  });
  return out;
}

at::Tensor rank_variance_cpu(const at::Tensor& ranks_in, int64_t k) {
  check_rank_variance(ranks_in, k);
  TORCH_CHECK(ranks_in.device().is_cpu(), "asl::rank_variance: CPU kernel got ranks on ", ranks_in.device());
  const at::Tensor ranks = ranks_in.contiguous();
  const int64_t layers = ranks.size(0), batch = ranks.size(1), m = ranks.size(2);
  at::Tensor out = at::empty({batch}, ranks.options().dtype(at::kDouble));
  if (batch == 0) return out;
  const int64_t* r = ranks.const_data_ptr<int64_t>();
  // Fixed column blocks, summed in block order afterwards: the result does not depend on
  // the thread count.
  constexpr int64_t kCols = 4096;
  const int64_t blocks = (m + kCols - 1) / kCols;
  std::vector<double> part_sum(batch * blocks, 0.0);
  std::vector<int64_t> part_count(batch * blocks, 0);
  const int64_t layer_stride = batch * m;
  at::parallel_for(0, batch * blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, c0 = (task % blocks) * kCols, c1 = std::min(m, c0 + kCols);
      const int64_t* row = r + b * m;
      double acc = 0.0;
      int64_t count = 0;
      for (int64_t t = c0; t < c1; ++t) {
        count += add_column_rank_deviation(row, t, layers, layer_stride, k, acc);
      }
      part_sum[task] = acc;
      part_count[task] = count;
    }
  });
  double* dst = out.data_ptr<double>();
  for (int64_t b = 0; b < batch; ++b) {
    double acc = 0.0;
    int64_t count = 0;
    for (int64_t c = 0; c < blocks; ++c) {
      acc += part_sum[b * blocks + c];
      count += part_count[b * blocks + c];
    }
    dst[b] = acc / (static_cast<double>(count) * static_cast<double>(layers));  // empty union: NaN, as the reference
  }
  return out;
}

}  // namespace asl
