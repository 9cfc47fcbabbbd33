// The math of every torchext op, written once and compiled for both the CPU and the CUDA kernels
// (as torchvision's csrc/ops do). Each op is a small functor:
//   forward(x)               -> y
//   backward(g, x, t[4])     -> dx, and t = this element's terms of the four coefficient gradients
// A functor instantiated for a 16-bit type converts to the op-math type (float) inside (the CUDA
// kernels do that); the CPU loops instead instantiate it for float and convert whole blocks, which
// vectorizes (cpu/loops_impl.h).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

namespace torchext {
namespace math {

// ---- the formulas ---------------------------------------------------------------------------

// cubic: a + b·x + c·x² + d·x³, in Horner form.
template <typename T>
C10_HOST_DEVICE inline T cubic(T x, T a, T b, T c, T d) {
  return a + x * (b + x * (c + x * d));
}

// d/dx cubic = b + 2c·x + 3d·x²
template <typename T>
C10_HOST_DEVICE inline T cubic_dx(T x, T b, T c, T d) {
  return b + x * (T(2) * c + x * (T(3) * d));
}

// Legendre P3(x) = ½(5x³ − 3x)
template <typename T>
C10_HOST_DEVICE inline T p3(T x) {
  return T(0.5) * x * (T(5) * x * x - T(3));
}

// d/dx P3(x) = 1.5(5x² − 1)
template <typename T>
C10_HOST_DEVICE inline T p3_dx(T x) {
  return T(1.5) * (T(5) * x * x - T(1));
}

// ---- coefficients ---------------------------------------------------------------------------
// A coefficient is a one-element tensor of any floating dtype. Kernels read it where it lives (on
// the GPU inside the kernel: no host-device sync, CUDA-graph safe) and write its gradient in its
// own dtype. The dtype travels as a small code.
enum class Dtype : int8_t { Half, BFloat16, Float, Double };

struct Coefs {
  const void* ptr[4];
  Dtype dtype[4];
};

struct CoefGrads {
  void* ptr[4];
  Dtype dtype[4];
};

template <typename T>
C10_HOST_DEVICE inline T load(const void* p, Dtype t) {
  switch (t) {
    case Dtype::Half: return static_cast<T>(static_cast<float>(*static_cast<const c10::Half*>(p)));
    case Dtype::BFloat16:
      return static_cast<T>(static_cast<float>(*static_cast<const c10::BFloat16*>(p)));
    case Dtype::Float: return static_cast<T>(*static_cast<const float*>(p));
    default: return static_cast<T>(*static_cast<const double*>(p));
  }
}

template <typename T>
C10_HOST_DEVICE inline void store(void* p, Dtype t, T v) {
  switch (t) {
    case Dtype::Half: *static_cast<c10::Half*>(p) = c10::Half(static_cast<float>(v)); break;
    case Dtype::BFloat16:
      *static_cast<c10::BFloat16*>(p) = c10::BFloat16(static_cast<float>(v));
      break;
    case Dtype::Float: *static_cast<float*>(p) = static_cast<float>(v); break;
    default: *static_cast<double*>(p) = static_cast<double>(v);
  }
}

// ---- the ops as functors --------------------------------------------------------------------
// Functors with coefficients derive from WithCoefs: built on the host from Coefs, they call load()
// once where they run (once per CPU call, once per CUDA thread) before the element loop.

// The four coefficients a, b, c, d of an op, in op-math type once load() has run.
template <typename scalar_t>
struct WithCoefs {
  using acc_t = at::opmath_type<scalar_t>;
  Coefs coefs;
  acc_t a, b, c, d;

  C10_HOST_DEVICE void load() {
    a = math::load<acc_t>(coefs.ptr[0], coefs.dtype[0]);
    b = math::load<acc_t>(coefs.ptr[1], coefs.dtype[1]);
    c = math::load<acc_t>(coefs.ptr[2], coefs.dtype[2]);
    d = math::load<acc_t>(coefs.ptr[3], coefs.dtype[3]);
  }
};

template <typename scalar_t>
struct CubicOp : WithCoefs<scalar_t> {
  using typename WithCoefs<scalar_t>::acc_t;
  using WithCoefs<scalar_t>::a, WithCoefs<scalar_t>::b, WithCoefs<scalar_t>::c,
      WithCoefs<scalar_t>::d;

  C10_HOST_DEVICE scalar_t forward(scalar_t x) const {
    return static_cast<scalar_t>(cubic(acc_t(x), a, b, c, d));
  }
  // da, db, dc, dd = Σg, Σg·x, Σg·x², Σg·x³
  C10_HOST_DEVICE scalar_t backward(scalar_t g_, scalar_t x_, acc_t t[4]) const {
    const acc_t g = g_, x = x_;
    t[0] = g;
    t[1] = g * x;
    t[2] = t[1] * x;
    t[3] = t[2] * x;
    return static_cast<scalar_t>(g * cubic_dx(x, b, c, d));
  }
};

template <typename scalar_t>
struct LegendreP3Op {
  using acc_t = at::opmath_type<scalar_t>;
  C10_HOST_DEVICE void load() {}
  C10_HOST_DEVICE scalar_t forward(scalar_t x) const { return static_cast<scalar_t>(p3(acc_t(x))); }
  C10_HOST_DEVICE scalar_t backward(scalar_t g, scalar_t x) const {
    return static_cast<scalar_t>(acc_t(g) * p3_dx(acc_t(x)));
  }
};

// a + b·P3(u), u = c + d·x.
template <typename scalar_t>
struct AffineLegendreP3Op : WithCoefs<scalar_t> {
  using typename WithCoefs<scalar_t>::acc_t;
  using WithCoefs<scalar_t>::a, WithCoefs<scalar_t>::b, WithCoefs<scalar_t>::c,
      WithCoefs<scalar_t>::d;

  C10_HOST_DEVICE scalar_t forward(scalar_t x) const {
    return static_cast<scalar_t>(a + b * p3(c + d * acc_t(x)));
  }
  // dx = g·b·P3'(u)·d; da = Σg, db = Σg·P3(u), dc = Σg·b·P3'(u), dd = Σg·b·P3'(u)·x
  C10_HOST_DEVICE scalar_t backward(scalar_t g_, scalar_t x_, acc_t t[4]) const {
    const acc_t g = g_, x = x_;
    const acc_t u = c + d * x;
    const acc_t gbp = g * b * p3_dx(u);
    t[0] = g;
    t[1] = g * p3(u);
    t[2] = gbp;
    t[3] = gbp * x;
    return static_cast<scalar_t>(gbp * d);
  }
};

// ReLU, bit for bit as torch.relu: works on the stored type (no round trip through op-math, so
// NaN payloads survive) and returns x itself unless x < 0, which keeps NaN and −0.0 as they are.
template <typename scalar_t>
struct ReLUOp {
  // Exact on the stored type (it only compares and selects): the CPU loops run it there rather
  // than in op-math, which would add a conversion round trip (cpu/loops.h).
  static constexpr bool kOnStoredType = true;
  C10_HOST_DEVICE void load() {}
  C10_HOST_DEVICE scalar_t forward(scalar_t x) const { return x < scalar_t(0) ? scalar_t(0) : x; }
  // From the saved output, as torch's threshold_backward: 0 where y <= 0 (x == ±0 included),
  // g where y > 0 or y is NaN.
  C10_HOST_DEVICE scalar_t backward(scalar_t g, scalar_t y) const {
    return y <= scalar_t(0) ? scalar_t(0) : g;
  }
};

}  // namespace math
}  // namespace torchext
