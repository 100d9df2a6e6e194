// The asl op library: schemas and CPU kernels. CUDA kernels register in cuda/register.cu.
//
// Importing the Python module asl._C loads this shared object, whose static initialisers
// (TORCH_LIBRARY*) register torch.ops.asl.*; the module itself is empty.
#include <Python.h>
#include <torch/library.h>

#include "ops.h"

extern "C" {
// An empty module named _C, so that `import asl._C` loads this library (the pattern of
// PyTorch's extension-cpp example; it keeps the extension free of pybind11).
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(asl, m) {
  m.def("token_ranks(Tensor scores) -> Tensor");
  m.def("rank_variance(Tensor ranks, int k) -> Tensor");
  m.def("window_scores(Tensor q_window, Tensor keys, Tensor key_mask, int kernel, str pooling) -> Tensor");
}

TORCH_LIBRARY_IMPL(asl, CPU, m) {
  m.impl("token_ranks", &asl::token_ranks_cpu);
  m.impl("rank_variance", &asl::rank_variance_cpu);
  m.impl("window_scores", &asl::window_scores_cpu);
}

// None of the ops is differentiable (they rank tokens): autograd falls through to the kernels,
// so inputs that require grad are read as constants and the outputs carry no autograd history.
TORCH_LIBRARY_IMPL(asl, Autograd, m) {
  m.impl("token_ranks", torch::CppFunction::makeFallthrough());
  m.impl("rank_variance", torch::CppFunction::makeFallthrough());
  m.impl("window_scores", torch::CppFunction::makeFallthrough());
}
