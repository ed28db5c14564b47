// Polyphase resampling on the CPU for fastspec._C (plain C++17 + OpenMP).
//
// Output k of a clip is sum_q x[(k / up) * down + start[k % up] + q] * taps[k % up][q]: the
// filter of fastspec/frontend/polyphase.py (scipy.signal.resample_poly's), split by output phase
// and reversed so that every output is one contiguous dot product. Samples outside [0, length)
// are zero, as in resample_poly.
#pragma once

#include <cstdint>
#include <string>

namespace fastspec {

struct ResampleArgs {
  const void* wave = nullptr;        // [B, S] samples, row stride stride_b, dtype wave_dtype
  int wave_dtype = 0;                // 0 f32, 1 f64, 2 i16 (scaled by 1 / 32768)
  int64_t batch = 0;                 // B
  int64_t num_samples = 0;           // S
  int64_t stride_b = 0;              // elements between clips
  const int64_t* lengths = nullptr;  // [B] valid samples per clip; the rest reads as zero
  float* out = nullptr;              // [B, out_len] contiguous
  int64_t out_len = 0;               // ceil(S * up / down)
  const float* taps = nullptr;       // [up, n_taps] per-phase taps, reversed, zero padded
  const int64_t* starts = nullptr;   // [up] first input sample of phase r, relative to m * down
  int64_t up = 1, down = 1;          // output rate / input rate, in lowest terms
  int64_t n_taps = 0;                // taps per phase, a multiple of resample_tap_multiple()
  int n_threads = 1;
};

std::string check_resample_args(const ResampleArgs& args);
void resample_cpu(const ResampleArgs& args);
int resample_tap_multiple();  // n_taps must be a multiple of this (the SIMD width)

}  // namespace fastspec
