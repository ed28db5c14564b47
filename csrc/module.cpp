// Python binding of fastspec._C. Only the CPython C API: no torch or pybind11 headers, so the
// module compiles in seconds on first use and does not depend on torch's C++ ABI. The Python
// side (fastspec/frontend/cpp.py) validates tensors, names the argument and its shape in every
// error, and passes raw data pointers; this layer re-checks what the C++ relies on
// (check_logmel_args) and turns problems into ValueError.
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <string>
#include <vector>

#include "logmel_cpu.h"
#include "resample_cpu.h"

namespace {

// Bumped whenever the keyword interface changes: the loader refuses a stale cached build.
constexpr int kApiVersion = 2;

PyObject* py_logmel(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {
      "wave",       "wave_dtype", "batch",      "num_samples", "stride_b",   "lengths",
      "out",        "out_dtype",  "n_frames",   "window",      "frame_len",  "n_fft",
      "hop",        "center",     "reflect",    "remove_dc",   "preemph",    "power_one",
      "n_mels",     "mel_start",  "mel_offset", "mel_weight",  "log_floor",  "log_mult",
      "has_top_db", "top_db",     "norm_mul",   "norm_add",    "check_finite", "n_threads",
      nullptr};
  fastspec::LogmelArgs a;
  unsigned long long wave = 0, lengths = 0, out = 0, window = 0, mel_start = 0, mel_offset = 0,
                     mel_weight = 0;
  long long batch = 0, num_samples = 0, stride_b = 0, n_frames = 0, frame_len = 0, n_fft = 0,
            hop = 0, n_mels = 0;
  int center = 0, reflect = 0, remove_dc = 0, power_one = 0, has_top_db = 0, check_finite = 1;
  if (!PyArg_ParseTupleAndKeywords(
          args, kwargs, "$KiLLLKKiLKLLLpppfpLKKKffpfffpi", const_cast<char**>(keywords), &wave,
          &a.wave_dtype, &batch, &num_samples, &stride_b, &lengths, &out, &a.out_dtype, &n_frames,
          &window, &frame_len, &n_fft, &hop, &center, &reflect, &remove_dc, &a.preemph,
          &power_one, &n_mels, &mel_start, &mel_offset, &mel_weight, &a.log_floor, &a.log_mult,
          &has_top_db, &a.top_db, &a.norm_mul, &a.norm_add, &check_finite, &a.n_threads)) {
    return nullptr;
  }
  a.wave = reinterpret_cast<const void*>(wave);
  a.batch = batch;
  a.num_samples = num_samples;
  a.stride_b = stride_b;
  a.lengths = reinterpret_cast<const int64_t*>(lengths);
  a.out = reinterpret_cast<void*>(out);
  a.n_frames = n_frames;
  a.window = reinterpret_cast<const float*>(window);
  a.frame_len = frame_len;
  a.n_fft = n_fft;
  a.hop = hop;
  a.center = center;
  a.reflect = reflect;
  a.remove_dc = remove_dc;
  a.power_one = power_one;
  a.n_mels = n_mels;
  a.mel_start = reinterpret_cast<const int32_t*>(mel_start);
  a.mel_offset = reinterpret_cast<const int32_t*>(mel_offset);
  a.mel_weight = reinterpret_cast<const float*>(mel_weight);
  a.has_top_db = has_top_db;
  a.check_finite = check_finite;
  // empty tensors may have null data: only pointers that will be dereferenced must be set
  if (batch > 0 && (!lengths || (num_samples > 0 && !wave) || (n_frames > 0 && !out))) {
    PyErr_SetString(PyExc_ValueError, "logmel: wave, lengths and out must be non-null pointers");
    return nullptr;
  }
  if (!window || !mel_start || !mel_offset || !mel_weight) {
    PyErr_SetString(PyExc_ValueError, "logmel: window and the mel arrays must be non-null");
    return nullptr;
  }
  const std::string problem = fastspec::check_logmel_args(a);
  if (!problem.empty()) {
    PyErr_SetString(PyExc_ValueError, ("logmel: " + problem).c_str());
    return nullptr;
  }
  std::vector<int64_t> bad(static_cast<size_t>(batch > 0 ? batch : 1));
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
  static const char* keywords[] = {"wave",   "wave_dtype", "batch", "num_samples", "stride_b",
                                   "lengths", "out",       "out_len", "taps",      "starts",
                                   "up",     "down",       "n_taps", "n_threads",  nullptr};
  fastspec::ResampleArgs a;
  unsigned long long wave = 0, lengths = 0, out = 0, taps = 0, starts = 0;
  long long batch = 0, num_samples = 0, stride_b = 0, out_len = 0, up = 1, down = 1, n_taps = 0;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "$KiLLLKKLKKLLLi", const_cast<char**>(keywords),
                                   &wave, &a.wave_dtype, &batch, &num_samples, &stride_b, &lengths,
                                   &out, &out_len, &taps, &starts, &up, &down, &n_taps,
                                   &a.n_threads)) {
    return nullptr;
  }
  a.wave = reinterpret_cast<const void*>(wave);
  a.batch = batch;
  a.num_samples = num_samples;
  a.stride_b = stride_b;
  a.lengths = reinterpret_cast<const int64_t*>(lengths);
  a.out = reinterpret_cast<float*>(out);
  a.out_len = out_len;
  a.taps = reinterpret_cast<const float*>(taps);
  a.starts = reinterpret_cast<const int64_t*>(starts);
  a.up = up;
  a.down = down;
  a.n_taps = n_taps;
  if (!taps || !starts ||
      (batch > 0 && (!lengths || (num_samples > 0 && !wave) || (out_len > 0 && !out)))) {
    PyErr_SetString(PyExc_ValueError, "resample: a required pointer is null");
    return nullptr;
  }
  const std::string problem = fastspec::check_resample_args(a);
  if (!problem.empty()) {
    PyErr_SetString(PyExc_ValueError, ("resample: " + problem).c_str());
    return nullptr;
  }
  Py_BEGIN_ALLOW_THREADS fastspec::resample_cpu(a);
  Py_END_ALLOW_THREADS Py_RETURN_NONE;
}

PyObject* py_simd_lanes(PyObject*, PyObject*) { return PyLong_FromLong(fastspec::simd_lanes()); }

PyMethodDef methods[] = {
    {"logmel", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_logmel)),
     METH_VARARGS | METH_KEYWORDS,
     "Fused CPU log-mel (keyword arguments only; see fastspec/frontend/cpp.py)."},
    {"resample", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(py_resample)),
     METH_VARARGS | METH_KEYWORDS,
     "Polyphase resampling (keyword arguments only; see fastspec/frontend/cpp.py)."},
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
