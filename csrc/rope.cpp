// C++ CPU kernel for regionc::rope (rotate_half and interleaved styles, bhsd and bshd layouts).
//
// Same numerics as the Triton kernel and the torch reference: computed in fp32 with the full
// cos/sin tables ([B or 1, S, D] or [S, D]), outputs in q's dtype, contiguous in the given layout.
// q/k are read through their strides (any strides on B/S/H; D is made unit-stride).
// Parallel over tokens (b, s); each token rotates all q heads then all k heads.
#include <torch/library.h>

#include <string_view>

#include "common.h"

namespace regionc {
namespace {

struct Strides {
  int64_t b, s, h;
};

Strides bsh(const at::Tensor& t, bool bhsd) {
  return bhsd ? Strides{t.stride(0), t.stride(2), t.stride(1)} : Strides{t.stride(0), t.stride(1), t.stride(2)};
}

template <typename scalar_t>
inline void rotate(const scalar_t* in, scalar_t* out, const float* c, const float* s, int64_t D, bool interleaved) {
  const int64_t half = D / 2;
  if (interleaved) {
    for (int64_t i = 0; i < half; ++i) {
      const float xe = static_cast<float>(in[2 * i]);
      const float xo = static_cast<float>(in[2 * i + 1]);
      out[2 * i] = static_cast<scalar_t>(xe * c[2 * i] - xo * s[2 * i]);
      out[2 * i + 1] = static_cast<scalar_t>(xo * c[2 * i + 1] + xe * s[2 * i + 1]);
    }
  } else {
    for (int64_t j = 0; j < half; ++j) {
      const float x1 = static_cast<float>(in[j]);
      const float x2 = static_cast<float>(in[j + half]);
      out[j] = static_cast<scalar_t>(x1 * c[j] - x2 * s[j]);
      out[j + half] = static_cast<scalar_t>(x2 * c[j + half] + x1 * s[j + half]);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> rope_cpu(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& cos_in,
                                            const at::Tensor& sin_in, c10::string_view style_sv,
                                            c10::string_view layout_sv) {
  const char* op = "rope";
  const std::string style(style_sv.data(), style_sv.size());
  const std::string layout(layout_sv.data(), layout_sv.size());
  check_float(q_in, "q", op);
  check_float(k_in, "k", op);
  check_float(cos_in, "cos", op);
  check_float(sin_in, "sin", op);
  TORCH_CHECK_VALUE(style == "rotate_half" || style == "interleaved",
                    "regionc.rope: style must be one of ('rotate_half', 'interleaved'), got '", style, "'");
  TORCH_CHECK_VALUE(layout == "bhsd" || layout == "bshd",
                    "regionc.rope: layout must be one of ('bhsd', 'bshd'), got '", layout, "'");
  TORCH_CHECK_TYPE(k_in.scalar_type() == q_in.scalar_type(), "regionc.rope: k dtype ", k_in.scalar_type(),
                   " must equal q dtype ", q_in.scalar_type());
  for (auto* t : {&q_in, &k_in, &cos_in, &sin_in}) check_cpu(*t, t == &q_in ? "q" : t == &k_in ? "k" : "cos/sin", op);
  TORCH_CHECK_VALUE(q_in.dim() == 4, "regionc.rope: q must be 4-D (", layout, "), got shape ", q_in.sizes());
  TORCH_CHECK_VALUE(k_in.dim() == 4, "regionc.rope: k must be 4-D (", layout, "), got shape ", k_in.sizes());
  const bool bhsd = layout == "bhsd";
  const bool interleaved = style == "interleaved";
  const int64_t B = q_in.size(0), S = q_in.size(bhsd ? 2 : 1), HQ = q_in.size(bhsd ? 1 : 2), D = q_in.size(3);
  const int64_t HK = k_in.size(bhsd ? 1 : 2);
  TORCH_CHECK_VALUE(k_in.size(0) == B, "regionc.rope: k batch ", k_in.size(0), " != q batch ", B, " (layout ", layout, ")");
  TORCH_CHECK_VALUE(k_in.size(bhsd ? 2 : 1) == S, "regionc.rope: k seq len ", k_in.size(bhsd ? 2 : 1), " != q seq len ",
                    S, " (layout ", layout, ")");
  TORCH_CHECK_VALUE(k_in.size(3) == D, "regionc.rope: k head_dim ", k_in.size(3), " != q head_dim ", D);
  TORCH_CHECK_VALUE(D % 2 == 0, "regionc.rope: head_dim must be even, got ", D);
  TORCH_CHECK_VALUE(cos_in.dim() == 2 || cos_in.dim() == 3,
                    "regionc.rope: cos must be [B or 1, S, D] (or [S, D]), got shape ", cos_in.sizes());
  TORCH_CHECK_VALUE(sin_in.sizes() == cos_in.sizes(), "regionc.rope: sin shape ", sin_in.sizes(), " != cos shape ",
                    cos_in.sizes());
  TORCH_CHECK_VALUE(cos_in.size(-1) == D, "regionc.rope: cos/sin last dim ", cos_in.size(-1), " != head_dim ", D);
  TORCH_CHECK_VALUE(cos_in.size(-2) == S, "regionc.rope: cos/sin seq dim ", cos_in.size(-2), " != q seq len ", S);
  const int64_t Bc = cos_in.dim() == 3 ? cos_in.size(0) : 1;
  TORCH_CHECK_VALUE(Bc == 1 || Bc == B, "regionc.rope: cos/sin batch dim ", Bc, " must be 1 or q batch ", B);

  at::Tensor q = q_in.stride(3) == 1 ? q_in : q_in.contiguous();
  at::Tensor k = k_in.stride(3) == 1 ? k_in : k_in.contiguous();
  at::Tensor cos = as_float_contig(cos_in);
  at::Tensor sin = as_float_contig(sin_in);
  at::Tensor qo = at::empty(q.sizes(), q.options());
  at::Tensor ko = at::empty(k.sizes(), k.options());
  if (B * S == 0 || D == 0) return {qo, ko};
  const Strides sq = bsh(q, bhsd), sk = bsh(k, bhsd), sqo = bsh(qo, bhsd), sko = bsh(ko, bhsd);
  const int64_t cos_b = Bc == 1 ? 0 : S * D;
  const int64_t grain = std::max<int64_t>(1, 8192 / std::max<int64_t>((HQ + HK) * D, 1));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "regionc_rope", [&] {
    const scalar_t* qp = q.const_data_ptr<scalar_t>();
    const scalar_t* kp = k.const_data_ptr<scalar_t>();
    scalar_t* qop = qo.mutable_data_ptr<scalar_t>();
    scalar_t* kop = ko.mutable_data_ptr<scalar_t>();
    const float* cp = cos.const_data_ptr<float>();
    const float* sp = sin.const_data_ptr<float>();
    at::parallel_for(0, B * S, grain, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t b = t / S, s = t % S;
        const float* c = cp + b * cos_b + s * D;
        const float* sn = sp + b * cos_b + s * D;
        for (int64_t h = 0; h < HQ; ++h)
          rotate<scalar_t>(qp + b * sq.b + s * sq.s + h * sq.h, qop + b * sqo.b + s * sqo.s + h * sqo.h, c, sn, D,
                           interleaved);
        for (int64_t h = 0; h < HK; ++h)
          rotate<scalar_t>(kp + b * sk.b + s * sk.s + h * sk.h, kop + b * sko.b + s * sko.s + h * sko.h, c, sn, D,
                           interleaved);
      }
    });
  });
  return {qo, ko};
}

}  // namespace

TORCH_LIBRARY_IMPL(regionc, CPU, m) { m.impl("rope", &rope_cpu); }

}  // namespace regionc
