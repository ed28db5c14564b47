// Fused CPU log-mel front end of fastspec._C: plain C++17 + OpenMP, no Python or torch types.
//
// logmel_cpu() turns a batch of waveforms [B, S] into features [B, T, n_mels] in one pass per
// block of frames: gather, DC removal, pre-emphasis, window, real FFT, power, sparse mel, log,
// normalisation, zeros past each clip's frame count; the `atst` preset's per-clip top_db clamp
// is a second, cheap pass over the output. The math mirrors kernels/reference.py::logmel_ref.
#pragma once

#include <cstdint>
#include <string>

namespace fastspec {

enum WaveDtype : int { kWaveF32 = 0, kWaveF64 = 1, kWaveI16 = 2 };
enum OutDtype : int { kOutF32 = 0, kOutBF16 = 1 };

struct LogmelArgs {
  const void* wave = nullptr;       // [B, S] samples, rows stride_b apart, dtype wave_dtype
  int wave_dtype = kWaveF32;        // i16 is scaled by 1 / 32768
  int64_t batch = 0;                // B
  int64_t num_samples = 0;          // S
  int64_t stride_b = 0;             // elements between clips (>= S)
  const int64_t* lengths = nullptr; // [B] valid samples per clip, each in [0, S]
  void* out = nullptr;              // [B, T, n_mels] contiguous, dtype out_dtype
  int out_dtype = kOutF32;
  int64_t n_frames = 0;             // T, frames of an S-sample clip
  const float* window = nullptr;    // [frame_len] analysis window (centred in n_fft if shorter)
  int64_t frame_len = 0;            // samples read per frame (Kaldi: win_length; center: n_fft)
  int64_t n_fft = 0;                // power of two, >= frame_len
  int64_t hop = 0;                  // frame shift in samples
  bool center = false;              // torch.stft center=True framing (pad n_fft / 2 each side)
  bool reflect = false;             // center padding mirrors at the clip's own length (else zeros)
  bool remove_dc = false;           // subtract each frame's mean
  float preemph = 0.0f;             // y[n] = x[n] - a x[n-1], y[0] = (1 - a) x[0]
  bool power_one = false;           // magnitude instead of power spectrum
  int64_t n_mels = 0;               // M
  const int32_t* mel_start = nullptr;   // [M] first FFT bin of filter m
  const int32_t* mel_offset = nullptr;  // [M + 1] CSR offsets into mel_weight
  const float* mel_weight = nullptr;    // [nnz] filter weights, scaled for the 2x FFT (see .cpp)
  float log_floor = 1e-10f;         // energies are floored here before the log
  float log_mult = 1.0f;            // 1 for ln, 10 / ln 10 for dB
  bool has_top_db = false;          // clamp each clip at (its max over valid frames) - top_db
  float top_db = 80.0f;
  float norm_mul = 1.0f;            // affine normalisation applied last
  float norm_add = 0.0f;
  bool check_finite = true;         // flag NaN / inf in a clip's valid samples
  int n_threads = 1;                // OpenMP threads
};

// Validates the arguments (returns a message naming the bad one, or "" when fine).
std::string check_logmel_args(const LogmelArgs& args);

// Computes the features. Returns the number of clips holding NaN / inf in their valid samples
// (0 when check_finite is off); their batch indices are written to bad_clips[0 .. returned).
// bad_clips must have room for B entries. Arguments must have passed check_logmel_args.
int64_t logmel_cpu(const LogmelArgs& args, int64_t* bad_clips);

// The SIMD width the library was compiled for (floats per vector: 16 AVX-512, 8 AVX, 4 SSE).
int simd_lanes();

}  // namespace fastspec
