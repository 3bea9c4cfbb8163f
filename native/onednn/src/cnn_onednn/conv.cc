// oneDNN convolutions for JAX on the CPU, as XLA FFI handlers.
//
// Three handlers, one per product of a 2-D convolution on the buffers exactly
// as JAX holds them (activations NHWC, kernels HWIO, feature groups in HWIO's
// O axis, as lax.conv_general_dilated has them): no layout copy outside
// oneDNN. oneDNN may keep the kernel in a blocked layout of its own; it is
// reordered into and out of that (kernels are small) inside the call.
//
//   cnn_onednn_conv_forward(x, w) -> y
//   cnn_onednn_conv_input_grad(dy, w) -> dx
//   cnn_onednn_conv_kernel_grad(x, dy) -> dw
//
// Attributes: strides, the top/left padding (the bottom/right follow from the
// output's shape) and the feature groups. fp32 and bf16 (all buffers of one
// call in the same type). Primitives are cached by shape, type and direction;
// calls run one at a time, each with every core (common.h).
#include <array>
#include <cstdint>
#include <map>
#include <vector>

#include "common.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

enum Direction : int64_t { kForward = 0, kInputGrad = 1, kKernelGrad = 2 };

struct Geometry {
  int64_t n, h, w, c, o, kh, kw, oh, ow, sh, sw, pt, pl, groups;
  memory::data_type type;

  memory::dims padding_r() const {
    return {(oh - 1) * sh + kh - h - pt, (ow - 1) * sw + kw - w - pl};
  }
  std::array<int64_t, 16> key(Direction d) const {
    return {d, n, h, w, c, o, kh, kw, oh, ow, sh, sw, pt, pl, groups,
            static_cast<int64_t>(type)};
  }
  memory::desc image(int64_t channels, int64_t height, int64_t width) const {
    return memory::desc({n, channels, height, width}, type, memory::format_tag::nhwc);
  }
  memory::desc src() const { return image(c, h, w); }
  memory::desc dst() const { return image(o, oh, ow); }
  // The kernel as JAX holds it: HWIO, I = c / groups, O = all outputs, group g's
  // outputs at O in [g * o / groups, (g + 1) * o / groups).
  memory::desc user_kernel() const {
    const int64_t ig = c / groups, og = o / groups;
    if (groups == 1) {
      return memory::desc({o, c, kh, kw}, type, memory::format_tag::hwio);
    }
    return memory::desc({groups, og, ig, kh, kw}, type,
                        {og, 1, o, kw * ig * o, ig * o});
  }
  memory::desc any_kernel() const {
    const int64_t ig = c / groups, og = o / groups;
    if (groups == 1) return memory::desc({o, c, kh, kw}, type, memory::format_tag::any);
    return memory::desc({groups, og, ig, kh, kw}, type, memory::format_tag::any);
  }
};

struct Cached {
  dnnl::primitive primitive;
  memory::desc kernel;  // the layout the primitive wants its kernel in
  memory::desc scratchpad;
  dnnl::reorder kernel_reorder;  // between the user's and the primitive's layout
  bool reorder_kernel = false;
};

using cnn_onednn::attributes;
using cnn_onednn::engine;

dnnl::convolution_forward::primitive_desc forward_pd(const Geometry& g) {
  return dnnl::convolution_forward::primitive_desc(
      engine(), dnnl::prop_kind::forward_training, dnnl::algorithm::convolution_direct,
      g.src(), g.any_kernel(), g.dst(), {g.sh, g.sw}, {g.pt, g.pl}, g.padding_r(),
      attributes());
}

Cached build(const Geometry& g, Direction d) {
  Cached out;
  const memory::desc user = g.user_kernel();
  if (d == kForward) {
    auto pd = forward_pd(g);
    out.primitive = dnnl::convolution_forward(pd);
    out.kernel = pd.weights_desc();
    out.scratchpad = pd.scratchpad_desc();
  } else if (d == kInputGrad) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        engine(), dnnl::algorithm::convolution_direct, g.src(), g.any_kernel(), g.dst(),
        {g.sh, g.sw}, {g.pt, g.pl}, g.padding_r(), forward_pd(g), attributes());
    out.primitive = dnnl::convolution_backward_data(pd);
    out.kernel = pd.weights_desc();
    out.scratchpad = pd.scratchpad_desc();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        engine(), dnnl::algorithm::convolution_direct, g.src(), g.any_kernel(), g.dst(),
        {g.sh, g.sw}, {g.pt, g.pl}, g.padding_r(), forward_pd(g), attributes());
    out.primitive = dnnl::convolution_backward_weights(pd);
    out.kernel = pd.diff_weights_desc();
    out.scratchpad = pd.scratchpad_desc();
  }
  out.reorder_kernel = out.kernel != user;
  if (out.reorder_kernel) {
    out.kernel_reorder = d == kKernelGrad
        ? dnnl::reorder(dnnl::reorder::primitive_desc(engine(), out.kernel, engine(), user))
        : dnnl::reorder(dnnl::reorder::primitive_desc(engine(), user, engine(), out.kernel));
  }
  return out;
}

const Cached& cached(const Geometry& g, Direction d) {
  static std::map<std::array<int64_t, 16>, Cached> cache;  // guarded by the lock
  auto key = g.key(d);
  auto it = cache.find(key);
  if (it == cache.end()) it = cache.emplace(key, build(g, d)).first;
  return it->second;
}

ffi::Error run(Direction d, const Geometry& g, void* x, void* w, void* y) {
  // x, w, y: the direction's (src, kernel, dst), (diff_dst, kernel, diff_src)
  // or (src, diff_dst, diff_kernel).
  static std::vector<uint8_t> kernel_buffer;  // guarded by the lock
  return cnn_onednn::locked([&](dnnl::stream& stream) {
    const Cached& p = cached(g, d);
    memory user_kernel(g.user_kernel(), engine(), d == kKernelGrad ? y : w);
    memory kernel = user_kernel;
    if (p.reorder_kernel) {
      kernel = memory(p.kernel, engine(), cnn_onednn::grown(kernel_buffer, p.kernel.get_size()));
      if (d != kKernelGrad) p.kernel_reorder.execute(stream, user_kernel, kernel);
    }
    memory pad = cnn_onednn::scratchpad(p.scratchpad);
    if (d == kForward) {
      p.primitive.execute(stream, {{DNNL_ARG_SRC, memory(g.src(), engine(), x)},
                                   {DNNL_ARG_WEIGHTS, kernel},
                                   {DNNL_ARG_DST, memory(g.dst(), engine(), y)},
                                   {DNNL_ARG_SCRATCHPAD, pad}});
    } else if (d == kInputGrad) {
      p.primitive.execute(stream, {{DNNL_ARG_DIFF_DST, memory(g.dst(), engine(), x)},
                                   {DNNL_ARG_WEIGHTS, kernel},
                                   {DNNL_ARG_DIFF_SRC, memory(g.src(), engine(), y)},
                                   {DNNL_ARG_SCRATCHPAD, pad}});
    } else {
      p.primitive.execute(stream, {{DNNL_ARG_SRC, memory(g.src(), engine(), x)},
                                   {DNNL_ARG_DIFF_DST, memory(g.dst(), engine(), w)},
                                   {DNNL_ARG_DIFF_WEIGHTS, kernel},
                                   {DNNL_ARG_SCRATCHPAD, pad}});
      if (p.reorder_kernel) p.kernel_reorder.execute(stream, kernel, user_kernel);
    }
  });
}

// The geometry from the NHWC image (x or dx), the NHWC dy-shaped buffer and
// the HWIO kernel's spatial and input-channel sizes.
ffi::Error geometry(ffi::AnyBuffer::Dimensions image, ffi::AnyBuffer::Dimensions out,
                    ffi::AnyBuffer::Dimensions kernel, ffi::DataType t, int64_t sh, int64_t sw,
                    int64_t pt, int64_t pl, int64_t groups, Geometry* g) {
  if (image.size() != 4 || out.size() != 4 || kernel.size() != 4) {
    return ffi::Error::InvalidArgument("cnn_onednn: expected NHWC images and an HWIO kernel");
  }
  if (!cnn_onednn::type_of(t, &g->type)) {
    return ffi::Error::InvalidArgument("cnn_onednn: only float32 and bfloat16");
  }
  *g = Geometry{image[0], image[1], image[2], image[3], out[3], kernel[0], kernel[1],
                out[1], out[2], sh, sw, pt, pl, groups, g->type};
  if (kernel[2] * groups != g->c || g->o % groups != 0) {
    return ffi::Error::InvalidArgument("cnn_onednn: inconsistent convolution shapes");
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y,
                   int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t groups) {
  Geometry g;
  ffi::Error e = geometry(x.dimensions(), y->dimensions(), w.dimensions(), x.element_type(), sh,
                          sw, pt, pl, groups, &g);
  if (e.failure()) return e;
  return run(kForward, g, x.untyped_data(), w.untyped_data(), y->untyped_data());
}

ffi::Error InputGrad(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                     int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t groups) {
  Geometry g;
  ffi::Error e = geometry(dx->dimensions(), dy.dimensions(), w.dimensions(), dy.element_type(),
                          sh, sw, pt, pl, groups, &g);
  if (e.failure()) return e;
  return run(kInputGrad, g, dy.untyped_data(), w.untyped_data(), dx->untyped_data());
}

ffi::Error KernelGrad(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                      int64_t sh, int64_t sw, int64_t pt, int64_t pl, int64_t groups) {
  Geometry g;
  ffi::Error e = geometry(x.dimensions(), dy.dimensions(), dw->dimensions(), x.element_type(),
                          sh, sw, pt, pl, groups, &g);
  if (e.failure()) return e;
  return run(kKernelGrad, g, x.untyped_data(), dy.untyped_data(), dw->untyped_data());
}

}  // namespace

#define CNN_ONEDNN_BINDING                                                         \
  ffi::Ffi::Bind()                                                                 \
      .Arg<ffi::AnyBuffer>()                                                       \
      .Arg<ffi::AnyBuffer>()                                                       \
      .Ret<ffi::AnyBuffer>()                                                       \
      .Attr<int64_t>("stride_h")                                                   \
      .Attr<int64_t>("stride_w")                                                   \
      .Attr<int64_t>("pad_top")                                                    \
      .Attr<int64_t>("pad_left")                                                   \
      .Attr<int64_t>("groups")

XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_onednn_conv_forward, Forward, CNN_ONEDNN_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_onednn_conv_input_grad, InputGrad, CNN_ONEDNN_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(cnn_onednn_conv_kernel_grad, KernelGrad, CNN_ONEDNN_BINDING);

extern "C" int cnn_onednn_version() { return DNNL_VERSION_MAJOR * 100 + DNNL_VERSION_MINOR; }
