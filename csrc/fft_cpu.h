// Complex FFT of W frames at once (one frame per SIMD lane) for the CPU log-mel of fastspec._C.
//
// An n_fft-point real FFT is computed as an m = n_fft / 2 point complex FFT of
// z[n] = y[2n] + i y[2n+1]: input in bit-reversed order, radix-4 passes (one radix-2 pass first
// when log2 m is odd), twiddles computed in double and rounded once. The plan also holds the
// factors of the split into the real spectrum (logmel_cpu.cpp).
#pragma once

#include <cstdint>
#include <vector>

#include "simd.h"

namespace fastspec {

struct FftPlan {
  int64_t m = 0;                     // complex points: n_fft / 2
  bool radix2_first = false;         // log2(m) odd: one radix-2 pass before the radix-4 passes
  std::vector<int32_t> bitrev;       // [m] bit-reversal permutation of log2(m) bits
  std::vector<int64_t> pass_h;       // sub-DFT size h of each radix-4 pass (blocks of 4h)
  std::vector<int64_t> pass_offset;  // start of each pass's twiddles in `twiddle`
  std::vector<float> twiddle;        // per pass [h][6]: W^k, W^2k, W^3k as (cos, sin) pairs
  std::vector<float> split_c;        // [m + 1] cos(2 pi k / n_fft) for the real-FFT split
  std::vector<float> split_s;        // [m + 1] -sin(2 pi k / n_fft)
};

// The plan for n_fft (a power of two >= 4), built on first use and cached for the process.
const FftPlan& get_fft_plan(int64_t n_fft);

// In-place m-point complex FFT of W frames, input in bit-reversed order, output natural.
// Radix-4 decimation in time: a block of 4h holds four size-h DFTs of the sub-sequences with
// residues 0, 2, 1, 3 (mod 4) -- the bit-reversed order -- so D0, D2 * W^k, D1 * W^2k, D3 * W^3k
// enter a 4-point DFT. Half the memory passes of radix-2, and 3 complex products instead of 4.
void fft_inplace(const FftPlan& plan, vf* __restrict re, vf* __restrict im);

}  // namespace fastspec
