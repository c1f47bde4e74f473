// Shared helpers for regionc's C++ CPU kernels.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

namespace regionc {

inline void check_float(const at::Tensor& t, const char* name, const char* op) {
  auto st = t.scalar_type();
  TORCH_CHECK_TYPE(st == at::kFloat || st == at::kHalf || st == at::kBFloat16, "regionc.", op, ": ", name,
                   " must be float16, bfloat16 or float32, got ", st);
}

inline void check_cpu(const at::Tensor& t, const char* name, const char* op) {
  TORCH_CHECK_VALUE(t.device().is_cpu(), "regionc.", op, ": ", name, " must be on the CPU here, got ", t.device());
}

// fp32 view of a small table (weights, cos/sin): converted once per call.
inline at::Tensor as_float_contig(const at::Tensor& t) { return t.to(at::kFloat).contiguous(); }

}  // namespace regionc
