// Python binding of fastspec._C. Only the CPython C API: no torch or pybind11 headers, so the
// module compiles in seconds on first use and does not depend on torch's C++ ABI.
//
// Tensors cross the boundary as Python objects read through DLPack (tensor_args.h): this layer
// checks each one's device, dtype, shape and strides, and derives the sizes (B, S, T, n_mels...)
// from the tensors themselves rather than trusting separate integers, so a caller cannot make
// the C++ read or write outside a buffer. Value checks follow (check_logmel_args,
// check_resample_args). Every problem is a ValueError naming the function and the argument.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string>
#include <vector>

#include "logmel_cpu.h"
#include "resample_cpu.h"
#include "tensor_args.h"

namespace {

using fastspec::Dtype;
using fastspec::TensorArg;

// Bumped whenever the keyword interface changes: the loader refuses a stale cached build.
constexpr int kApiVersion = 3;

// The waveform batch both entry points read: wave [B, S] (float32, float64 or int16) and its
// lengths [B] int64.
bool read_wave(const char* fn, PyObject* wave_obj, PyObject* lengths_obj, TensorArg* wave,
               TensorArg* lengths, int* wave_dtype) {
  if (!fastspec::read_tensor(fn, "wave", wave_obj, wave) ||
      !fastspec::check_dtype(*wave, {Dtype::kF32, Dtype::kF64, Dtype::kI16},
                             "float32, float64 or int16") ||
      !fastspec::check_shape(*wave, {-1, -1}, "[B, S]") || !fastspec::check_rows(*wave) ||
      !fastspec::read_tensor(fn, "lengths", lengths_obj, lengths) ||
      !fastspec::check_dtype(*lengths, {Dtype::kI64}, "int64") ||
      !fastspec::check_shape(*lengths, {wave->dim(0)}, "[B]") ||
      !fastspec::check_contiguous(*lengths)) {
    return false;
  }
  *wave_dtype = wave->dtype == Dtype::kF64 ? fastspec::kWaveF64
                : wave->dtype == Dtype::kI16 ? fastspec::kWaveI16
                                             : fastspec::kWaveF32;
  return true;
}

PyObject* py_logmel(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {
      "wave",       "lengths",    "out",      "window",    "mel_start", "mel_offset",
      "mel_weight", "n_fft",      "hop",      "center",    "reflect",   "remove_dc",
      "preemph",    "power_one",  "log_floor", "log_mult", "top_db",    "norm_mul",
      "norm_add",   "check_finite", "n_threads", nullptr};
  PyObject *wave_obj, *lengths_obj, *out_obj, *window_obj, *start_obj, *offset_obj, *weight_obj;
  PyObject* top_db = Py_None;
  fastspec::LogmelArgs a;
  long long n_fft = 0, hop = 0;
  int center = 0, reflect = 0, remove_dc = 0, power_one = 0, check_finite = 1;
  if (!PyArg_ParseTupleAndKeywords(
          args, kwargs, "$OOOOOOOLLpppfpffOffpi", const_cast<char**>(keywords), &wave_obj,
          &lengths_obj, &out_obj, &window_obj, &start_obj, &offset_obj, &weight_obj, &n_fft, &hop,
          &center, &reflect, &remove_dc, &a.preemph, &power_one, &a.log_floor, &a.log_mult,
          &top_db, &a.norm_mul, &a.norm_add, &check_finite, &a.n_threads)) {
    return nullptr;
  }
  const char* fn = "logmel";
  TensorArg wave, lengths, out, window, mel_start, mel_offset, mel_weight;
  if (!read_wave(fn, wave_obj, lengths_obj, &wave, &lengths, &a.wave_dtype) ||
      !fastspec::read_tensor(fn, "window", window_obj, &window) ||
      !fastspec::check_dtype(window, {Dtype::kF32}, "float32") ||
      !fastspec::check_shape(window, {-1}, "[frame_len]") ||
      !fastspec::check_contiguous(window)) {
    return nullptr;
  }
  if (hop < 1) return fastspec::fail(fn, "hop=" + std::to_string(hop) + " must be >= 1"), nullptr;
  a.batch = wave.dim(0);
  a.num_samples = wave.dim(1);
  a.stride_b = a.batch > 1 ? wave.strides[0] : a.num_samples;
  a.frame_len = window.dim(0);
  a.hop = hop;
  a.n_fft = n_fft;
  a.center = center;
  // frames of an S-sample clip: torch.stft(center=True) or Kaldi's snip-edges count
  const int64_t n_frames = center ? 1 + a.num_samples / hop
                           : a.num_samples >= a.frame_len
                               ? 1 + (a.num_samples - a.frame_len) / hop
                               : 0;
  // the filter bank defines n_mels: mel_start [n_mels], mel_offset [n_mels + 1] (CSR)
  if (!fastspec::read_tensor(fn, "mel_start", start_obj, &mel_start) ||
      !fastspec::check_dtype(mel_start, {Dtype::kI32}, "int32") ||
      !fastspec::check_shape(mel_start, {-1}, "[n_mels]") ||
      !fastspec::check_contiguous(mel_start)) {
    return nullptr;
  }
  const int64_t n_mels = mel_start.dim(0);
  if (!fastspec::read_tensor(fn, "out", out_obj, &out) ||
      !fastspec::check_dtype(out, {Dtype::kF32, Dtype::kBF16}, "float32 or bfloat16") ||
      !fastspec::check_shape(out, {a.batch, n_frames, n_mels}, "[B, T, n_mels]") ||
      !fastspec::check_contiguous(out) ||
      !fastspec::read_tensor(fn, "mel_offset", offset_obj, &mel_offset) ||
      !fastspec::check_dtype(mel_offset, {Dtype::kI32}, "int32") ||
      !fastspec::check_shape(mel_offset, {n_mels + 1}, "[n_mels + 1]") ||
      !fastspec::check_contiguous(mel_offset) ||
      !fastspec::read_tensor(fn, "mel_weight", weight_obj, &mel_weight) ||
      !fastspec::check_dtype(mel_weight, {Dtype::kF32}, "float32") ||
      !fastspec::check_shape(mel_weight, {-1}, "[nnz]") ||
      !fastspec::check_contiguous(mel_weight)) {
    return nullptr;
  }
  const auto* offsets = static_cast<const int32_t*>(mel_offset.data);
  if (offsets[n_mels] != mel_weight.dim(0)) {
    fastspec::fail(fn, "mel_offset[n_mels]=" + std::to_string(offsets[n_mels]) +
                           " must equal the length of mel_weight, " +
                           std::to_string(mel_weight.dim(0)));
    return nullptr;
  }
  if (top_db != Py_None) {
    a.top_db = static_cast<float>(PyFloat_AsDouble(top_db));
    if (PyErr_Occurred()) return nullptr;
    a.has_top_db = true;
  }
  a.wave = wave.data;
  a.lengths = static_cast<const int64_t*>(lengths.data);
  a.out = out.data;
  a.out_dtype = out.dtype == Dtype::kBF16 ? fastspec::kOutBF16 : fastspec::kOutF32;
  a.n_frames = n_frames;
  a.window = static_cast<const float*>(window.data);
  a.reflect = reflect;
  a.remove_dc = remove_dc;
  a.power_one = power_one;
  a.n_mels = n_mels;
  a.mel_start = static_cast<const int32_t*>(mel_start.data);
  a.mel_offset = offsets;
  a.mel_weight = static_cast<const float*>(mel_weight.data);
  a.check_finite = check_finite;
  const std::string problem = fastspec::check_logmel_args(a);
  if (!problem.empty()) return fastspec::fail(fn, problem), nullptr;
  std::vector<int64_t> bad(static_cast<size_t>(a.batch > 0 ? a.batch : 1));
  int64_t n_bad = 0;
  // the work runs on OpenMP threads without the GIL: other Python threads (data loading)
  // keep going while a batch is featurised
  Py_BEGIN_ALLOW_THREADS n_bad = fastspec::logmel_cpu(a, bad.data());
  Py_END_ALLOW_THREADS if (n_bad > 0) {
    std::string clips;
    for (int64_t i = 0; i < n_bad && i < 10; ++i) {
      clips += (i ? ", " : "") + std::to_string(bad[i]);
    }
    PyErr_SetString(PyExc_ValueError,
                    ("wave holds NaN or inf in clip(s) [" + clips + "] (batch index)").c_str());
    return nullptr;
  }
  Py_RETURN_NONE;
}

PyObject* py_resample(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {"wave", "lengths", "out",       "taps", "starts",
                                   "up",   "down",    "n_threads", nullptr};
  PyObject *wave_obj, *lengths_obj, *out_obj, *taps_obj, *starts_obj;
  fastspec::ResampleArgs a;
  long long up = 1, down = 1;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$OOOOOLLi", const_cast<char**>(keywords),
                                   &wave_obj, &lengths_obj, &out_obj, &taps_obj, &starts_obj, &up,
                                   &down, &a.n_threads)) {
    return nullptr;
  }
  const char* fn = "resample";
  TensorArg wave, lengths, out, taps, starts;
  if (!read_wave(fn, wave_obj, lengths_obj, &wave, &lengths, &a.wave_dtype)) return nullptr;
  if (up < 1 || down < 1) {
    return fastspec::fail(fn, "up=" + std::to_string(up) + " and down=" + std::to_string(down) +
                                  " must be >= 1"),
           nullptr;
  }
  a.batch = wave.dim(0);
  a.num_samples = wave.dim(1);
  a.stride_b = a.batch > 1 ? wave.strides[0] : a.num_samples;
  a.up = up;
  a.down = down;
  a.out_len = (a.num_samples * up + down - 1) / down;  // ceil(S up / down)
  if (!fastspec::read_tensor(fn, "out", out_obj, &out) ||
      !fastspec::check_dtype(out, {Dtype::kF32}, "float32") ||
      !fastspec::check_shape(out, {a.batch, a.out_len}, "[B, ceil(S * up / down)]") ||
      !fastspec::check_contiguous(out) || !fastspec::read_tensor(fn, "taps", taps_obj, &taps) ||
      !fastspec::check_dtype(taps, {Dtype::kF32}, "float32") ||
      !fastspec::check_shape(taps, {up, -1}, "[up, n_taps]") || !fastspec::check_contiguous(taps) ||
      !fastspec::read_tensor(fn, "starts", starts_obj, &starts) ||
      !fastspec::check_dtype(starts, {Dtype::kI64}, "int64") ||
      !fastspec::check_shape(starts, {up}, "[up]") || !fastspec::check_contiguous(starts)) {
    return nullptr;
  }
  a.wave = wave.data;
  a.lengths = static_cast<const int64_t*>(lengths.data);
  a.out = static_cast<float*>(out.data);
  a.taps = static_cast<const float*>(taps.data);
  a.starts = static_cast<const int64_t*>(starts.data);
  a.n_taps = taps.dim(1);
  const std::string problem = fastspec::check_resample_args(a);
  if (!problem.empty()) return fastspec::fail(fn, problem), nullptr;
  Py_BEGIN_ALLOW_THREADS fastspec::resample_cpu(a);
  Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

PyObject* py_simd_lanes(PyObject*, PyObject*) { return PyLong_FromLong(fastspec::simd_lanes()); }

PyMethodDef methods[] = {
    {"logmel", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_logmel)),
     METH_VARARGS | METH_KEYWORDS,
     "Fused CPU log-mel (keyword arguments only; see fastspec/frontend/cpp_ops.py)."},
    {"resample", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_resample)),
     METH_VARARGS | METH_KEYWORDS,
     "Polyphase resampling (keyword arguments only; see fastspec/frontend/cpp_ops.py)."},
    {"simd_lanes", py_simd_lanes, METH_NOARGS, "Floats per SIMD vector compiled in."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module_def = {PyModuleDef_HEAD_INIT,
                          "_C",
                          "fastspec C++ extension: fused CPU log-mel front end.",
                          -1,
                          methods,
                          nullptr,
                          nullptr,
                          nullptr,
                          nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&module_def);
  if (module && PyModule_AddIntConstant(module, "API_VERSION", kApiVersion) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
