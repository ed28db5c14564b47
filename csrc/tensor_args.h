// Tensor arguments at the Python boundary of fastspec._C (used by module.cpp only).
//
// Each tensor arrives as a Python object and is read through the DLPack protocol (its
// __dlpack__ method: torch tensors, numpy arrays, ...), so the C++ sees the device, dtype, shape
// and strides of what it was handed and checks them before touching memory, in the manner of
// flash-attention's CHECK_DEVICE / CHECK_SHAPE / CHECK_CONTIGUOUS. A failed check sets a
// ValueError that names the function, the argument, what it must be and what it is, e.g.
//
//   logmel: out must have shape [B, T, n_mels] = [2, 97, 128], got [2, 97, 64]
//
// and returns false; the binding then returns nullptr to Python. No torch headers: the build
// stays a ~2 s compile of plain C++ and independent of torch's C++ ABI.
#pragma once

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <cstdint>
#include <initializer_list>
#include <string>
#include <vector>

namespace fastspec {

// The DLPack ABI (unversioned capsules named "dltensor"), declared from the specification.
struct DLDevice {
  int32_t device_type;  // 1 = CPU
  int32_t device_id;
};
struct DLDataType {
  uint8_t code;  // 0 int, 1 uint, 2 float, 4 bfloat, 6 bool
  uint8_t bits;
  uint16_t lanes;
};
struct DLTensor {
  void* data;
  DLDevice device;
  int32_t ndim;
  DLDataType dtype;
  int64_t* shape;
  int64_t* strides;  // in elements; null means contiguous
  uint64_t byte_offset;
};
struct DLManagedTensor {
  DLTensor dl_tensor;
  void* manager_ctx;
  void (*deleter)(DLManagedTensor*);
};

// The dtypes the extension reads or writes.
enum class Dtype { kF32, kF64, kBF16, kI16, kI32, kI64, kOther };

// What the binding keeps of one tensor argument. `data` stays valid for the call: the tensor is
// referenced by the call's arguments until the binding returns.
struct TensorArg {
  const char* fn = "";
  const char* name = "";
  void* data = nullptr;
  Dtype dtype = Dtype::kOther;
  std::string dtype_name;
  std::vector<int64_t> shape, strides;

  int64_t dim(size_t i) const { return shape[i]; }
  int64_t numel() const {
    int64_t n = 1;
    for (int64_t s : shape) n *= s;
    return n;
  }
};

inline std::string join_dims(const std::vector<int64_t>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) {
    s += (i ? ", " : "") + (dims[i] < 0 ? std::string("*") : std::to_string(dims[i]));
  }
  return s + "]";
}

// Sets ValueError("fn: message") and returns false, so checks read `if (!ok) return fail(...)`.
inline bool fail(const char* fn, const std::string& message) {
  PyErr_SetString(PyExc_ValueError, (std::string(fn) + ": " + message).c_str());
  return false;
}

inline Dtype dtype_of(DLDataType t, std::string* name) {
  if (t.lanes != 1) {
    *name = "a vector dtype";
    return Dtype::kOther;
  }
  const std::string bits = std::to_string(t.bits);
  switch (t.code) {
    case 2:
      *name = "float" + bits;
      return t.bits == 32 ? Dtype::kF32 : t.bits == 64 ? Dtype::kF64 : Dtype::kOther;
    case 4:
      *name = "bfloat" + bits;
      return t.bits == 16 ? Dtype::kBF16 : Dtype::kOther;
    case 0:
      *name = "int" + bits;
      if (t.bits == 16) return Dtype::kI16;
      return t.bits == 32 ? Dtype::kI32 : t.bits == 64 ? Dtype::kI64 : Dtype::kOther;
    case 1:
      *name = "uint" + bits;
      return Dtype::kOther;
    case 6:
      *name = "bool";
      return Dtype::kOther;
    default:
      *name = "dtype code " + std::to_string(t.code);
      return Dtype::kOther;
  }
}

// Reads `obj` through __dlpack__ into *out; checks that it is a CPU tensor.
inline bool read_tensor(const char* fn, const char* name, PyObject* obj, TensorArg* out) {
  out->fn = fn;
  out->name = name;
  if (obj == nullptr || !PyObject_HasAttrString(obj, "__dlpack__")) {
    return fail(fn, std::string(name) + " must be a tensor (an object with __dlpack__), got " +
                        (obj ? Py_TYPE(obj)->tp_name : "nothing"));
  }
  PyObject* capsule = PyObject_CallMethod(obj, "__dlpack__", nullptr);
  if (capsule == nullptr) {
    // e.g. a tensor that requires grad, or one on the meta device: say which argument
    PyObject *type, *value, *trace;
    PyErr_Fetch(&type, &value, &trace);
    PyObject* text = value ? PyObject_Str(value) : nullptr;
    const char* why = text ? PyUnicode_AsUTF8(text) : nullptr;
    std::string message = std::string(name) + " cannot be read: " + (why ? why : "unknown");
    Py_XDECREF(text);
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(trace);
    PyErr_Clear();
    return fail(fn, message);
  }
  auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(capsule, "dltensor"));
  if (managed == nullptr) {
    Py_DECREF(capsule);
    PyErr_Clear();
    return fail(fn, std::string(name) + ": __dlpack__ did not return a DLPack capsule");
  }
  const DLTensor& t = managed->dl_tensor;
  const DLDevice device = t.device;
  out->data = static_cast<char*>(t.data) + t.byte_offset;
  out->dtype = dtype_of(t.dtype, &out->dtype_name);
  out->shape.assign(t.shape, t.shape + t.ndim);
  if (t.strides != nullptr) {
    out->strides.assign(t.strides, t.strides + t.ndim);
  } else {
    out->strides.assign(t.ndim, 1);
    for (int i = t.ndim - 2; i >= 0; --i) out->strides[i] = out->strides[i + 1] * t.shape[i + 1];
  }
  // not consumed: the capsule's destructor calls the deleter, the tensor itself lives on
  Py_DECREF(capsule);
  if (device.device_type != 1) {
    const std::string where = device.device_type == 2 ? "cuda:" + std::to_string(device.device_id)
                                                       : "device type " +
                                                             std::to_string(device.device_type);
    return fail(fn, std::string(name) + " must be a CPU tensor, got one on " + where);
  }
  return true;
}

inline bool check_dtype(const TensorArg& t, std::initializer_list<Dtype> allowed,
                        const char* need) {
  for (Dtype d : allowed) {
    if (t.dtype == d) return true;
  }
  return fail(t.fn, std::string(t.name) + " must be " + need + ", got " + t.dtype_name);
}

// `dims`: the expected size of each dimension, -1 for any; `names` spells them, e.g. "[B, S]".
inline bool check_shape(const TensorArg& t, std::initializer_list<int64_t> dims,
                        const char* names) {
  const std::vector<int64_t> want(dims);
  bool ok = t.shape.size() == want.size();
  for (size_t i = 0; ok && i < want.size(); ++i) ok = want[i] < 0 || t.shape[i] == want[i];
  if (ok) return true;
  return fail(t.fn, std::string(t.name) + " must have shape " + names + " = " + join_dims(want) +
                        ", got " + join_dims(t.shape));
}

// Row-major without gaps (dimensions of size 1, and empty tensors, may have any strides).
inline bool check_contiguous(const TensorArg& t) {
  if (t.numel() == 0) return true;
  int64_t expected = 1;
  for (size_t i = t.shape.size(); i-- > 0;) {
    if (t.shape[i] != 1 && t.strides[i] != expected) {
      return fail(t.fn, std::string(t.name) + " must be contiguous, got strides " +
                            join_dims(t.strides) + " for shape " + join_dims(t.shape));
    }
    expected *= t.shape[i];
  }
  return true;
}

// A batch of clips [B, S]: samples of a clip adjacent, clips not overlapping (an expanded batch
// has row stride 0, which would make the clips alias each other).
inline bool check_rows(const TensorArg& t) {
  const int64_t batch = t.shape[0], samples = t.shape[1];
  const bool samples_ok = samples <= 1 || t.strides[1] == 1;
  const bool rows_ok = batch <= 1 || t.strides[0] >= samples;
  if (samples_ok && rows_ok) return true;
  return fail(t.fn, std::string(t.name) + " must have contiguous, non-overlapping rows, got "
                                          "strides " +
                        join_dims(t.strides) + " for shape " + join_dims(t.shape));
}

}  // namespace fastspec
