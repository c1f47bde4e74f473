// C++ CPU kernels for regionc::rms_norm and regionc::fused_add_rms_norm.
//
// Same numerics as the Triton kernel and the torch reference:
//   rstd = 1/sqrt(mean(x.float()^2) + eps);  out = (x.float() * rstd * weight.float()).to(x.dtype)
//   fused_add: s = (x + residual) rounded to x.dtype; out = rms_norm(s); returns (out, s)
// Rows are processed in parallel (at::parallel_for / OpenMP), fp32 accumulation; inner loops are
// plain float loops the compiler vectorises. Inputs are made contiguous; outputs are contiguous.
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "common.h"

namespace regionc {
namespace {

template <typename scalar_t>
void rms_norm_rows(const scalar_t* x, const scalar_t* r, const float* w, scalar_t* y, scalar_t* res_out,
                   int64_t M, int64_t N, double eps) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(N, 1));
  at::parallel_for(0, M, grain, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(N);
    float* b = buf.data();
    for (int64_t row = begin; row < end; ++row) {
      const scalar_t* xr = x + row * N;
      if (r != nullptr) {
        const scalar_t* rr = r + row * N;
        scalar_t* so = res_out + row * N;
        for (int64_t j = 0; j < N; ++j) {
          scalar_t s = static_cast<scalar_t>(static_cast<float>(xr[j]) + static_cast<float>(rr[j]));
          so[j] = s;
          b[j] = static_cast<float>(s);
        }
      } else {
        for (int64_t j = 0; j < N; ++j) b[j] = static_cast<float>(xr[j]);
      }
      float ss = 0.f;
      for (int64_t j = 0; j < N; ++j) ss += b[j] * b[j];
      const float rstd = 1.f / std::sqrt(ss / static_cast<float>(N) + static_cast<float>(eps));
      scalar_t* yr = y + row * N;
      for (int64_t j = 0; j < N; ++j) yr[j] = static_cast<scalar_t>(b[j] * rstd * w[j]);
    }
  });
}

void check_args(const char* op, const at::Tensor& x, const at::Tensor& weight, const at::Tensor* residual) {
  check_float(x, "x", op);
  check_float(weight, "weight", op);
  check_cpu(x, "x", op);
  check_cpu(weight, "weight", op);
  TORCH_CHECK_VALUE(x.dim() >= 1, "regionc.", op, ": x must have at least 1 dim, got a scalar");
  TORCH_CHECK_VALUE(weight.dim() == 1, "regionc.", op, ": weight must be 1-D [hidden], got shape ", weight.sizes());
  TORCH_CHECK_VALUE(weight.size(0) == x.size(-1), "regionc.", op, ": weight has ", weight.size(0),
                    " elements but x's last (hidden) dim is ", x.size(-1));
  if (residual != nullptr) {
    TORCH_CHECK_TYPE(residual->scalar_type() == x.scalar_type(), "regionc.", op, ": residual dtype ",
                     residual->scalar_type(), " must equal x dtype ", x.scalar_type());
    check_cpu(*residual, "residual", op);
    TORCH_CHECK_VALUE(residual->sizes() == x.sizes(), "regionc.", op, ": residual shape ", residual->sizes(),
                      " != x shape ", x.sizes());
  }
}

std::tuple<at::Tensor, at::Tensor> run(const char* op, const at::Tensor& x_in, const at::Tensor* res_in,
                                       const at::Tensor& weight, double eps) {
  check_args(op, x_in, weight, res_in);
  at::Tensor x = x_in.contiguous();
  at::Tensor w = as_float_contig(weight);
  const int64_t N = x.size(-1);
  const int64_t M = N == 0 ? 0 : x.numel() / N;
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor res_out, r;
  if (res_in != nullptr) {
    r = res_in->contiguous();
    res_out = at::empty(x.sizes(), x.options());
  }
  if (M > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, x.scalar_type(), "regionc_rms_norm", [&] {
      rms_norm_rows<scalar_t>(x.const_data_ptr<scalar_t>(), r.defined() ? r.const_data_ptr<scalar_t>() : nullptr,
                              w.const_data_ptr<float>(), y.mutable_data_ptr<scalar_t>(),
                              res_out.defined() ? res_out.mutable_data_ptr<scalar_t>() : nullptr, M, N, eps);
    });
  }
  return {y, res_out};
}

at::Tensor rms_norm_cpu(const at::Tensor& x, const at::Tensor& weight, double eps) {
  return std::get<0>(run("rms_norm", x, nullptr, weight, eps));
}

std::tuple<at::Tensor, at::Tensor> fused_add_rms_norm_cpu(const at::Tensor& x, const at::Tensor& residual,
                                                          const at::Tensor& weight, double eps) {
  return run("fused_add_rms_norm", x, &residual, weight, eps);
}

}  // namespace

TORCH_LIBRARY_IMPL(regionc, CPU, m) {
  m.impl("rms_norm", &rms_norm_cpu);
  m.impl("fused_add_rms_norm", &fused_add_rms_norm_cpu);
}

}  // namespace regionc
