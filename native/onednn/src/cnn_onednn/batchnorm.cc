// oneDNN's batch normalisation for JAX on the CPU, as XLA FFI handlers: the
// training pass (statistics of the batch) and its gradient, on NHWC buffers
// as JAX holds them; scale, shift and the statistics are float32 vectors.
//
//   cnn_onednn_batchnorm_forward(x, scale, shift) -> (y, mean, variance)
//   cnn_onednn_batchnorm_backward(x, dy, scale, mean, variance) -> (dx, dscale, dshift)
//
// The variance is the biased one (divided by N*H*W), as flax's BatchNorm
// computes it. x and y (dx, dy) are float32 or bfloat16. Calls share the
// convolutions' lock (common.h): one at a time, each with every core.
#include <array>
#include <cstdint>
#include <map>
#include <mutex>

#include "common.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

using Key = std::array<int64_t, 6>;  // direction, n, h, w, c, type; epsilon is bound per call

struct Shape {
  int64_t n, h, w, c;
  memory::data_type type;
  float epsilon;
  memory::desc image() const {
    return memory::desc({n, c, h, w}, type, memory::format_tag::nhwc);
  }
  memory::desc vector() const {
    return memory::desc({c}, memory::data_type::f32, memory::format_tag::a);
  }
};

const dnnl::normalization_flags kFlags = dnnl::normalization_flags::use_scale |
                                          dnnl::normalization_flags::use_shift;

dnnl::batch_normalization_forward::primitive_desc forward_pd(const Shape& s) {
  return dnnl::batch_normalization_forward::primitive_desc(
      cnn_onednn::engine(), dnnl::prop_kind::forward_training, s.image(), s.image(),
      s.epsilon, kFlags, cnn_onednn::attributes());
}

struct Cached {
  dnnl::primitive primitive;
  memory::desc scratchpad;
};

const Cached& cached(const Shape& s, int64_t direction) {
  static std::map<std::pair<Key, float>, Cached> cache;  // guarded by the lock
  std::pair<Key, float> key{{direction, s.n, s.h, s.w, s.c, static_cast<int64_t>(s.type)},
                            s.epsilon};
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  Cached out;
  if (direction == 0) {
    auto pd = forward_pd(s);
    out = {dnnl::batch_normalization_forward(pd), pd.scratchpad_desc()};
  } else {
    auto pd = dnnl::batch_normalization_backward::primitive_desc(
        cnn_onednn::engine(), dnnl::prop_kind::backward, s.image(), s.image(), s.image(),
        s.epsilon, kFlags, forward_pd(s), cnn_onednn::attributes());
    out = {dnnl::batch_normalization_backward(pd), pd.scratchpad_desc()};
  }
  return cache.emplace(key, out).first->second;
}

ffi::Error shape_of(ffi::AnyBuffer x, float epsilon, Shape* s) {
  auto d = x.dimensions();
  if (d.size() != 4) return ffi::Error::InvalidArgument("cnn_onednn: expected an NHWC batch");
  memory::data_type type;
  if (!cnn_onednn::type_of(x.element_type(), &type)) {
    return ffi::Error::InvalidArgument("cnn_onednn: only float32 and bfloat16");
  }
  *s = Shape{d[0], d[1], d[2], d[3], type, epsilon};
  return ffi::Error::Success();
}

memory wrap(const memory::desc& desc, void* data) {
  return memory(desc, cnn_onednn::engine(), data);
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer shift,
                   ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> mean,
                   ffi::Result<ffi::AnyBuffer> variance, float epsilon) {
  Shape s;
  ffi::Error e = shape_of(x, epsilon, &s);
  if (e.failure()) return e;
  return cnn_onednn::locked([&](dnnl::stream& stream) {
    const Cached& p = cached(s, 0);
    p.primitive.execute(stream, {{DNNL_ARG_SRC, wrap(s.image(), x.untyped_data())},
                                 {DNNL_ARG_SCALE, wrap(s.vector(), scale.untyped_data())},
                                 {DNNL_ARG_SHIFT, wrap(s.vector(), shift.untyped_data())},
                                 {DNNL_ARG_DST, wrap(s.image(), y->untyped_data())},
                                 {DNNL_ARG_MEAN, wrap(s.vector(), mean->untyped_data())},
                                 {DNNL_ARG_VARIANCE, wrap(s.vector(), variance->untyped_data())},
                                 {DNNL_ARG_SCRATCHPAD, cnn_onednn::scratchpad(p.scratchpad)}});
  });
}

ffi::Error Backward(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::AnyBuffer scale,
                    ffi::AnyBuffer mean, ffi::AnyBuffer variance,
                    ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dscale,
                    ffi::Result<ffi::AnyBuffer> dshift, float epsilon) {
  Shape s;
  ffi::Error e = shape_of(x, epsilon, &s);
  if (e.failure()) return e;
  return cnn_onednn::locked([&](dnnl::stream& stream) {
    const Cached& p = cached(s, 1);
    p.primitive.execute(stream, {{DNNL_ARG_SRC, wrap(s.image(), x.untyped_data())},
                                 {DNNL_ARG_DIFF_DST, wrap(s.image(), dy.untyped_data())},
                                 {DNNL_ARG_SCALE, wrap(s.vector(), scale.untyped_data())},
                                 {DNNL_ARG_MEAN, wrap(s.vector(), mean.untyped_data())},
                                 {DNNL_ARG_VARIANCE, wrap(s.vector(), variance.untyped_data())},
                                 {DNNL_ARG_DIFF_SRC, wrap(s.image(), dx->untyped_data())},
                                 {DNNL_ARG_DIFF_SCALE, wrap(s.vector(), dscale->untyped_data())},
                                 {DNNL_ARG_DIFF_SHIFT, wrap(s.vector(), dshift->untyped_data())},
                                 {DNNL_ARG_SCRATCHPAD, cnn_onednn::scratchpad(p.scratchpad)}});
  });
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_onednn_batchnorm_forward, Forward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("epsilon"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_onednn_batchnorm_backward, Backward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<float>("epsilon"));
