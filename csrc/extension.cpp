// The iteach_fast torch.library namespace and the Python module object of iteach_fast._C.
//
// Every C++/CUDA op of the package is declared in this namespace (TORCH_LIBRARY below, or
// TORCH_LIBRARY_FRAGMENT in the op's own file) and implemented per dispatch key with
// TORCH_LIBRARY_IMPL. Python reaches them as torch.ops.iteach_fast.<name>.
#include <Python.h>
#include <torch/library.h>

#include <string>

extern "C" {
// `import iteach_fast._C` only needs a module object: the ops register themselves through
// the static initialisers of TORCH_LIBRARY when the shared library is loaded.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

namespace iteach_fast {

// Whether this build of the extension contains the CUDA kernels.
bool has_cuda() {
#ifdef ITEACH_FAST_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// The package's version, from iteach_fast/__init__.py through setup.py (an unquoted macro).
#define ITEACH_FAST_STR2(x) #x
#define ITEACH_FAST_STR(x) ITEACH_FAST_STR2(x)
std::string version() { return ITEACH_FAST_STR(ITEACH_FAST_VERSION); }

}  // namespace iteach_fast

TORCH_LIBRARY(iteach_fast, m) {
  m.def("has_cuda() -> bool", &iteach_fast::has_cuda);
  m.def("version() -> str", &iteach_fast::version);
  // K2, the router-weighted mixture of the four token mixers (routed_mixture.cpp, cuda/routed_mixture.cu).
  // lengths: int64 (B,) on the inputs' device; pool_size odd and >= 1; causal: pools over
  // [i - pool_size + 1, i] instead of [i - pool_size / 2, i + pool_size / 2].
  m.def("routed_mixture(Tensor logits, Tensor x, Tensor y_attn, Tensor y_mlp, Tensor lengths, int pool_size, "
        "bool causal) -> Tensor");
  // One kernel for every gradient: (d_logits, d_x, d_y_attn, d_y_mlp).
  m.def("routed_mixture_backward(Tensor grad, Tensor logits, Tensor x, Tensor y_attn, Tensor y_mlp, "
        "Tensor lengths, int pool_size, bool causal) -> (Tensor, Tensor, Tensor, Tensor)");
}
