// SIMD helpers shared by the C++ sources of fastspec._C (logmel_cpu.cpp, fft_cpu.cpp,
// resample_cpu.cpp): the vector width W of the build, GCC vector types, loads, a W x W transpose
// in registers, a vectorised natural log and float -> bfloat16 rounding.
//
// GCC / Clang vector extensions rather than intrinsics: one source serves AVX-512, AVX and SSE
// (and NEON), and the compiler picks the instructions for -march.
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace fastspec {

#if defined(__AVX512F__)
constexpr int W = 16;
#elif defined(__AVX__)
constexpr int W = 8;
#else
constexpr int W = 4;
#endif

typedef float vf __attribute__((vector_size(4 * W)));
typedef int32_t vi __attribute__((vector_size(4 * W)));

inline vf splat(float s) { return vf{} + s; }
inline vf vmax(vf a, vf b) { return a > b ? a : b; }

// Natural log of W positive normal floats: Cephes' logf (relative error ~1e-7) on vectors.
// The front end needs ~1e-6 absolute in log units; libm's scalar logf would cost more than the
// whole FFT, and -ffast-math (which would vectorise it) also licenses reassociation we avoid.
inline vf vlog(vf x) {
  vi bits;
  std::memcpy(&bits, &x, sizeof bits);
  vi e = ((bits >> 23) & 0xff) - 126;  // x = f * 2^e with f in [0.5, 1)
  bits = (bits & 0x007fffff) | 0x3f000000;
  vf f;
  std::memcpy(&f, &bits, sizeof f);
  vi small = f < 0.70710678118654752f;  // -1 where f < sqrt(1/2): use 2f, e - 1 instead
  e = e + small;
  f = (small ? f + f : f) - 1.0f;  // f in [sqrt(1/2) - 1, sqrt(2) - 1)
  vf z = f * f;
  vf y = splat(7.0376836292e-2f);
  y = y * f - 1.1514610310e-1f;
  y = y * f + 1.1676998740e-1f;
  y = y * f - 1.2420140846e-1f;
  y = y * f + 1.4249322787e-1f;
  y = y * f - 1.6668057665e-1f;
  y = y * f + 2.0000714765e-1f;
  y = y * f - 2.4999993993e-1f;
  y = y * f + 3.3333331174e-1f;
  y = y * f * z;
  vf ef = __builtin_convertvector(e, vf);
  // ln 2 split in two so that e * ln2 adds no rounding error of its own
  y = y - 2.12194440e-4f * ef;
  y = y - 0.5f * z;
  return f + y + 0.693359375f * ef;
}

inline uint16_t to_bf16(float v) {
  // round to nearest even; values here are finite
  uint32_t u;
  std::memcpy(&u, &v, sizeof u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// W unaligned floats from p
inline vf loadu(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// ----- W x W transposes (frames <-> lanes) ------------------------------------------------------

// One round of the recursive block transpose: rows i and i + B swap their off-diagonal B-wide
// blocks. After the rounds B = W/2, W/4, ..., 1 the W rows hold the transposed matrix. Masks are
// compile-time constants, so each shuffle is one two-source permute (vpermt2ps on AVX-512).
template <int B>
inline void transpose_round(vf* r) {
  vi lo, hi;
  for (int j = 0; j < W; ++j) {
    lo[j] = (j & B) ? W + j - B : j;
    hi[j] = (j & B) ? W + j : j + B;
  }
  for (int i = 0; i < W; ++i) {
    if (i & B) continue;
    const vf a = r[i], b = r[i + B];
    r[i] = __builtin_shuffle(a, b, lo);
    r[i + B] = __builtin_shuffle(a, b, hi);
  }
}

inline void transpose(vf* r) {
  if constexpr (W >= 16) transpose_round<8>(r);
  if constexpr (W >= 8) transpose_round<4>(r);
  transpose_round<2>(r);
  transpose_round<1>(r);
}

template <typename T>
inline float to_float(T v) {
  if constexpr (std::is_same_v<T, int16_t>) return static_cast<float>(v) * (1.0f / 32768.0f);
  return static_cast<float>(v);
}

// W consecutive samples as floats (int16 scaled by 1 / 32768, exact)
template <typename T>
inline vf load_samples(const T* p) {
  typedef T vt __attribute__((vector_size(sizeof(T) * W)));
  vt v;
  std::memcpy(&v, p, sizeof v);
  vf f = __builtin_convertvector(v, vf);
  if constexpr (std::is_same_v<T, int16_t>) f *= 1.0f / 32768.0f;
  return f;
}

}  // namespace fastspec
