// Input checks shared by the CPU and CUDA kernels of the asl ops.
//
// Each message names the op, the argument and what is allowed. Shape and dtype
// problems raise RuntimeError (TORCH_CHECK); bad integer or string parameters raise
// ValueError (TORCH_CHECK_VALUE). asl/ops.py mirrors these checks for the fake kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/Dispatch.h>
#include <c10/util/Exception.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <limits>

namespace asl {

inline bool is_score_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

inline void check_same_device(const char* op, const at::Tensor& a, const char* a_name,
                              const at::Tensor& b, const char* b_name) {
  TORCH_CHECK(a.device() == b.device(), "asl::", op, ": ", a_name, " and ", b_name,
              " must be on the same device, got ", a.device(), " and ", b.device());
}

inline void check_token_ranks(const at::Tensor& scores) {
  TORCH_CHECK(scores.dim() == 2, "asl::token_ranks: scores must be 2-D [B, m], got ", scores.dim(), "-D");
  TORCH_CHECK(is_score_dtype(scores.scalar_type()),
              "asl::token_ranks: scores must be float32, float16 or bfloat16, got ", scores.scalar_type());
  TORCH_CHECK(scores.size(1) < std::numeric_limits<int32_t>::max(),
              "asl::token_ranks: scores.size(1) must be < 2^31 - 1, got ", scores.size(1));
}

inline void check_rank_variance(const at::Tensor& ranks, int64_t k) {
  TORCH_CHECK(ranks.dim() == 3, "asl::rank_variance: ranks must be 3-D [T, B, m], got ", ranks.dim(), "-D");
  TORCH_CHECK(ranks.scalar_type() == at::kLong, "asl::rank_variance: ranks must be int64, got ",
              ranks.scalar_type());
  TORCH_CHECK(ranks.size(0) >= 1, "asl::rank_variance: ranks needs at least one layer (T >= 1), got T = ",
              ranks.size(0));
  TORCH_CHECK_VALUE(k >= 1 && k <= ranks.size(2), "asl::rank_variance: k must be in [1, m] = [1, ",
                    ranks.size(2), "], got ", k);
}

inline void check_window_scores(const at::Tensor& q, const at::Tensor& keys, const at::Tensor& mask,
                                int64_t kernel, c10::string_view pooling) {
  TORCH_CHECK(q.dim() == 4, "asl::window_scores: q_window must be 4-D [B, H, w, d], got ", q.dim(), "-D");
  TORCH_CHECK(keys.dim() == 4, "asl::window_scores: keys must be 4-D [B, G, n, d], got ", keys.dim(), "-D");
  TORCH_CHECK(mask.dim() == 2, "asl::window_scores: key_mask must be 2-D [B, n], got ", mask.dim(), "-D");
  TORCH_CHECK(is_score_dtype(q.scalar_type()),
              "asl::window_scores: q_window must be float32, float16 or bfloat16, got ", q.scalar_type());
  TORCH_CHECK(keys.scalar_type() == q.scalar_type(), "asl::window_scores: keys must have q_window's dtype ",
              q.scalar_type(), ", got ", keys.scalar_type());
  TORCH_CHECK(mask.scalar_type() == at::kBool, "asl::window_scores: key_mask must be bool, got ",
              mask.scalar_type());
  check_same_device("window_scores", q, "q_window", keys, "keys");
  check_same_device("window_scores", q, "q_window", mask, "key_mask");
  const int64_t b = q.size(0), h = q.size(1), w = q.size(2), d = q.size(3);
  const int64_t g = keys.size(1), n = keys.size(2);
  TORCH_CHECK(keys.size(0) == b, "asl::window_scores: keys batch ", keys.size(0), " != q_window batch ", b);
  TORCH_CHECK(keys.size(3) == d, "asl::window_scores: keys head dim ", keys.size(3), " != q_window head dim ", d);
  TORCH_CHECK(g >= 1 && h % g == 0, "asl::window_scores: query heads H = ", h,
              " must be a multiple of the KV heads G = ", g);
  TORCH_CHECK(mask.size(0) == b && mask.size(1) == n, "asl::window_scores: key_mask must be [B, n] = [", b, ", ",
              n, "], got ", mask.sizes());
  TORCH_CHECK(d >= 1, "asl::window_scores: head dim must be >= 1, got ", d);
  TORCH_CHECK_VALUE(w >= 1 && n > w, "asl::window_scores: need 1 <= w < n (window w = q_window.size(2) = ", w,
                    ", keys n = ", n, ")");
  TORCH_CHECK_VALUE(kernel >= 1 && kernel % 2 == 1, "asl::window_scores: kernel must be a positive odd integer, got ",
                    kernel);
  TORCH_CHECK_VALUE(pooling == "avg" || pooling == "max", "asl::window_scores: pooling must be \"avg\" or \"max\", got \"",
                    std::string(pooling), "\"");
}

}  // namespace asl

// AT_DISPATCH over the three score dtypes (float32, float16, bfloat16).
#define ASL_DISPATCH_SCORE_TYPES(TYPE, NAME, ...)                      \
  AT_DISPATCH_SWITCH(TYPE, NAME,                                       \
                     AT_DISPATCH_CASE(at::ScalarType::Float, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::ScalarType::Half, __VA_ARGS__)  \
                     AT_DISPATCH_CASE(at::ScalarType::BFloat16, __VA_ARGS__))
