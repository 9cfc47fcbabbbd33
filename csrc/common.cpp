#include "common.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/util/Exception.h>

namespace torchext {
namespace {

bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

math::Dtype code_of(at::ScalarType t) {
  switch (t) {
    case at::kHalf: return math::Dtype::Half;
    case at::kBFloat16: return math::Dtype::BFloat16;
    case at::kFloat: return math::Dtype::Float;
    default: return math::Dtype::Double;
  }
}

// x: a defined, strided floating tensor (float16, bfloat16, float32, float64).
void check_input(const char* op, const char* name, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.defined(), op, ": '", name, "' is undefined");
  TORCH_CHECK_TYPE(is_supported_float(x.scalar_type()), op, ": '", name,
                   "' must be a float16, bfloat16, float32 or float64 tensor, got ",
                   x.scalar_type());
  TORCH_CHECK(x.layout() == at::kStrided, op, ": '", name,
              "' must be a dense (strided) tensor, got ", x.layout());
}

// t has x's shape, dtype and device (a gradient).
void check_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& x) {
  check_input(op, name, t);
  TORCH_CHECK_VALUE(t.sizes() == x.sizes(), op, ": '", name, "' has shape ", t.sizes(),
                    " but x has shape ", x.sizes());
  TORCH_CHECK_TYPE(t.scalar_type() == x.scalar_type(), op, ": '", name, "' has dtype ",
                   t.scalar_type(), " but x has dtype ", x.scalar_type());
  TORCH_CHECK(t.device() == x.device(), op, ": '", name, "' is on ", t.device(), " but x is on ",
              x.device());
}

void check_coef(const char* op, const char* name, const at::Tensor& c, const at::Tensor& x) {
  TORCH_CHECK_VALUE(c.defined(), op, ": coefficient '", name, "' is undefined");
  TORCH_CHECK_TYPE(is_supported_float(c.scalar_type()), op, ": coefficient '", name,
                   "' must be a float16, bfloat16, float32 or float64 tensor, got ",
                   c.scalar_type());
  // At most one dimension: a (1, 1) coefficient would broadcast x up a dimension in the eager
  // expression, which an op that returns x's shape must not silently ignore.
  TORCH_CHECK_VALUE(c.numel() == 1 && c.dim() <= 1, op, ": coefficient '", name,
                    "' must be a number or a one-element tensor of shape () or (1,), got shape ",
                    c.sizes());
  TORCH_CHECK(c.device() == x.device(), op, ": coefficient '", name, "' is on ", c.device(),
              " but x is on ", x.device(), "; coefficients must be on x's device");
}

math::Coefs pack_coefs(const char* op, const at::Tensor& x, const at::Tensor& a,
                       const at::Tensor& b, const at::Tensor& c, const at::Tensor& d) {
  const at::Tensor* all[4] = {&a, &b, &c, &d};
  const char* names[4] = {"a", "b", "c", "d"};
  math::Coefs packed{};
  for (int i = 0; i < 4; ++i) {
    check_coef(op, names[i], *all[i], x);
    packed.ptr[i] = all[i]->const_data_ptr();
    packed.dtype[i] = code_of(all[i]->scalar_type());
  }
  return packed;
}

at::Tensor empty_dense(const at::Tensor& like) { return at::empty(like.sizes(), like.options()); }

}  // namespace

Forward prepare_forward(const char* op, const at::Tensor& x) {
  check_input(op, "x", x);
  Forward f{x.contiguous()};
  f.y = empty_dense(f.x);
  return f;
}

Forward prepare_forward(const char* op, const at::Tensor& x, const at::Tensor& a,
                        const at::Tensor& b, const at::Tensor& c, const at::Tensor& d) {
  Forward f = prepare_forward(op, x);
  f.coefs = pack_coefs(op, x, a, b, c, d);
  return f;
}

Backward prepare_backward(const char* op, const at::Tensor& grad, const at::Tensor& v,
                          const char* v_name) {
  check_input(op, v_name, v);
  check_like(op, "grad", grad, v);
  Backward bw{grad.contiguous(), v.contiguous()};
  bw.dx = empty_dense(bw.v);
  return bw;
}

Backward prepare_backward(const char* op, const at::Tensor& grad, const at::Tensor& x,
                          const at::Tensor& a, const at::Tensor& b, const at::Tensor& c,
                          const at::Tensor& d) {
  Backward bw = prepare_backward(op, grad, x, "x");
  bw.coefs = pack_coefs(op, x, a, b, c, d);
  const at::Tensor* coefs[4] = {&a, &b, &c, &d};
  for (int i = 0; i < 4; ++i) {
    bw.coef_grads[i] = at::empty_like(*coefs[i], at::MemoryFormat::Contiguous);
    bw.coef_out.ptr[i] = bw.coef_grads[i].mutable_data_ptr();
    bw.coef_out.dtype[i] = code_of(bw.coef_grads[i].scalar_type());
  }
  return bw;
}

}  // namespace torchext
