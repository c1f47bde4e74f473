// Python module ``regionc._C``: importing it registers the C++ CPU kernels
// (TORCH_LIBRARY_IMPL(regionc, CPU) in rms_norm.cpp and rope.cpp). The op schemas are defined in
// Python (regionc/ops/*.py, torch.library.custom_op); the dispatcher accepts the impls before or
// after the definitions.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "regionc C++ CPU kernels (rms_norm, fused_add_rms_norm, rope)";
  m.def("ops", []() { return std::vector<std::string>{"rms_norm", "fused_add_rms_norm", "rope"}; });
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
}
