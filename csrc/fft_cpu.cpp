// Complex FFT of W frames at once (see fft_cpu.h).
#include "fft_cpu.h"

#include <cmath>
#include <map>
#include <memory>
#include <mutex>
#include <utility>

namespace fastspec {

const FftPlan& get_fft_plan(int64_t n_fft) {
  // plans are immutable once built; the mutex only guards the map (first call per size)
  static std::mutex mutex;
  static std::map<int64_t, std::unique_ptr<FftPlan>> plans;
  std::lock_guard<std::mutex> lock(mutex);
  auto it = plans.find(n_fft);
  if (it != plans.end()) return *it->second;

  auto plan = std::make_unique<FftPlan>();
  const int64_t m = n_fft / 2;
  int bits = 0;
  while ((int64_t{1} << bits) < m) ++bits;
  plan->m = m;
  plan->bitrev.resize(m);
  for (int64_t n = 0; n < m; ++n) {
    int64_t r = 0;
    for (int b = 0; b < bits; ++b) r |= ((n >> b) & 1) << (bits - 1 - b);
    plan->bitrev[n] = static_cast<int32_t>(r);
  }
  plan->radix2_first = bits % 2 == 1;
  const double two_pi = 6.283185307179586476925286766559;
  for (int64_t h = plan->radix2_first ? 2 : 1; 4 * h <= m; h *= 4) {
    plan->pass_h.push_back(h);
    plan->pass_offset.push_back(static_cast<int64_t>(plan->twiddle.size()));
    for (int64_t k = 0; k < h; ++k) {
      for (int q = 1; q <= 3; ++q) {
        // W = exp(-2 pi i / (4h)); reduce q k modulo 4h in integers before the float math
        const double phase = two_pi * static_cast<double>((q * k) % (4 * h)) / (4.0 * h);
        plan->twiddle.push_back(static_cast<float>(std::cos(phase)));
        plan->twiddle.push_back(static_cast<float>(-std::sin(phase)));
      }
    }
  }
  plan->split_c.resize(m + 1);
  plan->split_s.resize(m + 1);
  for (int64_t k = 0; k <= m; ++k) {
    const double phase = two_pi * static_cast<double>(k) / static_cast<double>(n_fft);
    plan->split_c[k] = static_cast<float>(std::cos(phase));
    plan->split_s[k] = static_cast<float>(-std::sin(phase));
  }
  const FftPlan& ref = *plan;
  plans.emplace(n_fft, std::move(plan));
  return ref;
}

// In-place m-point complex FFT of W frames, input in bit-reversed order, output natural.
// Radix-4 decimation in time: a block of 4h holds four size-h DFTs of the sub-sequences with
// residues 0, 2, 1, 3 (mod 4) -- the bit-reversed order -- so D0, D2 * W^k, D1 * W^2k, D3 * W^3k
// enter a 4-point DFT. Half the memory passes of radix-2, and 3 complex products instead of 4.
void fft_inplace(const FftPlan& plan, vf* __restrict re, vf* __restrict im) {
  const int64_t m = plan.m;
  if (plan.radix2_first) {
    for (int64_t i = 0; i < m; i += 2) {
      const vf ar = re[i], ai = im[i], br = re[i + 1], bi = im[i + 1];
      re[i] = ar + br;
      im[i] = ai + bi;
      re[i + 1] = ar - br;
      im[i + 1] = ai - bi;
    }
  }
  for (size_t pass = 0; pass < plan.pass_h.size(); ++pass) {
    const int64_t h = plan.pass_h[pass];
    const float* tw = plan.twiddle.data() + plan.pass_offset[pass];
    for (int64_t b = 0; b < m; b += 4 * h) {
      for (int64_t k = 0; k < h; ++k) {
        const int64_t i0 = b + k, i1 = i0 + h, i2 = i0 + 2 * h, i3 = i0 + 3 * h;
        const float* w = tw + 6 * k;
        const vf y0r = re[i0], y0i = im[i0];
        vf y1r = re[i2], y1i = im[i2];  // D2 * W^k
        vf y2r = re[i1], y2i = im[i1];  // D1 * W^2k
        vf y3r = re[i3], y3i = im[i3];  // D3 * W^3k
        if (h > 1) {  // the first pass has only k = 0, where every twiddle is 1
          vf t;
          t = y1r * w[0] - y1i * w[1];
          y1i = y1r * w[1] + y1i * w[0];
          y1r = t;
          t = y2r * w[2] - y2i * w[3];
          y2i = y2r * w[3] + y2i * w[2];
          y2r = t;
          t = y3r * w[4] - y3i * w[5];
          y3i = y3r * w[5] + y3i * w[4];
          y3r = t;
        }
        const vf ar = y0r + y2r, ai = y0i + y2i, br = y0r - y2r, bi = y0i - y2i;
        const vf cr = y1r + y3r, ci = y1i + y3i, dr = y1r - y3r, di = y1i - y3i;
        re[i0] = ar + cr;
        im[i0] = ai + ci;
        re[i2] = ar - cr;
        im[i2] = ai - ci;
        re[i1] = br + di;  // b - i d
        im[i1] = bi - dr;
        re[i3] = br - di;  // b + i d
        im[i3] = bi + dr;
      }
    }
  }
}

}  // namespace fastspec
