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

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <mutex>
#include <type_traits>
#include <utility>
#include <vector>

namespace fastspec {
namespace {

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

// ----- FFT plan (cached per n_fft) -------------------------------------------------------------

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
