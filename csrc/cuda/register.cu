// CUDA kernels of the asl ops, registered for the CUDA dispatch key.
#include <torch/library.h>

#include "kernels.h"

TORCH_LIBRARY_IMPL(asl, CUDA, m) {
  m.impl("token_ranks", &asl::token_ranks_cuda);
  m.impl("rank_variance", &asl::rank_variance_cuda);
  m.impl("window_scores", &asl::window_scores_cuda);
}
