// CUDA kernel of asl::window_scores (docs/algorithms.md section 1, steps 1-4).
//
// Same plan as the CPU kernel (../window_scores.cpp), with key tiles of 32 = one key per lane:
//   1. chunk_stats   grid (n/32 tiles, G, B): the tile's keys in shared memory (float32); each
//                    warp takes stacked window rows (row = hl*w + i of the group's r heads) and
//                    per row computes its 32 logits (one per lane), masks them (causal + padding),
//                    and writes the tile's max and sum of exp (warp shuffles).
//   2. merge_stats   one thread per (b, g, row): max M over the tiles and 1 / sum (0 when the row
//                    sees no key: a padding query contributes zeros).
//   3. column_sums   grid (m/32 prefix tiles, G, B): one warp per query head, one lane per column,
//                    summing exp(logit - M) / sum over the head's w rows in order.
//   4. pool_heads    one thread per output column: pooling per head (avg divides by kernel,
//                    max ignores the padding), sum over the group's heads, -inf on padding.
// Logits are recomputed in step 3 (the same dot-product code as step 1), so no [B, H, w, n]
// tensor and no repeated keys are ever stored. All arithmetic is float32; every sum has a fixed
// order, so results are deterministic.
#include <c10/cuda/CUDAStream.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>

#include "../checks.h"
#include "../column_math.h"
#include "kernels.h"

namespace asl {
namespace {

constexpr int kTile = 32;  // keys per tile: one per lane of a warp
constexpr int kWarpsPerBlock = 8;
constexpr unsigned kFullMask = 0xffffffffu;

struct Dims {
  int64_t batch, heads, groups, ratio, w, n, m, d;
  int64_t rows;    // ratio * w stacked window rows per group
  int64_t stride;  // shared-memory row length of a key: odd, so lanes hit distinct banks
  float scale;     // 1 / sqrt(d)
};

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(kFullMask, v, offset));
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(kFullMask, v, offset);
  return v;
}

// Loads keys[b, g, c0 : c0 + kTile, :] as float32 into tile[kTile][stride] (zeros past n).
template <typename scalar_t>
__device__ void load_key_tile(const scalar_t* __restrict__ keys, const Dims& s, int64_t b, int64_t g, int64_t c0,
                              float* tile) {
  const scalar_t* src = keys + (b * s.groups + g) * s.n * s.d;
  for (int64_t idx = threadIdx.x; idx < kTile * s.d; idx += blockDim.x) {
    const int64_t jl = idx / s.d, e = idx % s.d, j = c0 + jl;
    tile[jl * s.stride + e] = j < s.n ? static_cast<float>(src[j * s.d + e]) : 0.0f;
  }
}

// The scaled logit of a window row (float32 query, d values) and this lane's key of the tile.
__device__ __forceinline__ float logit(const float* __restrict__ q_row, const float* key, const Dims& s) {
  float dot = 0.0f;
  for (int64_t e = 0; e < s.d; ++e) dot += q_row[e] * key[e];
  return dot * s.scale;
}

// q: [B, H, w, d] float32 contiguous. Row `row` of group g is head g*r + row / w, query row % w.
__device__ __forceinline__ const float* query_row(const float* __restrict__ q, const Dims& s, int64_t b, int64_t g,
                                                  int64_t row) {
  const int64_t head = g * s.ratio + row / s.w;
  return q + ((b * s.heads + head) * s.w + row % s.w) * s.d;
}

template <typename scalar_t>
__global__ void chunk_stats(const float* __restrict__ q, const scalar_t* __restrict__ keys,
                            const bool* __restrict__ mask, Dims s, float* __restrict__ tile_max,
                            float* __restrict__ tile_sum) {
  extern __shared__ float tile[];
  const int64_t c = blockIdx.x, g = blockIdx.y, b = blockIdx.z, tiles = gridDim.x;
  const int64_t c0 = c * kTile;
  load_key_tile(keys, s, b, g, c0, tile);
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int64_t j = c0 + lane;
  const bool real = j < s.n && mask[b * s.n + j];
  for (int64_t row = warp; row < s.rows; row += warps) {  // uniform per warp: shuffles see all lanes
    const bool allowed = real && j <= s.m + row % s.w;     // causal: query column m + i sees keys <= it
    const float x = allowed ? logit(query_row(q, s, b, g, row), tile + lane * s.stride, s) : -INFINITY;
    const float mx = warp_max(x);
    const float sum = warp_sum(allowed ? expf(x - mx) : 0.0f);  // no lane allowed: mx = -inf, sum = 0
    if (lane == 0) {
      const int64_t slot = ((b * s.groups + g) * tiles + c) * s.rows + row;
      tile_max[slot] = mx;
      tile_sum[slot] = sum;
    }
  }
}

__global__ void merge_stats(const float* __restrict__ tile_max, const float* __restrict__ tile_sum, Dims s,
                            int64_t tiles, float* __restrict__ row_max, float* __restrict__ row_inv) {
  const int64_t total = s.batch * s.groups * s.rows;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t bg = idx / s.rows, row = idx % s.rows;
    float mx = -INFINITY;
    for (int64_t c = 0; c < tiles; ++c) mx = fmaxf(mx, tile_max[(bg * tiles + c) * s.rows + row]);
    float sum = 0.0f;
    if (mx != -INFINITY) {
      for (int64_t c = 0; c < tiles; ++c) {
        const int64_t slot = (bg * tiles + c) * s.rows + row;
        if (tile_max[slot] != -INFINITY) sum += tile_sum[slot] * expf(tile_max[slot] - mx);
      }
    }
    row_max[idx] = mx;
    row_inv[idx] = sum > 0.0f ? 1.0f / sum : 0.0f;
  }
}

template <typename scalar_t>
__global__ void column_sums(const float* __restrict__ q, const scalar_t* __restrict__ keys,
                            const bool* __restrict__ mask, Dims s, const float* __restrict__ row_max,
                            const float* __restrict__ row_inv, float* __restrict__ sums) {
  extern __shared__ float tile[];
  const int64_t g = blockIdx.y, b = blockIdx.z, bg = b * s.groups + g;
  const int64_t c0 = blockIdx.x * static_cast<int64_t>(kTile);
  load_key_tile(keys, s, b, g, c0, tile);
  __syncthreads();
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  const int64_t j = c0 + lane;
  const bool inside = j < s.m;  // prefix columns: every window query sees them causally
  const bool real = inside && mask[b * s.n + j];
  for (int64_t hl = warp; hl < s.ratio; hl += warps) {
    float acc = 0.0f;
    for (int64_t i = 0; i < s.w; ++i) {
      const int64_t row = hl * s.w + i;
      const float inv = row_inv[bg * s.rows + row];
      if (inv == 0.0f || !real) continue;  // a padding query or a padding / out-of-range key: 0
      const float x = logit(query_row(q, s, b, g, row), tile + lane * s.stride, s);
      acc += expf(x - row_max[bg * s.rows + row]) * inv;
    }
    if (inside) sums[(bg * s.ratio + hl) * s.m + j] = acc;
  }
}

__global__ void pool_heads(const float* __restrict__ sums, const bool* __restrict__ mask, Dims s, int64_t kernel,
                           bool avg, float* __restrict__ out) {
  const int64_t total = s.batch * s.groups * s.m;
  for (int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(blockDim.x) * gridDim.x) {
    const int64_t bg = idx / s.m, j = idx % s.m, b = bg / s.groups;
    if (!mask[b * s.n + j]) {
      out[idx] = -INFINITY;
      continue;
    }
    out[idx] = pooled_group_score(sums + bg * s.ratio * s.m, s.ratio, s.m, j, kernel, avg);
  }
}

int grid_for(int64_t items, int threads) {
  const int64_t blocks = (items + threads - 1) / threads;
  return static_cast<int>(std::min<int64_t>(std::max<int64_t>(blocks, 1), 65535));
}

}  // namespace

at::Tensor window_scores_cuda(const at::Tensor& q_window, const at::Tensor& keys_in, const at::Tensor& key_mask,
                              int64_t kernel, c10::string_view pooling) {
  check_window_scores(q_window, keys_in, key_mask, kernel, pooling);
  TORCH_CHECK(q_window.is_cuda(), "asl::window_scores: CUDA kernel got q_window on ", q_window.device());
  const c10::cuda::CUDAGuard guard(q_window.device());
  Dims s{};
  s.batch = q_window.size(0);
  s.heads = q_window.size(1);
  s.groups = keys_in.size(1);
  s.ratio = s.heads / s.groups;
  s.w = q_window.size(2);
  s.n = keys_in.size(2);
  s.m = s.n - s.w;
  s.d = q_window.size(3);
  s.rows = s.ratio * s.w;
  s.stride = s.d % 2 == 0 ? s.d + 1 : s.d;
  s.scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(s.d)));
  const size_t smem = sizeof(float) * kTile * s.stride;
  TORCH_CHECK(smem <= 48 * 1024, "asl::window_scores: the CUDA kernel supports head dim d <= 383, got ", s.d);
  TORCH_CHECK(s.batch <= 65535 && s.groups <= 65535, "asl::window_scores: the CUDA kernel supports B, G <= 65535");

  // Inputs of any strides: non-contiguous ones are copied (keys are not when already contiguous).
  const at::Tensor q = q_window.to(at::kFloat).contiguous();
  const at::Tensor keys = keys_in.contiguous();
  const at::Tensor mask = key_mask.contiguous();
  const auto fopts = q.options();
  at::Tensor out = at::empty({s.batch, s.groups, s.m}, fopts);
  if (s.batch == 0) return out;

  const auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t tiles = (s.n + kTile - 1) / kTile, prefix_tiles = (s.m + kTile - 1) / kTile;
  TORCH_CHECK(tiles <= std::numeric_limits<int32_t>::max(), "asl::window_scores: too many keys: ", s.n);
  at::Tensor tile_max = at::empty({s.batch, s.groups, tiles, s.rows}, fopts);
  at::Tensor tile_sum = at::empty({s.batch, s.groups, tiles, s.rows}, fopts);
  at::Tensor row_max = at::empty({s.batch, s.groups, s.rows}, fopts);
  at::Tensor row_inv = at::empty({s.batch, s.groups, s.rows}, fopts);
  at::Tensor sums = at::empty({s.batch, s.groups, s.ratio, s.m}, fopts);
  const float* q_ptr = q.const_data_ptr<float>();
  const bool* mask_ptr = mask.const_data_ptr<bool>();
  const int column_threads = 32 * static_cast<int>(std::min<int64_t>(s.ratio, kWarpsPerBlock));

  ASL_DISPATCH_SCORE_TYPES(keys.scalar_type(), "asl::window_scores", [&] {
    const scalar_t* k_ptr = keys.const_data_ptr<scalar_t>();
    chunk_stats<scalar_t><<<dim3(tiles, s.groups, s.batch), 32 * kWarpsPerBlock, smem, stream>>>(
        q_ptr, k_ptr, mask_ptr, s, tile_max.data_ptr<float>(), tile_sum.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    merge_stats<<<grid_for(s.batch * s.groups * s.rows, 256), 256, 0, stream>>>(
        tile_max.const_data_ptr<float>(), tile_sum.const_data_ptr<float>(), s, tiles, row_max.data_ptr<float>(),
        row_inv.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    column_sums<scalar_t><<<dim3(prefix_tiles, s.groups, s.batch), column_threads, smem, stream>>>(
        q_ptr, k_ptr, mask_ptr, s, row_max.const_data_ptr<float>(), row_inv.const_data_ptr<float>(),
        sums.data_ptr<float>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  pool_heads<<<grid_for(s.batch * s.groups * s.m, 256), 256, 0, stream>>>(sums.const_data_ptr<float>(), mask_ptr, s,
                                                                         kernel, pooling == "avg",
                                                                         out.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace asl
