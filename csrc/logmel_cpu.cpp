// Fused CPU log-mel front end (see logmel_cpu.h for the contract).
//
// Layout: SIMD lanes run across frames, not across samples. A work item is one clip and W
// consecutive frames (W = floats per vector); every buffer is an array of vectors whose lane l
// belongs to frame t0 + l. The FFT then needs no shuffles at all, each butterfly is the same
// scalar code on W frames at once, and the mel / log stages vectorise the same way. Only the
// gather (frames -> lanes) and the final store (lanes -> [T, n_mels] rows) transpose.
//
// Per frame (n_fft = 2m):
//   gather + (DC removal, pre-emphasis, window) -> z[n] = y[2n] + i y[2n+1], in bit-reversed
//   order   -> m-point complex FFT (radix-4 passes, one radix-2 pass when log2 m is odd)
//   -> split into the n_fft-point real spectrum for the bins some mel filter touches only
//   -> power (or magnitude) -> sparse mel (each filter reads its few bins) -> log -> normalise.
//
// Numerics: float32 throughout, like the torch backend (tests compare both with float64).
// Twiddles are computed in double and rounded once. The split step produces 2 X[k]; the factor
// 4 (power) or 2 (magnitude) is folded into the mel weights by the caller.
#include "logmel_cpu.h"

#include "fft_cpu.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

namespace fastspec {
namespace {

// ----- one work item: W frames of one clip ------------------------------------------------------

struct Context {
  const LogmelArgs& a;
  const FftPlan& fft;
  int64_t bin_lo, n_bins;  // spectrum bins [bin_lo, bin_lo + n_bins) read by the filters
};

template <typename T>
struct Workspace {
  std::vector<vf> re, im;     // [m] FFT buffers
  std::vector<vf> spec;       // [n_bins] power (or magnitude) of the bins the filters read
  std::vector<vf> mel;        // [n_mels rounded up to W] mel energies, then log-mel
  std::vector<T> edge;        // [W, frame_len (+ W)] frames that need padding, materialised
  std::vector<T> zeros;       // [frame_len (+ W)] source of lanes past the clip's frames
};

// Index of padded sample `idx` of a clip of `length` samples for center=True framing, or -1
// where the padding is zero. Reflection is periodic at the clip's own length (np.pad "reflect",
// as kernels/reference.py::_center_pad), so clips shorter than n_fft / 2 work too.
inline int64_t center_index(int64_t idx, int64_t length, bool reflect) {
  if (idx >= 0 && idx < length) return idx;
  if (!reflect || length <= 0) return -1;
  const int64_t period = std::max<int64_t>(2 * (length - 1), 1);
  int64_t i = (idx < 0 ? -idx : idx) % period;
  return i > length - 1 ? period - i : i;
}

// Frames t0 .. t0 + W - 1 of one clip -> windowed FFT input in bit-reversed order:
// z[n] = y[2n] + i y[2n+1] with y = window * preemph(x - mean(x)) (each step optional).
// Samples are read W at a time from each of the W frames and transposed in registers, so lane l
// of every vector is frame t0 + l. Frames that need padding (center=True near the clip's edges)
// are first materialised into ws.edge; lanes at or past n_lanes read zeros.
template <typename T>
void gather_transform(const Context& c, Workspace<T>& ws, const T* row, int64_t length, int64_t t0,
                      int n_lanes) {
  const LogmelArgs& a = c.a;
  const int64_t n = a.frame_len, half = a.center ? a.n_fft / 2 : 0;
  const int64_t stride = n + W;  // edge rows: the tail block may read up to W - 1 past n
  const T* src[W];
  for (int l = 0; l < W; ++l) {
    const int64_t start = (t0 + l) * a.hop - half;
    if (l >= n_lanes) {
      src[l] = ws.zeros.data();
    } else if (start >= 0 && start + n <= length &&
               (n % W == 0 || start + n + W <= a.num_samples)) {
      src[l] = row + start;
    } else {
      T* e = ws.edge.data() + l * stride;
      for (int64_t j = 0; j < n; ++j) {
        const int64_t i = center_index(start + j, length, a.reflect || !a.center);
        e[j] = i < 0 ? T(0) : row[i];
      }
      src[l] = e;
    }
  }
  vf mean = vf{};
  if (a.remove_dc) {
    // per-frame sums over contiguous memory, W-wide partial sums reduced at the end
    for (int l = 0; l < W; ++l) {
      vf s = vf{};
      int64_t j = 0;
      for (; j + W <= n; j += W) s += load_samples(src[l] + j);
      float total = 0.0f;
      for (int q = 0; q < W; ++q) total += s[q];
      for (; j < n; ++j) total += to_float(src[l][j]);
      mean[l] = total / static_cast<float>(n);
    }
  }
  const int32_t* rev = c.fft.bitrev.data();
  vf* re = ws.re.data();
  vf* im = ws.im.data();
  const float pre = a.preemph;
  vf prev = vf{};
  vf cols[W];
  for (int64_t j0 = 0; j0 < 2 * c.fft.m; j0 += W) {
    if (j0 < n) {
      for (int l = 0; l < W; ++l) cols[l] = load_samples(src[l] + j0);
      transpose(cols);  // cols[q]: sample j0 + q of every frame
    }
    for (int q = 0; q < W; ++q) {
      const int64_t j = j0 + q;
      vf y = vf{};
      if (j < n) {
        const vf cur = cols[q] - mean;
        if (j == 0) prev = cur;  // y[0] = x[0] - a x[0]: Kaldi replicates the first sample
        y = (pre != 0.0f ? cur - pre * prev : cur) * a.window[j];
        prev = cur;
      }
      const int64_t r = rev[j >> 1];
      if (j & 1) {
        im[r] = y;
      } else {
        re[r] = y;
      }
    }
  }
}

// 2 X[k] of the n_fft-point real FFT from the m-point complex FFT of z[n] = y[2n] + i y[2n+1],
// then |2X|^2 (or |2X|) for bins [bin_lo, bin_lo + n_bins).
void split_power(const Context& c, const vf* re, const vf* im, vf* spec) {
  const int64_t m = c.fft.m;
  const float* wc = c.fft.split_c.data();
  const float* ws = c.fft.split_s.data();
  for (int64_t i = 0; i < c.n_bins; ++i) {
    const int64_t k = c.bin_lo + i;
    const int64_t kk = k & (m - 1);        // Z[m] is Z[0]
    const int64_t km = (m - k) & (m - 1);  // Z[m - k]
    const vf er = re[kk] + re[km], ei = im[kk] - im[km];  // 2 E[k]
    const vf orr = im[kk] + im[km], oi = re[km] - re[kk];  // 2 O[k]
    const vf xr = er + wc[k] * orr - ws[k] * oi;
    const vf xi = ei + wc[k] * oi + ws[k] * orr;
    vf p = xr * xr + xi * xi;
    if (c.a.power_one) {
      for (int l = 0; l < W; ++l) p[l] = std::sqrt(p[l]);
    }
    spec[i] = p;
  }
}

// Sparse mel, log, and (without top_db) the normalisation; returns the max over valid lanes.
float mel_log(const Context& c, const vf* spec, vf* mel, int n_lanes) {
  const LogmelArgs& a = c.a;
  const vf floor = splat(a.log_floor);
  vf lane_ok;
  const float inf = std::numeric_limits<float>::infinity();
  for (int l = 0; l < W; ++l) lane_ok[l] = l < n_lanes ? 0.0f : -inf;
  vf vmax_all = splat(-std::numeric_limits<float>::infinity());
  for (int64_t f = 0; f < a.n_mels; ++f) {
    const int32_t q0 = a.mel_offset[f], q1 = a.mel_offset[f + 1];
    const vf* s = spec + (a.mel_start[f] - c.bin_lo);
    vf acc = vf{};
    for (int32_t q = q0; q < q1; ++q) acc += a.mel_weight[q] * s[q - q0];
    vf y = vlog(vmax(acc, floor)) * a.log_mult;
    if (a.has_top_db) {
      vmax_all = vmax(vmax_all, y + lane_ok);  // lanes past the clip do not count
    } else {
      y = y * a.norm_mul + a.norm_add;
    }
    mel[f] = y;
  }
  float best = -std::numeric_limits<float>::infinity();
  for (int l = 0; l < W; ++l) best = std::max(best, vmax_all[l]);
  return best;
}

inline void store_lane(float* dst, vf v, int64_t count) {
  if (count == W) {
    std::memcpy(dst, &v, sizeof v);
  } else {
    for (int64_t q = 0; q < count; ++q) dst[q] = v[q];
  }
}

inline void store_lane(uint16_t* dst, vf v, int64_t count) {
  // float32 -> bfloat16, round to nearest even (values are finite here)
  typedef uint16_t vh __attribute__((vector_size(2 * W)));
  vi u;
  std::memcpy(&u, &v, sizeof u);
  u = u + 0x7fff + ((u >> 16) & 1);
  const vh h = __builtin_convertvector((u >> 16) & 0xffff, vh);
  if (count == W) {
    std::memcpy(dst, &h, sizeof h);
  } else {
    for (int64_t q = 0; q < count; ++q) dst[q] = h[q];
  }
}

// lanes -> rows: out[t0 + l, :] = mel[:][l] for the valid lanes, zeros for padding frames.
// W mel values of W frames are transposed in registers, then stored as contiguous row pieces.
template <typename O>
void store_rows(int64_t n_mels, vf* mel, O* out_rows, int n_lanes, int n_rows) {
  vf blk[W];
  for (int64_t f0 = 0; f0 < n_mels; f0 += W) {
    const int64_t count = std::min<int64_t>(W, n_mels - f0);
    for (int q = 0; q < W; ++q) blk[q] = mel[f0 + q];  // mel is padded to a multiple of W
    transpose(blk);  // blk[l]: mels f0 .. f0 + W - 1 of frame t0 + l
    for (int l = 0; l < n_lanes; ++l) store_lane(out_rows + l * n_mels + f0, blk[l], count);
  }
  for (int l = n_lanes; l < n_rows; ++l) std::memset(out_rows + l * n_mels, 0, sizeof(O) * n_mels);
}

// NaN or inf among n samples. x * 0 is 0 for finite x and NaN otherwise; four independent
// vector accumulators keep the FMA latency chain from bounding this pass.
template <typename T>
bool has_non_finite(const T* p, int64_t n) {
  if constexpr (std::is_same_v<T, int16_t>) {
    return false;
  } else {
    vf acc0 = vf{}, acc1 = vf{}, acc2 = vf{}, acc3 = vf{};
    int64_t i = 0;
    for (; i + 4 * W <= n; i += 4 * W) {
      acc0 += load_samples(p + i) * 0.0f;
      acc1 += load_samples(p + i + W) * 0.0f;
      acc2 += load_samples(p + i + 2 * W) * 0.0f;
      acc3 += load_samples(p + i + 3 * W) * 0.0f;
    }
    T tail = 0;
    for (; i < n; ++i) tail += p[i] * T(0);
    const vf acc = (acc0 + acc1) + (acc2 + acc3);
    float total = static_cast<float>(tail);
    for (int l = 0; l < W; ++l) total += acc[l];
    // a double that overflows float (|x| > 3.4e38) becomes inf here and is reported too
    return total != 0.0f;
  }
}

inline int64_t valid_frames(const LogmelArgs& a, int64_t length) {
  if (a.center) return 1 + length / a.hop;
  return length >= a.frame_len ? 1 + (length - a.frame_len) / a.hop : 0;
}

template <typename T>
int64_t run(const LogmelArgs& a, int64_t* bad_clips) {
  const FftPlan& fft = get_fft_plan(a.n_fft);
  int64_t bin_lo = a.n_fft, bin_hi = 0;
  for (int64_t f = 0; f < a.n_mels; ++f) {
    const int64_t width = a.mel_offset[f + 1] - a.mel_offset[f];
    if (width == 0) continue;  // an empty filter (Kaldi 128 mel at 16 kHz has some)
    bin_lo = std::min<int64_t>(bin_lo, a.mel_start[f]);
    bin_hi = std::max<int64_t>(bin_hi, a.mel_start[f] + width);
  }
  if (bin_hi <= bin_lo) bin_lo = bin_hi = 0;
  const Context c{a, fft, bin_lo, bin_hi - bin_lo};

  const int64_t B = a.batch, T_ = a.n_frames, M = a.n_mels;
  const int64_t n_blocks = (T_ + W - 1) / W;
  const int64_t blocks = std::max<int64_t>(n_blocks, 1);  // T = 0 still checks the samples
  const T* wave = static_cast<const T*>(a.wave);
  const bool two_pass = a.has_top_db;
  // top_db into bf16: finish in float32 first, round once in the second pass
  std::vector<float> scratch;
  if (two_pass && a.out_dtype == kOutBF16) scratch.resize(static_cast<size_t>(B * T_ * M));
  float* stage_f32 = two_pass && a.out_dtype == kOutBF16 ? scratch.data() : nullptr;
  std::vector<float> block_max(static_cast<size_t>(B * blocks),
                               -std::numeric_limits<float>::infinity());
  std::vector<uint8_t> bad(static_cast<size_t>(B), 0);

#pragma omp parallel num_threads(a.n_threads)
  {
    Workspace<T> ws;
    const int64_t padded = a.frame_len + W;
    ws.re.resize(fft.m);
    ws.im.resize(fft.m);
    ws.spec.resize(std::max<int64_t>(c.n_bins, 1));
    ws.mel.assign((M + W - 1) / W * W, vf{});
    ws.edge.assign(W * padded, T(0));
    ws.zeros.assign(padded, T(0));

#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < B * blocks; ++task) {
      const int64_t b = task / blocks, j = task % blocks;
      const T* row = wave + b * a.stride_b;
      const int64_t length = std::min(a.lengths[b], a.num_samples);
      if (a.check_finite) {
        // blocks partition [0, length) by hops; the last block takes the tail
        const int64_t s0 = std::min(j * W * a.hop, length);
        const int64_t s1 = j == blocks - 1 ? length : std::min((j + 1) * W * a.hop, length);
        if (s1 > s0 && has_non_finite(row + s0, s1 - s0)) {
          __atomic_store_n(&bad[b], uint8_t{1}, __ATOMIC_RELAXED);
        }
      }
      if (j >= n_blocks) continue;
      const int64_t t0 = j * W;
      const int n_rows = static_cast<int>(std::min<int64_t>(W, T_ - t0));
      const int n_lanes = static_cast<int>(
          std::clamp<int64_t>(valid_frames(a, length) - t0, 0, n_rows));
      if (n_lanes > 0) {
        gather_transform(c, ws, row, length, t0, n_lanes);
        fft_inplace(fft, ws.re.data(), ws.im.data());
        split_power(c, ws.re.data(), ws.im.data(), ws.spec.data());
        block_max[b * blocks + j] = mel_log(c, ws.spec.data(), ws.mel.data(), n_lanes);
      }
      const int64_t row_offset = (b * T_ + t0) * M;
      if (stage_f32) {
        store_rows(M, ws.mel.data(), stage_f32 + row_offset, n_lanes, n_rows);
      } else if (a.out_dtype == kOutF32) {
        store_rows(M, ws.mel.data(), static_cast<float*>(a.out) + row_offset, n_lanes, n_rows);
      } else {
        store_rows(M, ws.mel.data(), static_cast<uint16_t*>(a.out) + row_offset, n_lanes, n_rows);
      }
    }

    if (two_pass) {
      // second pass: clamp at (clip max - top_db), normalise, round; padding rows stay 0
#pragma omp for schedule(static)
      for (int64_t b = 0; b < B; ++b) {
        float clip_max = -std::numeric_limits<float>::infinity();
        for (int64_t j = 0; j < blocks; ++j) {
          clip_max = std::max(clip_max, block_max[b * blocks + j]);
        }
        const float lo = clip_max - a.top_db;
        const int64_t length = std::min(a.lengths[b], a.num_samples);
        const int64_t n_valid = std::min(valid_frames(a, length), T_);
        const int64_t offset = b * T_ * M;
        if (stage_f32) {
          uint16_t* dst = static_cast<uint16_t*>(a.out) + offset;
          for (int64_t i = 0; i < n_valid * M; ++i) {
            dst[i] = to_bf16(std::max(stage_f32[offset + i], lo) * a.norm_mul + a.norm_add);
          }
        } else {
          float* dst = static_cast<float*>(a.out) + offset;
          for (int64_t i = 0; i < n_valid * M; ++i) {
            dst[i] = std::max(dst[i], lo) * a.norm_mul + a.norm_add;
          }
        }
      }
    }
  }

  int64_t n_bad = 0;
  for (int64_t b = 0; b < B; ++b) {
    if (bad[b]) bad_clips[n_bad++] = b;
  }
  return n_bad;
}

}  // namespace

int simd_lanes() { return W; }

std::string check_logmel_args(const LogmelArgs& a) {
  auto msg = [](const char* name, int64_t value, const char* need) {
    return std::string(name) + "=" + std::to_string(value) + " " + need;
  };
  // (failed, message) in the order the arguments appear; the first failure is reported
  const std::pair<bool, std::string> checks[] = {
      {a.batch < 0, msg("batch", a.batch, "must be >= 0")},
      {a.num_samples < 0, msg("num_samples", a.num_samples, "must be >= 0")},
      {a.stride_b < a.num_samples && a.batch > 1, msg("stride_b", a.stride_b, "must be >= S")},
      {a.wave_dtype < kWaveF32 || a.wave_dtype > kWaveI16,
       msg("wave_dtype", a.wave_dtype, "is not 0 (f32), 1 (f64) or 2 (i16)")},
      {a.out_dtype != kOutF32 && a.out_dtype != kOutBF16,
       msg("out_dtype", a.out_dtype, "is not 0 (f32) or 1 (bf16)")},
      {a.n_fft < 4 || a.n_fft > (1 << 20) || (a.n_fft & (a.n_fft - 1)) != 0,
       msg("n_fft", a.n_fft, "must be a power of two in [4, 2^20] for the C++ front end")},
      {a.frame_len < 2 || a.frame_len > a.n_fft,
       msg("frame_len", a.frame_len, "must be in [2, n_fft]")},
      {a.center && a.frame_len != a.n_fft,
       msg("frame_len", a.frame_len, "must equal n_fft with center framing")},
      {a.hop < 1, msg("hop", a.hop, "must be >= 1")},
      {a.n_mels < 1, msg("n_mels", a.n_mels, "must be >= 1")},
      {a.n_frames < 0, msg("n_frames", a.n_frames, "must be >= 0")},
      {a.n_threads < 1, msg("n_threads", a.n_threads, "must be >= 1")},
      {!(a.log_floor > 0.0f), "log_floor must be > 0"},
  };
  for (const auto& check : checks) {
    if (check.first) return check.second;
  }
  if (a.mel_offset[0] != 0) return msg("mel_offset[0]", a.mel_offset[0], "must be 0");
  for (int64_t f = 0; f < a.n_mels; ++f) {
    const int64_t width = a.mel_offset[f + 1] - a.mel_offset[f];
    if (width < 0) return msg("mel_offset", f, "(index) decreases");
    if (width > 0 && (a.mel_start[f] < 0 || a.mel_start[f] + width > a.n_fft / 2 + 1)) {
      return msg("mel_start", f, "(index) reads bins outside [0, n_fft / 2]");
    }
  }
  for (int64_t b = 0; b < a.batch; ++b) {
    if (a.lengths[b] < 0 || a.lengths[b] > a.num_samples) {
      return "lengths[" + std::to_string(b) + "]=" + std::to_string(a.lengths[b]) +
             " is outside [0, S=" + std::to_string(a.num_samples) + "]";
    }
  }
  return "";
}

int64_t logmel_cpu(const LogmelArgs& args, int64_t* bad_clips) {
  switch (args.wave_dtype) {
    case kWaveF64:
      return run<double>(args, bad_clips);
    case kWaveI16:
      return run<int16_t>(args, bad_clips);
    default:
      return run<float>(args, bad_clips);
  }
}

}  // namespace fastspec
