// What the convolution and batch-normalisation handlers share: the CPU
// engine, the primitive attributes, the dtype mapping, and `locked`, which runs
// a call's primitives one call at a time (XLA may start two handlers at once
// from its threads; each would start its own OpenMP team on the same cores, so
// each call gets every core instead) and turns oneDNN's errors into XLA's.
// Buffers kept between calls (scratchpad, reordered kernels) are only touched
// under the lock, so steady-state calls allocate nothing.
#ifndef CNN_ONEDNN_COMMON_H_
#define CNN_ONEDNN_COMMON_H_

#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace cnn_onednn {

inline dnnl::engine& engine() {
  static dnnl::engine e(dnnl::engine::kind::cpu, 0);
  return e;
}

inline dnnl::primitive_attr attributes() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

inline bool type_of(xla::ffi::DataType t, dnnl::memory::data_type* out) {
  if (t == xla::ffi::DataType::F32) {
    *out = dnnl::memory::data_type::f32;
  } else if (t == xla::ffi::DataType::BF16) {
    *out = dnnl::memory::data_type::bf16;
  } else {
    return false;
  }
  return true;
}

inline std::mutex& lock() {
  static std::mutex m;
  return m;
}

inline void* grown(std::vector<uint8_t>& buffer, size_t bytes) {
  if (buffer.size() < bytes) buffer.resize(bytes);
  return buffer.data();
}

// The scratchpad of the call in progress (under the lock).
inline dnnl::memory scratchpad(const dnnl::memory::desc& desc) {
  static std::vector<uint8_t> buffer;
  return dnnl::memory(desc, engine(), grown(buffer, desc.get_size()));
}

template <typename Body>
xla::ffi::Error locked(Body&& body) {
  std::lock_guard<std::mutex> guard(lock());
  try {
    dnnl::stream stream(engine());
    body(stream);
    stream.wait();
  } catch (const dnnl::error& e) {
    return xla::ffi::Error(xla::ffi::ErrorCode::kInternal, std::string("oneDNN: ") + e.what());
  }
  return xla::ffi::Error::Success();
}

}  // namespace cnn_onednn

#endif  // CNN_ONEDNN_COMMON_H_
