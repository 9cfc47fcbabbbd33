// The math of every torchext op, written once and compiled for both the CPU and the CUDA kernels
// (as torchvision's csrc/ops do). An op is a struct of static functions, templated on the type T
// it computes in (the op-math type: float for the 16-bit types; or the stored type for the ops
// that declare kOnStoredType):
//
//   kCoefs                   its coefficients' names, in the operator's argument order
//   forward(x, k)            -> y, with k[i] the value of coefficient i at x's element
//   backward(g, v, k, t)     -> dx, and t[i] = this element's term of coefficient i's gradient
//                               (the loops sum the terms); v is x, or the result (kSavesResult)
//
// An op with coefficients has its backward also run on a cache line of elements at once (the CPU
// loops' Strip, cpu/loops.h: a vector of T): there it may use only binary +, -, * and T(constant)
// (Strip has no more; add what a new op needs there).
//
// Each op has its row in ops.h (the table every registration follows) and, for second order,
// a formula in autograd.cpp.
#pragma once

#include <c10/macros/Macros.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <array>
#include <cstdint>
#include <type_traits>

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

// ---- the ops --------------------------------------------------------------------------------
// Optional members (defaults in ops.h): kSavesResult (the backward reads the result, not x),
// kOnStoredType (exact on the stored type: no op-math round trip), kIntegral (integer x too),
// kInplace (an in-place operator <name>_ too), kBackwardReads (a bit per coefficient whose value
// the backward reads; autograd saves only those).

struct Cubic {
  static constexpr std::array<const char*, 4> kCoefs = {"a", "b", "c", "d"};
  static constexpr unsigned kBackwardReads = 0b1110;  // not a

  template <typename T>
  C10_HOST_DEVICE static T forward(T x, const T* k) {
    return cubic(x, k[0], k[1], k[2], k[3]);
  }
  // dx = g·(b + 2c·x + 3d·x²); da, db, dc, dd = Σg, Σg·x, Σg·x², Σg·x³
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x, const T* k, T* t) {
    t[0] = g;
    t[1] = g * x;
    t[2] = t[1] * x;
    t[3] = t[2] * x;
    return g * cubic_dx(x, k[1], k[2], k[3]);
  }
};

struct LegendreP3 {
  static constexpr std::array<const char*, 0> kCoefs = {};

  template <typename T>
  C10_HOST_DEVICE static T forward(T x, const T*) {
    return p3(x);
  }
  // dx = g·1.5(5x² − 1)
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x, const T*, T*) {
    return g * p3_dx(x);
  }
};

// a + b·P3(u), u = c + d·x.
struct AffineLegendreP3 {
  static constexpr std::array<const char*, 4> kCoefs = {"a", "b", "c", "d"};
  static constexpr unsigned kBackwardReads = 0b1110;  // not a (c is in u)

  template <typename T>
  C10_HOST_DEVICE static T forward(T x, const T* k) {
    return k[0] + k[1] * p3(k[2] + k[3] * x);
  }
  // dx = g·b·P3'(u)·d; da = Σg, db = Σg·P3(u), dc = Σg·b·P3'(u), dd = Σg·b·P3'(u)·x
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T x, const T* k, T* t) {
    const T u = k[2] + k[3] * x;
    const T gbp = g * k[1] * p3_dx(u);
    t[0] = g;
    t[1] = g * p3(u);
    t[2] = gbp;
    t[3] = gbp * x;
    return gbp * k[3];
  }
};

// ReLU, bit for bit as torch.relu: x itself unless x < 0, which keeps NaN and −0.0 as they are.
struct ReLU {
  static constexpr std::array<const char*, 0> kCoefs = {};
  static constexpr bool kSavesResult = true;
  // Exact on the stored type (it only compares and selects): no conversion round trip, so NaN
  // payloads survive; integer tensors work as in torch.relu.
  static constexpr bool kOnStoredType = true;
  static constexpr bool kIntegral = true;
  static constexpr bool kInplace = true;

  template <typename T>
  C10_HOST_DEVICE static T forward(T x, const T*) {
    if constexpr (std::is_unsigned_v<T>) {
      return x;
    } else {
      return x < T(0) ? T(0) : x;
    }
  }
  // From the saved output, as torch's threshold_backward: 0 where y <= 0 (x == ±0 included),
  // g where y > 0 or y is NaN.
  template <typename T>
  C10_HOST_DEVICE static T backward(T g, T y, const T*, T*) {
    return y <= T(0) ? T(0) : g;
  }
};

// 16-bit ReLU on the bits: c10's comparisons convert through float (in software for half on a
// CPU without F16C, and they keep the compiler from vectorizing), while on the bits the loops
// run on the stored type and return x's own bits, NaN payloads included, as torch.relu does.
// x < 0 when its sign is set and it is neither ±0 nor NaN (magnitude above the infinity's bits).
C10_HOST_DEVICE inline bool negative_bits(uint16_t bits, uint16_t inf_bits) {
  const uint16_t magnitude = bits & 0x7FFF;
  return (bits & 0x8000) != 0 && magnitude != 0 && magnitude <= inf_bits;
}

#define TORCHEXT_RELU_BITS(T, INF)                                                    \
  template <>                                                                         \
  C10_HOST_DEVICE inline T ReLU::forward<T>(T x, const T*) {                          \
    return negative_bits(x.x, INF) ? T(0, T::from_bits()) : x;                        \
  }                                                                                   \
  template <>                                                                         \
  C10_HOST_DEVICE inline T ReLU::backward<T>(T g, T y, const T*, T*) {                \
    return (y.x & 0x7FFF) == 0 || negative_bits(y.x, INF) ? T(0, T::from_bits()) : g; \
  }
TORCHEXT_RELU_BITS(c10::Half, 0x7C00)
TORCHEXT_RELU_BITS(c10::BFloat16, 0x7F80)
#undef TORCHEXT_RELU_BITS

// ---- coefficient values as the kernels read them ----------------------------------------------
// A coefficient tensor may have any floating dtype; its dtype travels as a small code.
enum class Dtype : int8_t { Half, BFloat16, Float, Double };

// A value of stored type S (c10::Half, c10::BFloat16, float, double) as T, and back: the 16-bit
// types through float.
template <typename T, typename S>
C10_HOST_DEVICE inline T from_stored(S v) {
  if constexpr (sizeof(S) == 2) {
    return static_cast<T>(static_cast<float>(v));
  } else {
    return static_cast<T>(v);
  }
}

template <typename S, typename T>
C10_HOST_DEVICE inline S to_stored(T v) {
  if constexpr (sizeof(S) == 2) {
    return S(static_cast<float>(v));
  } else {
    return static_cast<S>(v);
  }
}

template <typename T>
C10_HOST_DEVICE inline T load(const void* p, Dtype t) {
  switch (t) {
    case Dtype::Half: return from_stored<T>(*static_cast<const c10::Half*>(p));
    case Dtype::BFloat16: return from_stored<T>(*static_cast<const c10::BFloat16*>(p));
    case Dtype::Float: return from_stored<T>(*static_cast<const float*>(p));
    default: return from_stored<T>(*static_cast<const double*>(p));
  }
}

template <typename T>
C10_HOST_DEVICE inline void store(void* p, Dtype t, T v) {
  switch (t) {
    case Dtype::Half: *static_cast<c10::Half*>(p) = to_stored<c10::Half>(v); break;
    case Dtype::BFloat16: *static_cast<c10::BFloat16*>(p) = to_stored<c10::BFloat16>(v); break;
    case Dtype::Float: *static_cast<float*>(p) = to_stored<float>(v); break;
    default: *static_cast<double*>(p) = to_stored<double>(v);
  }
}

C10_HOST_DEVICE inline int64_t dtype_size(Dtype t) {
  return t == Dtype::Float ? 4 : t == Dtype::Double ? 8 : 2;
}

// ---- compensated sums -------------------------------------------------------------------------
// A running sum and the rounding error it dropped, taken exactly by Knuth's TwoSum: the
// coefficient gradients' sums, on the CPU (in its lanes and tiles) and on CUDA (in each thread's
// chain and up each block's tree), so that they are at least as accurate as torch.sum of the same
// terms. Only + and -: no FMA contraction can change it (nvcc contracts by default). Branch-free,
// so the CPU's loops that keep many such sums vectorize (setup.py's -fno-trapping-math lets the
// compiler turn the select below into a blend). A sum that has become infinite or NaN keeps no
// compensation (it would be NaN), so an infinity stays an infinity.
template <typename T>
C10_HOST_DEVICE inline void kahan_add(T& sum, T& comp, T v) {
  const T t = sum + v;
  const T vv = t - sum;
  const T lost = (sum - (t - vv)) + (v - vv);
  comp += t - t == 0 ? lost : T(0);
  sum = t;
}

}  // namespace math
}  // namespace torchext
