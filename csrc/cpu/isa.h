// Which instruction set the CPU loops run with (cpu/loops.h compiles them for two).
#pragma once

#include <cstdlib>
#include <cstring>

namespace torchext {
namespace cpu {

// Avx2: AVX2 and F16C (which every AVX2 CPU has; the half conversions use it).
enum class Isa { Base, Avx2 };

// The widest instruction set this CPU runs, unless the environment variable TORCHEXT_CPU_ISA=base
// asks for the baseline (the tests check that both give the same bits). Decided once.
inline Isa isa() {
  static const Isa chosen = [] {
    const char* forced = std::getenv("TORCHEXT_CPU_ISA");
    if (forced != nullptr && std::strcmp(forced, "base") == 0) return Isa::Base;
#if defined(__x86_64__) && defined(__GNUC__)
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c")) return Isa::Avx2;
#endif
    return Isa::Base;
  }();
  return chosen;
}

inline const char* isa_name() { return isa() == Isa::Avx2 ? "avx2" : "base"; }

}  // namespace cpu
}  // namespace torchext
