// CPU kernels of the asl ops (schemas in register.cpp, semantics in docs/algorithms.md 1-3).
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

namespace asl {

// scores [B, m] float32/float16/bfloat16 -> int64 [B, m], stable descending ranks (1 = best).
at::Tensor token_ranks_cpu(const at::Tensor& scores);

// ranks [T, B, m] int64 -> float64 [B], variance over the union of the per-layer top-k.
at::Tensor rank_variance_cpu(const at::Tensor& ranks, int64_t k);

// q_window [B, H, w, d], keys [B, G, n, d], key_mask [B, n] bool -> float32 [B, G, n - w].
at::Tensor window_scores_cpu(const at::Tensor& q_window, const at::Tensor& keys, const at::Tensor& key_mask,
                             int64_t kernel, c10::string_view pooling);

}  // namespace asl
