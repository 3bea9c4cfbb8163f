// oneDNN's batch normalisation for JAX on the CPU, as XLA FFI handlers: the
// training pass (statistics of the batch) and its gradient, on NHWC buffers
// as JAX holds them; scale, shift and the statistics are float32 vectors.
//
//   cnn_onednn_batchnorm_forward(x, scale, shift) -> (y, mean, variance)
//   cnn_onednn_batchnorm_backward(x, dy, scale, mean, variance) -> (dx, dscale, dshift)
//   cnn_onednn_batchnorm_relu_forward(x, scale, shift) -> (y, mean, variance, mask)
//   cnn_onednn_batchnorm_relu_backward(x, dy, scale, mean, variance, mask)
//       -> (dx, dscale, dshift)
//
// The _relu pair is BatchNorm followed by a ReLU in one pass (oneDNN's
// fuse_norm_relu): y = max(0, bn(x)), and `mask`, oneDNN's workspace (which
// outputs were positive; a uint8 buffer of cnn_onednn_batchnorm_mask_bytes()),
// lets the gradient pass only those, as ReLU's gradient (0 at 0) does.
//
// The variance is the biased one (divided by N*H*W), as flax's BatchNorm
// computes it. x and y (dx, dy) are float32 or bfloat16. Calls share the
// convolutions' lock (common.h): one at a time, each with every core.
#include <array>
#include <cstdint>
#include <map>
#include <mutex>
#include <unordered_map>

#include "common.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

using Key = std::array<int64_t, 7>;  // direction, n, h, w, c, type, relu; and epsilon

struct Shape {
  int64_t n, h, w, c;
  memory::data_type type;
  float epsilon;
  bool relu;
  memory::desc image() const {
    return memory::desc({n, c, h, w}, type, memory::format_tag::nhwc);
  }
  memory::desc vector() const {
    return memory::desc({c}, memory::data_type::f32, memory::format_tag::a);
  }
};

dnnl::normalization_flags flags(const Shape& s) {
  auto f = dnnl::normalization_flags::use_scale | dnnl::normalization_flags::use_shift;
  return s.relu ? f | dnnl::normalization_flags::fuse_norm_relu : f;
}

dnnl::batch_normalization_forward::primitive_desc forward_pd(const Shape& s) {
  return dnnl::batch_normalization_forward::primitive_desc(
      cnn_onednn::engine(), dnnl::prop_kind::forward_training, s.image(), s.image(),
      s.epsilon, flags(s), cnn_onednn::attributes());
}

struct Cached {
  dnnl::primitive primitive;
  memory::desc scratchpad;
  memory::desc workspace;  // the ReLU's mask (empty without the ReLU)
};

const Cached& cached(const Shape& s, int64_t direction) {
  static std::map<std::pair<Key, float>, Cached> cache;  // guarded by the lock
  std::pair<Key, float> key{
      {direction, s.n, s.h, s.w, s.c, static_cast<int64_t>(s.type), s.relu}, s.epsilon};
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  Cached out;
  if (direction == 0) {
    auto pd = forward_pd(s);
    out = {dnnl::batch_normalization_forward(pd), pd.scratchpad_desc(), pd.workspace_desc()};
  } else {
    auto pd = dnnl::batch_normalization_backward::primitive_desc(
        cnn_onednn::engine(), dnnl::prop_kind::backward, s.image(), s.image(), s.image(),
        s.epsilon, flags(s), forward_pd(s), cnn_onednn::attributes());
    out = {dnnl::batch_normalization_backward(pd), pd.scratchpad_desc(), pd.workspace_desc()};
  }
  return cache.emplace(key, out).first->second;
}

ffi::Error shape_of(ffi::AnyBuffer x, float epsilon, bool relu, Shape* s) {
  auto d = x.dimensions();
  if (d.size() != 4) return ffi::Error::InvalidArgument("cnn_onednn: expected an NHWC batch");
  memory::data_type type;
  if (!cnn_onednn::type_of(x.element_type(), &type)) {
    return ffi::Error::InvalidArgument("cnn_onednn: only float32 and bfloat16");
  }
  *s = Shape{d[0], d[1], d[2], d[3], type, epsilon, relu};
  return ffi::Error::Success();
}

memory wrap(const memory::desc& desc, void* data) {
  return memory(desc, cnn_onednn::engine(), data);
}

// The mask buffer must hold the primitive's workspace (its size comes from
// cnn_onednn_batchnorm_mask_bytes, which asks the same primitive; checked anyway).
memory mask_memory(const Cached& p, void* mask, size_t bytes) {
  if (p.workspace.get_size() > bytes) {
    throw dnnl::error(dnnl_invalid_arguments, "the ReLU mask buffer is too small");
  }
  return wrap(p.workspace, mask);
}

ffi::Error forward(const Shape& s, void* x, void* scale, void* shift, void* y, void* mean,
                   void* variance, void* mask, size_t mask_bytes) {
  return cnn_onednn::locked([&](dnnl::stream& stream) {
    const Cached& p = cached(s, 0);
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, wrap(s.image(), x)},
        {DNNL_ARG_SCALE, wrap(s.vector(), scale)},
        {DNNL_ARG_SHIFT, wrap(s.vector(), shift)},
        {DNNL_ARG_DST, wrap(s.image(), y)},
        {DNNL_ARG_MEAN, wrap(s.vector(), mean)},
        {DNNL_ARG_VARIANCE, wrap(s.vector(), variance)},
        {DNNL_ARG_SCRATCHPAD, cnn_onednn::scratchpad(p.scratchpad)}};
    if (s.relu) args.emplace(DNNL_ARG_WORKSPACE, mask_memory(p, mask, mask_bytes));
    p.primitive.execute(stream, args);
  });
}

ffi::Error backward(const Shape& s, void* x, void* dy, void* scale, void* mean, void* variance,
                    void* mask, size_t mask_bytes, void* dx, void* dscale, void* dshift) {
  return cnn_onednn::locked([&](dnnl::stream& stream) {
    const Cached& p = cached(s, 1);
    std::unordered_map<int, memory> args{
        {DNNL_ARG_SRC, wrap(s.image(), x)},
        {DNNL_ARG_DIFF_DST, wrap(s.image(), dy)},
        {DNNL_ARG_SCALE, wrap(s.vector(), scale)},
        {DNNL_ARG_MEAN, wrap(s.vector(), mean)},
        {DNNL_ARG_VARIANCE, wrap(s.vector(), variance)},
        {DNNL_ARG_DIFF_SRC, wrap(s.image(), dx)},
        {DNNL_ARG_DIFF_SCALE, wrap(s.vector(), dscale)},
        {DNNL_ARG_DIFF_SHIFT, wrap(s.vector(), dshift)},
        {DNNL_ARG_SCRATCHPAD, cnn_onednn::scratchpad(p.scratchpad)}};
    if (s.relu) args.emplace(DNNL_ARG_WORKSPACE, mask_memory(p, mask, mask_bytes));
    p.primitive.execute(stream, args);
  });
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer shift,
                   ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> mean,
                   ffi::Result<ffi::AnyBuffer> variance, float epsilon) {
  Shape s;
  ffi::Error e = shape_of(x, epsilon, false, &s);
  if (e.failure()) return e;
  return forward(s, x.untyped_data(), scale.untyped_data(), shift.untyped_data(),
                 y->untyped_data(), mean->untyped_data(), variance->untyped_data(), nullptr, 0);
}

ffi::Error ReluForward(ffi::AnyBuffer x, ffi::AnyBuffer scale, ffi::AnyBuffer shift,
                       ffi::Result<ffi::AnyBuffer> y, ffi::Result<ffi::AnyBuffer> mean,
                       ffi::Result<ffi::AnyBuffer> variance, ffi::Result<ffi::AnyBuffer> mask,
                       float epsilon) {
  Shape s;
  ffi::Error e = shape_of(x, epsilon, true, &s);
  if (e.failure()) return e;
  return forward(s, x.untyped_data(), scale.untyped_data(), shift.untyped_data(),
                 y->untyped_data(), mean->untyped_data(), variance->untyped_data(),
                 mask->untyped_data(), mask->size_bytes());
}

ffi::Error Backward(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::AnyBuffer scale,
                    ffi::AnyBuffer mean, ffi::AnyBuffer variance,
                    ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dscale,
                    ffi::Result<ffi::AnyBuffer> dshift, float epsilon) {
  Shape s;
  ffi::Error e = shape_of(x, epsilon, false, &s);
  if (e.failure()) return e;
  return backward(s, x.untyped_data(), dy.untyped_data(), scale.untyped_data(),
                  mean.untyped_data(), variance.untyped_data(), nullptr, 0, dx->untyped_data(),
                  dscale->untyped_data(), dshift->untyped_data());
}

ffi::Error ReluBackward(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::AnyBuffer scale,
                        ffi::AnyBuffer mean, ffi::AnyBuffer variance, ffi::AnyBuffer mask,
                        ffi::Result<ffi::AnyBuffer> dx, ffi::Result<ffi::AnyBuffer> dscale,
                        ffi::Result<ffi::AnyBuffer> dshift, float epsilon) {
  Shape s;
  ffi::Error e = shape_of(x, epsilon, true, &s);
  if (e.failure()) return e;
  return backward(s, x.untyped_data(), dy.untyped_data(), scale.untyped_data(),
                  mean.untyped_data(), variance.untyped_data(), mask.untyped_data(),
                  mask.size_bytes(), dx->untyped_data(), dscale->untyped_data(),
                  dshift->untyped_data());
}

}  // namespace

// Bindings: the buffers in the order of the handlers' parameters, then epsilon.
#define CNN_ONEDNN_BUFFERS_3(kind) .kind<ffi::AnyBuffer>().kind<ffi::AnyBuffer>().kind<ffi::AnyBuffer>()
#define CNN_ONEDNN_BUFFERS_5(kind) \
  CNN_ONEDNN_BUFFERS_3(kind).kind<ffi::AnyBuffer>().kind<ffi::AnyBuffer>()

XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_onednn_batchnorm_forward, Forward,
                              ffi::Ffi::Bind() CNN_ONEDNN_BUFFERS_3(Arg)
                                  CNN_ONEDNN_BUFFERS_3(Ret).Attr<float>("epsilon"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_onednn_batchnorm_backward, Backward,
                              ffi::Ffi::Bind() CNN_ONEDNN_BUFFERS_5(Arg)
                                  CNN_ONEDNN_BUFFERS_3(Ret).Attr<float>("epsilon"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_onednn_batchnorm_relu_forward, ReluForward,
                              ffi::Ffi::Bind() CNN_ONEDNN_BUFFERS_3(Arg)
                                  CNN_ONEDNN_BUFFERS_3(Ret)
                                  .Ret<ffi::AnyBuffer>()  // the mask
                                  .Attr<float>("epsilon"));
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_onednn_batchnorm_relu_backward, ReluBackward,
                              ffi::Ffi::Bind() CNN_ONEDNN_BUFFERS_5(Arg)
                                  .Arg<ffi::AnyBuffer>()  // the mask
                                  CNN_ONEDNN_BUFFERS_3(Ret).Attr<float>("epsilon"));

// The bytes of the ReLU mask for an NHWC batch (bf16: 1, else float32), as the
// forward primitive asks for it: JAX allocates that buffer as a uint8 output.
extern "C" int64_t cnn_onednn_batchnorm_mask_bytes(int64_t n, int64_t h, int64_t w, int64_t c,
                                                   int bf16) {
  try {
    Shape s{n, h, w, c, bf16 ? memory::data_type::bf16 : memory::data_type::f32, 1e-5f, true};
    return static_cast<int64_t>(forward_pd(s).workspace_desc().get_size());
  } catch (const dnnl::error&) {
    return -1;
  }
}
