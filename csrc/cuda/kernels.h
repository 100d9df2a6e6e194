// CUDA kernels of the asl ops (registered in register.cu; schemas in ../register.cpp).
// Same semantics and checks as the CPU kernels of ../ops.h.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

namespace asl {

at::Tensor token_ranks_cuda(const at::Tensor& scores);
at::Tensor rank_variance_cuda(const at::Tensor& ranks, int64_t k);
at::Tensor window_scores_cuda(const at::Tensor& q_window, const at::Tensor& keys, const at::Tensor& key_mask,
                              int64_t kernel, c10::string_view pooling);

}  // namespace asl
