// CUDA kernels of asl::token_ranks and asl::rank_variance (docs/algorithms.md sections 2 and 3).
//
// token_ranks: one device-wide stable radix sort (cub) of all B*m entries by the 64-bit key
// (row << 32 | descending score key), with the columns as values. Sorting by row first keeps
// each row's entries together, in positions row*m .. row*m + m-1; stability keeps equal scores
// in column order (ties to the lower index). A scatter then writes rank = position + 1.
// rank_variance: one block per sequence, threads striding over the columns, a fixed-order
// shared-memory tree reduction in double (deterministic).
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cub/device/device_radix_sort.cuh>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "../checks.h"
#include "../column_math.h"
#include "../sort_key.h"
#include "kernels.h"

namespace asl {
namespace {

constexpr int kThreads = 256;

inline int blocks_for(int64_t items) {
  const int64_t blocks = (items + kThreads - 1) / kThreads;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535));
}

template <typename scalar_t>
__global__ void make_sort_keys(const scalar_t* __restrict__ scores, int64_t total, int64_t m,
                               unsigned long long* __restrict__ keys, int32_t* __restrict__ cols) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const unsigned long long row = static_cast<unsigned long long>(i / m);
    keys[i] = (row << 32) | descending_key(static_cast<float>(scores[i]));
    cols[i] = static_cast<int32_t>(i % m);
  }
}

// Sorted position i holds row i / m's (i % m)-th best column.
__global__ void scatter_ranks(const int32_t* __restrict__ sorted_cols, int64_t total, int64_t m,
                              int64_t* __restrict__ ranks) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t row = i / m;
    ranks[row * m + sorted_cols[i]] = i % m + 1;
  }
}

__global__ void rank_variance_kernel(const int64_t* __restrict__ ranks, int64_t layers, int64_t batch, int64_t m,
                                     int64_t k, double* __restrict__ out) {
  __shared__ double acc_s[kThreads];
  __shared__ long long count_s[kThreads];
  const int64_t b = blockIdx.x;
  const int64_t layer_stride = batch * m;
  const int64_t* row = ranks + b * m;
  double acc = 0.0;
  long long count = 0;
  for (int64_t t = threadIdx.x; t < m; t += blockDim.x) {
    count += add_column_rank_deviation(row, t, layers, layer_stride, k, acc);
  }
  acc_s[threadIdx.x] = acc;
  count_s[threadIdx.x] = count;
  __syncthreads();
  for (int half = kThreads / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      acc_s[threadIdx.x] += acc_s[threadIdx.x + half];
      count_s[threadIdx.x] += count_s[threadIdx.x + half];
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    out[b] = acc_s[0] / (static_cast<double>(count_s[0]) * static_cast<double>(layers));  // empty union: NaN
  }
}

}  // namespace

at::Tensor token_ranks_cuda(const at::Tensor& scores_in) {
  check_token_ranks(scores_in);
  TORCH_CHECK(scores_in.is_cuda(), "asl::token_ranks: CUDA kernel got scores on ", scores_in.device());
  const c10::cuda::CUDAGuard guard(scores_in.device());
  const at::Tensor scores = scores_in.contiguous();
  const int64_t rows = scores.size(0), m = scores.size(1), total = rows * m;
  at::Tensor out = at::empty({rows, m}, scores.options().dtype(at::kLong));
  if (total == 0) return out;
  TORCH_CHECK(total <= std::numeric_limits<int32_t>::max(), "asl::token_ranks: CUDA kernel needs B * m < 2^31, got ",
              total);
  int row_bits = 0;
  while ((int64_t{1} << row_bits) < rows) ++row_bits;
  TORCH_CHECK(row_bits <= 32, "asl::token_ranks: too many rows: ", rows);

  const auto stream = c10::cuda::getCurrentCUDAStream();
  const auto opts = scores.options();
  at::Tensor keys_in = at::empty({total}, opts.dtype(at::kLong));  // 64-bit keys, reinterpreted unsigned
  at::Tensor keys_out = at::empty({total}, opts.dtype(at::kLong));
  at::Tensor cols_in = at::empty({total}, opts.dtype(at::kInt));
  at::Tensor cols_out = at::empty({total}, opts.dtype(at::kInt));
  auto* k_in = reinterpret_cast<unsigned long long*>(keys_in.data_ptr<int64_t>());
  auto* k_out = reinterpret_cast<unsigned long long*>(keys_out.data_ptr<int64_t>());
  int32_t* c_in = cols_in.data_ptr<int32_t>();
  int32_t* c_out = cols_out.data_ptr<int32_t>();

  ASL_DISPATCH_SCORE_TYPES(scores.scalar_type(), "asl::token_ranks", [&] {
    make_sort_keys<scalar_t><<<blocks_for(total), kThreads, 0, stream>>>(scores.const_data_ptr<scalar_t>(), total, m,
                                                                          k_in, c_in);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const int items = static_cast<int>(total);
  const int end_bit = 32 + row_bits;
  size_t temp_bytes = 0;
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(nullptr, temp_bytes, k_in, k_out, c_in, c_out, items, 0, end_bit,
                                                 stream));
  at::Tensor temp = at::empty({static_cast<int64_t>(temp_bytes)}, opts.dtype(at::kByte));
  C10_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(temp.data_ptr(), temp_bytes, k_in, k_out, c_in, c_out, items, 0,
                                                 end_bit, stream));
  scatter_ranks<<<blocks_for(total), kThreads, 0, stream>>>(c_out, total, m, out.data_ptr<int64_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

at::Tensor rank_variance_cuda(const at::Tensor& ranks_in, int64_t k) {
  check_rank_variance(ranks_in, k);
  TORCH_CHECK(ranks_in.is_cuda(), "asl::rank_variance: CUDA kernel got ranks on ", ranks_in.device());
  const c10::cuda::CUDAGuard guard(ranks_in.device());
  const at::Tensor ranks = ranks_in.contiguous();
  const int64_t layers = ranks.size(0), batch = ranks.size(1), m = ranks.size(2);
  at::Tensor out = at::empty({batch}, ranks.options().dtype(at::kDouble));
  if (batch == 0) return out;
  TORCH_CHECK(batch <= std::numeric_limits<int32_t>::max(), "asl::rank_variance: batch too large: ", batch);
  rank_variance_kernel<<<static_cast<unsigned>(batch), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
      ranks.const_data_ptr<int64_t>(), layers, batch, m, k, out.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace asl
