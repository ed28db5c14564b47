// Polyphase resampling on the CPU (see resample_cpu.h).
//
// Work item: one clip and a chunk of outputs. The input the chunk reads is copied (as float32,
// zero outside the clip) into a per-thread buffer, so the inner loop has no bounds checks. W
// consecutive outputs (W phases) are computed at a time: each is a dot product of n_taps
// contiguous samples with its phase's taps, accumulated in a W-lane vector; a W x W transpose
// then sums the W partial vectors into one vector of W outputs. Per output that is
// n_taps / W fused multiply-adds (4 at 44.1 kHz -> 16 kHz) instead of the conv1d bank's
// mostly-zero window of ~2 * 10 * max(up, down) / up + down taps.
#include "resample_cpu.h"

#include "simd.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace fastspec {
namespace {

constexpr int64_t kChunk = 4096;  // outputs per work item

template <typename T>
void run(const ResampleArgs& a) {
  const int64_t chunks = (a.out_len + kChunk - 1) / kChunk;
  int64_t lo_start = a.starts[0], hi_start = a.starts[0];
  for (int64_t r = 1; r < a.up; ++r) {
    lo_start = std::min(lo_start, a.starts[r]);
    hi_start = std::max(hi_start, a.starts[r]);
  }
  const T* wave = static_cast<const T*>(a.wave);
  // locals: the compiler cannot keep struct fields in registers across the output stores
  const int64_t up = a.up, down = a.down, n_taps = a.n_taps;
  const int64_t* starts = a.starts;
  const float* taps = a.taps;

#pragma omp parallel num_threads(a.n_threads)
  {
    std::vector<float> seg;
    vf acc[W];
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < a.batch * chunks; ++task) {
      const int64_t b = task / chunks, k0 = (task % chunks) * kChunk;
      const int64_t k1 = std::min(k0 + kChunk, a.out_len);
      const int64_t length = std::min(a.lengths[b], a.num_samples);
      const T* row = wave + b * a.stride_b;
      // input samples [first, last) this chunk reads; copied with zeros outside the clip
      const int64_t first = (k0 / a.up) * a.down + lo_start;
      const int64_t last = ((k1 - 1) / a.up) * a.down + hi_start + a.n_taps;
      seg.assign(static_cast<size_t>(last - first), 0.0f);
      const int64_t lo = std::max<int64_t>(first, 0), hi = std::min(last, length);
      for (int64_t i = lo; i < hi; ++i) seg[i - first] = to_float(row[i]);
      float* out = a.out + b * a.out_len;
      // output k = r + m up: walk (r, m) incrementally, no division per output
      int64_t r = k0 % a.up, m = k0 / a.up;
      const float* xs[W];
      const float* gs[W];
      for (int64_t k = k0; k < k1; k += W) {
        const int n = static_cast<int>(std::min<int64_t>(W, k1 - k));
        for (int i = 0; i < W; ++i) {
          // lanes past the chunk's end repeat the last output's operands (result discarded)
          xs[i] = seg.data() + m * down + starts[r] - first;
          gs[i] = taps + r * n_taps;
          if (i < n - 1 && ++r == up) {
            r = 0;
            ++m;
          }
        }
        if (++r == up) {  // step past the chunk's last output
          r = 0;
          ++m;
        }
        // q outer, outputs inner: W independent FMA chains instead of one latency-bound chain
        for (int i = 0; i < W; ++i) acc[i] = loadu(xs[i]) * loadu(gs[i]);
        for (int64_t q = W; q < n_taps; q += W) {
          for (int i = 0; i < W; ++i) acc[i] += loadu(xs[i] + q) * loadu(gs[i] + q);
        }
        transpose(acc);  // acc[l][i]: lane l of output i's partial sums
        vf total = acc[0];
        for (int l = 1; l < W; ++l) total += acc[l];
        if (n == W) {
          std::memcpy(out + k, &total, sizeof total);
        } else {
          for (int i = 0; i < n; ++i) out[k + i] = total[i];
        }
      }
    }
  }
}

}  // namespace

int resample_tap_multiple() { return W; }

std::string check_resample_args(const ResampleArgs& a) {
  auto msg = [](const char* name, int64_t value, const char* need) {
    return std::string(name) + "=" + std::to_string(value) + " " + need;
  };
  if (a.batch < 0 || a.num_samples < 0) {
    return msg("batch", a.batch, "and num_samples must be >= 0");
  }
  if (a.batch > 1 && a.stride_b < a.num_samples) return msg("stride_b", a.stride_b, "must be >= S");
  if (a.wave_dtype < 0 || a.wave_dtype > 2) {
    return msg("wave_dtype", a.wave_dtype, "is not 0, 1 or 2");
  }
  if (a.up < 1 || a.down < 1) return msg("up", a.up, "and down must be >= 1");
  if (a.n_taps < W || a.n_taps % W != 0) {
    return msg("n_taps", a.n_taps, "must be a positive multiple of the SIMD width");
  }
  if (a.out_len < 0) return msg("out_len", a.out_len, "must be >= 0");
  if (a.n_threads < 1) return msg("n_threads", a.n_threads, "must be >= 1");
  for (int64_t b = 0; b < a.batch; ++b) {
    if (a.lengths[b] < 0 || a.lengths[b] > a.num_samples)
      return "lengths[" + std::to_string(b) + "]=" + std::to_string(a.lengths[b]) +
             " is outside [0, S=" + std::to_string(a.num_samples) + "]";
  }
  return "";
}

void resample_cpu(const ResampleArgs& a) {
  switch (a.wave_dtype) {
    case 1:
      return run<double>(a);
    case 2:
      return run<int16_t>(a);
    default:
      return run<float>(a);
  }
}

}  // namespace fastspec
