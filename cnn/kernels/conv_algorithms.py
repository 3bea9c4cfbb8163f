"""Per-layer convolution algorithms for the CPU backend.

XLA:CPU's convolution is fast at most CIFAR shapes but pathological at some:
a 3x3 convolution on a 2x2x512 input (VGG-16's last stage) takes seconds
where a matmul formulation takes tens of milliseconds, and the kernel
gradient of a 16x16x128 layer is 3x slower than a sum of per-tap matmuls
(benchmarks/conv_shapes.py measures every conv shape of every registered
model; benchmarks/README.md has the table).

`PlannedConv` here is a drop-in for `lax.conv_general_dilated` (flax's
`nn.Conv(conv_general_dilated=...)`, which `model_fn.build` hands a model
as `layers.Conv(compute=...)` on the CPU backend only). It computes the
forward pass, the input gradient and the kernel gradient each with the
algorithm that `choose` names for the layer's shape, through a `custom_vjp`.
`choose` is a deterministic rule on the shape (no timing at run time), so a
seeded run gives the same numbers every time; its thresholds come from the
measured table, and tests/test_conv_algorithms.py checks the rule against it.
For shapes the alternatives do not cover (dilated, batch-grouped,
non-NHWC), it is `lax.conv_general_dilated` itself.

The algorithms (x: N,H,W,C input, w: kh,kw,C,O kernel, the `kh*kw` "taps"):
- "xla": XLA's own convolution (and its transpose rules for the gradients).
- "im2col": one matmul of the patches (N,Ho,Wo,kh*kw*C) with the kernel;
  the kernel gradient is patches^T @ dy.
- "taps": one matmul per tap on a strided slice of the padded input, summed:
  no patch tensor; the input gradient multiplies dy by each tap's kernel and
  adds the results into the padded input's shape (col2im without the cols).
  Grouped and depthwise convolutions (feature groups) make each tap's
  product a matmul batched over the groups.
- "split" (grouped convolutions only): one plain convolution per group, on
  that group's slice of the input channels, kernel and output channels,
  concatenated; each group's products use the algorithms `choose` names for
  the per-group plain shape (XLA for most 3x3 layers).
- "onednn": oneDNN's convolution, forward and both gradients, through XLA's
  FFI (cnn/kernels/onednn.py; built from native/onednn by pip on x86_64
  Linux): the library PyTorch's CPU convolutions use, on the NHWC/HWIO
  buffers as they are. Where it is installed and JAX has one CPU device,
  `PlannedConv(onednn=True)` picks it (`choose(..., onednn=True)`);
  elsewhere the built-in rule.
"""
import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
from jax import lax

from cnn.kernels import onednn

ALGORITHMS = ("xla", "im2col", "taps", "split", "onednn")
class ConvShape(NamedTuple):
  """What the rule looks at: one layer's shape (the batch size is not used)."""
  height: int  # of the input, before padding
  width: int
  in_channels: int
  out_channels: int
  kernel: tuple[int, int]
  strides: tuple[int, int]
  groups: int = 1  # feature_group_count: in_channels (depthwise), or ResNeXt's cardinality


class Plan(NamedTuple):
  forward: str
  input_grad: str
  kernel_grad: str


XLA_PLAN = Plan("xla", "xla", "xla")
ONEDNN_PLAN = Plan("onednn", "onednn", "onednn")


def candidates(shape: ConvShape, with_onednn: bool | None = None) -> tuple[str, ...]:
  """The algorithms that apply to a layer: im2col has no grouped form, and
  "split" is for grouped layers that are not depthwise (one convolution per
  channel would be thousands of calls); "onednn" if `with_onednn` (default:
  where it is available)."""
  if with_onednn is None:
    with_onednn = onednn.available()
  extra = ("onednn",) if with_onednn else ()
  if shape.groups == 1:
    return ("xla", "im2col", "taps") + extra
  if shape.groups == shape.in_channels:
    return ("xla", "taps") + extra
  return ("xla", "taps", "split") + extra


def choose(shape: ConvShape, onednn: bool = False) -> Plan:
  """The algorithm for each of the three products of one layer.

  With `onednn` (installed, one CPU device): oneDNN for all three products of
  every shape, grouped and depthwise ones included (benchmarks/conv_shapes.py
  times it beside the others on every shape: benchmarks/README.md).
  Without it, the built-in rule:

  Derived from benchmarks/conv_shapes.py on the 2-core CPU (table in
  benchmarks/README.md; batch 128, fp32). XLA stays wherever it is the
  fastest or within noise of it, which is most 3x3 layers; the exceptions:
  - 1x1 kernels are matmuls: "taps" (one tap, the input itself) runs them
    1.5-3x faster than XLA's convolution (up to 7x for wide ones); for
    kernel gradients on inputs under 12x12, or with 256+ input channels,
    one plain matmul ("im2col") beats batched ones.
  - Inputs of 2x2 or smaller (VGG's last stage, 1x1 after MNIST's pools):
    XLA's forward and input gradient take seconds, "im2col" tens of ms.
  - Stems with 1-4 input channels: one channel is 9 rank-1 products
    ("taps"), a few channels one small im2col matmul; up to 15x faster.
  - Strided layers: the input gradient by "taps" (XLA dilates dy with zeros
    and convolves the lot), 1.5-2x faster; the kernel gradient too under 128
    input channels and by "im2col" from there (2x faster: WRN's wide
    downsampling layers), as is the forward pass from 256 input channels.
  - Kernel gradients on inputs of 12x12 and up with 16+ input and 64+
    output channels (48+ on 32x32): "taps" (batched matmuls per tap)
    1.1-2x faster; XLA's transposes the whole input. (With few output
    channels, DenseNet's 12, XLA's wins.) With 16 input and 128+ output
    channels (WRN's first widening layer) the input gradient by "im2col".
  - Grouped convolutions (ResNeXt's cardinality): "split", one plain
    convolution per group, for all three. XLA:CPU's grouped convolution is
    its slowest path (seconds per call on ResNeXt-29's 2048-channel layers,
    its kernel gradient 10-50x slower than the alternatives), and batched
    per-tap matmuls are 3-7x slower than the per-group plain convolutions
    (at batch 128, and 2-5x at ResNeXt-29's micro-batches of 16).
  - Depthwise convolutions (MobileNet): "taps" for all three; XLA's are
    10-40x slower.
  """
  if onednn:
    return ONEDNN_PLAN
  kh, kw = shape.kernel
  spatial = shape.height * shape.width
  channels = shape.in_channels
  if shape.groups > 1:
    depthwise = shape.groups == channels
    return Plan("taps", "taps", "taps") if depthwise else Plan("split", "split", "split")
  if (kh, kw) == (1, 1):  # one tap: a matmul on the (strided) input
    batched = spatial >= 144 and channels < 256
    return Plan("taps", "taps", "taps" if batched else "im2col")
  forward = input_grad = kernel_grad = "xla"
  if spatial <= 4:
    forward = input_grad = "im2col"
  if channels == 1:
    forward, input_grad, kernel_grad = "taps", "im2col", "taps"
  elif channels <= 4:
    forward, input_grad, kernel_grad = "im2col", "im2col", "taps"
  out = shape.out_channels
  if spatial >= 144 and channels >= 16 and (out >= 64 or (out >= 48 and spatial >= 1024)):
    kernel_grad = "taps"
  if spatial >= 144 and channels <= 16 and out >= 128:  # WRN's first widening layer
    input_grad = "im2col"
  if tuple(shape.strides) != (1, 1):
    input_grad = "taps"
    kernel_grad = "taps" if channels < 128 else "im2col"
    if channels >= 256:  # wide strided layers (WRN-28-10, WRN-16-8): one big matmul
      forward = "im2col"
  return Plan(forward, input_grad, kernel_grad)


def _pads(shape: ConvShape, padding) -> tuple[tuple[int, int], tuple[int, int]]:
  if isinstance(padding, str):
    return tuple(lax.padtype_to_pads((shape.height, shape.width), shape.kernel,
                                     shape.strides, padding))
  return tuple(tuple(p) for p in padding)


def _out_size(size: int, k: int, s: int, pad: tuple[int, int]) -> int:
  return (size + pad[0] + pad[1] - k) // s + 1


def _tap_slices(xp: jnp.ndarray, kernel, strides, out_hw):
  """The strided slice of the padded input that each tap multiplies."""
  (kh, kw), (sh, sw), (ho, wo) = kernel, strides, out_hw
  for i in range(kh):
    for j in range(kw):
      yield i, j, lax.slice(xp, (0, i, j, 0),
                            (xp.shape[0], i + sh * (ho - 1) + 1, j + sw * (wo - 1) + 1,
                             xp.shape[3]), (1, sh, sw, 1))


def _pad_input(x, pads):
  return jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))


def _matmul(a, b, spec, dtype):
  return jnp.einsum(spec, a, b, preferred_element_type=jnp.float32).astype(dtype)


def _grouped(t, groups):
  """(..., C) -> (..., groups, C // groups): channel c is in group c // (C // groups)."""
  return t.reshape(*t.shape[:-1], groups, t.shape[-1] // groups)


def _tap_product(a, w_tap, groups, transposed=False):
  """One tap's product with its kernel (C/groups, O): an input slice
  (N,Ho,Wo,C) -> (N,Ho,Wo,O), or, `transposed`, dy (N,Ho,Wo,O) -> (N,Ho,Wo,C).
  With feature groups, a matmul batched over the groups."""
  spec = "nhwgo,cgo->nhwgc" if transposed else "nhwgc,cgo->nhwgo"
  if groups == 1:
    return jnp.einsum(spec.replace("g", ""), a, w_tap, preferred_element_type=jnp.float32)
  y = jnp.einsum(spec, _grouped(a, groups), _grouped(w_tap, groups),
                 preferred_element_type=jnp.float32)
  return y.reshape(*y.shape[:3], -1)


def _group_plan(x, w, strides, groups) -> Plan:
  """The plan for one group of a grouped layer: `choose` on its plain shape."""
  _, h, wd, _ = x.shape
  kh, kw, group_channels, o = w.shape
  return choose(ConvShape(h, wd, group_channels, o // groups, (kh, kw), tuple(strides)))


def _per_group(product, groups, *tensors):
  """`product(x_i, w_i[, dy_i])` for each group i (its slice of the input
  channels, the kernel's output channels and dy's), concatenated over the
  last axis of the results."""
  parts = zip(*(jnp.split(t, groups, axis=-1) for t in tensors))
  return jnp.concatenate([product(*part) for part in parts], -1)


def _forward(algorithm, x, w, strides, pads, out_hw, groups=1):
  if algorithm == "split":
    plan = _group_plan(x, w, strides, groups)
    return _per_group(lambda xi, wi: _forward(plan.forward, xi, wi, strides, pads, out_hw),
                      groups, x, w)
  if algorithm == "xla":
    return lax.conv_general_dilated(x, w, strides, pads,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=groups)
  if algorithm == "onednn":
    return onednn.forward(x, w, strides, pads, out_hw, groups)
  xp = _pad_input(x, pads)
  kh, kw = w.shape[:2]
  if algorithm == "im2col":
    cols = jnp.concatenate([s for _, _, s in _tap_slices(xp, (kh, kw), strides, out_hw)], -1)
    return _matmul(cols, w.reshape(-1, w.shape[-1]), "nhwk,ko->nhwo", x.dtype)
  total = None
  for i, j, s in _tap_slices(xp, (kh, kw), strides, out_hw):
    y = _tap_product(s, w[i, j], groups)
    total = y if total is None else total + y
  return total.astype(x.dtype)


def _input_grad(algorithm, x, w, g, strides, pads, out_hw, groups=1):
  if algorithm == "split":
    plan = _group_plan(x, w, strides, groups)
    return _per_group(lambda xi, wi, gi: _input_grad(plan.input_grad, xi, wi, gi, strides, pads,
                                                     out_hw), groups, x, w, g)
  if algorithm == "xla":
    _, vjp = jax.vjp(lambda t: _forward("xla", t, w, strides, pads, out_hw, groups), x)
    return vjp(g)[0]
  if algorithm == "onednn":
    return onednn.input_grad(x, w, g, strides, pads, groups)
  kh, kw = w.shape[:2]
  n, h, wd, c = x.shape
  hp, wp = h + pads[0][0] + pads[0][1], wd + pads[1][0] + pads[1][1]
  (sh, sw), (ho, wo) = strides, out_hw
  zero = jnp.zeros((), jnp.float32)
  total = jnp.zeros((n, hp, wp, c), jnp.float32)
  if algorithm == "im2col":
    cols = jnp.einsum("nhwo,ko->nhwk", g, w.reshape(-1, w.shape[-1]),
                      preferred_element_type=jnp.float32).reshape(n, ho, wo, kh * kw, c)
    taps = ((i, j, cols[..., i * kw + j, :]) for i in range(kh) for j in range(kw))
  else:
    taps = ((i, j, _tap_product(g, w[i, j], groups, transposed=True))
            for i in range(kh) for j in range(kw))
  for i, j, t in taps:  # place tap (i, j)'s contribution where its slice came from
    config = ((0, 0, 0), (i, hp - i - sh * (ho - 1) - 1, sh - 1),
              (j, wp - j - sw * (wo - 1) - 1, sw - 1), (0, 0, 0))
    total = total + lax.pad(t, zero, config)
  return total[:, pads[0][0]:pads[0][0] + h, pads[1][0]:pads[1][0] + wd].astype(x.dtype)


def _kernel_grad(algorithm, x, w, g, strides, pads, out_hw, groups=1):
  if algorithm == "split":  # group i's kernel is w[..., i * O/groups:(i + 1) * O/groups]
    plan = _group_plan(x, w, strides, groups)
    return _per_group(lambda xi, wi, gi: _kernel_grad(plan.kernel_grad, xi, wi, gi, strides,
                                                      pads, out_hw), groups, x, w, g)
  if algorithm == "xla":
    _, vjp = jax.vjp(lambda t: _forward("xla", x, t, strides, pads, out_hw, groups), w)
    return vjp(g)[0]
  if algorithm == "onednn":
    return onednn.kernel_grad(x, w, g, strides, pads, groups)
  xp = _pad_input(x, pads)
  kh, kw = w.shape[:2]
  slices = list(_tap_slices(xp, (kh, kw), strides, out_hw))
  if algorithm == "im2col":
    cols = jnp.concatenate([s for _, _, s in slices], -1)
    return _matmul(cols, g, "nhwk,nhwo->ko", w.dtype).reshape(w.shape)
  # "taps": batched matmuls over groups of examples, summed: on XLA:CPU they
  # parallelise far better than one matmul contracting over N*H*W. Groups
  # are as many as keep the per-group results under 2M floats (at small
  # spatial sizes one result per example would be mostly memory traffic).
  if w.shape[2] == 1 and groups > 1:  # depthwise: products per channel, summed over N,H,W
    dy = _grouped(g, groups).astype(jnp.float32)
    return jnp.stack([jnp.sum(s.astype(jnp.float32)[..., None] * dy, axis=(0, 1, 2))
                      for _, _, s in slices]).reshape(w.shape).astype(w.dtype)
  # With feature groups, each group's (C/groups, O/groups) block is one more
  # batch dimension of the same matmuls.
  parts = _batch_groups(x.shape[0], w.shape[2] * w.shape[3])
  dy = g.reshape(parts, -1, *g.shape[1:])
  grads = []
  for _, _, s in slices:
    s = s.reshape(parts, -1, *s.shape[1:])
    if groups == 1:
      grads.append(jnp.einsum("bnhwc,bnhwo->bco", s, dy,
                              preferred_element_type=jnp.float32).sum(0))
    else:
      grads.append(jnp.einsum("bnhwgc,bnhwgo->bcgo", _grouped(s, groups), _grouped(dy, groups),
                              preferred_element_type=jnp.float32).sum(0).reshape(w.shape[2], -1))
  return jnp.stack(grads).reshape(w.shape).astype(w.dtype)


def _batch_groups(batch: int, kernel_matrix: int, limit: int = 1 << 21) -> int:
  """The largest divisor of `batch` with groups * kernel_matrix <= limit."""
  return max(d for d in range(1, batch + 1)
             if batch % d == 0 and (d == 1 or d * kernel_matrix <= limit))


def _planned_conv(plan: Plan, strides, pads, out_hw, groups):
  """A conv whose forward and two gradients use the plan's algorithms."""

  @jax.custom_vjp
  def conv(x, w):
    return _forward(plan.forward, x, w, strides, pads, out_hw, groups)

  def fwd(x, w):
    return conv(x, w), (x, w)

  def bwd(res, g):
    x, w = res
    return (_input_grad(plan.input_grad, x, w, g, strides, pads, out_hw, groups),
            _kernel_grad(plan.kernel_grad, x, w, g, strides, pads, out_hw, groups))

  conv.defvjp(fwd, bwd)
  return conv


@dataclasses.dataclass(frozen=True)
class PlannedConv:
  """`lax.conv_general_dilated` with per-shape algorithms (oneDNN's among them
  if `onednn`: installed and one CPU device, `kernels.for_backend` decides).
  Frozen, so equal ones hash alike (a model's `LayerSpec` is a jit key)."""
  onednn: bool = False

  def __call__(self, lhs, rhs, window_strides: Sequence[int], padding, lhs_dilation=None,
               rhs_dilation=None, dimension_numbers=None, feature_group_count: int = 1,
               batch_group_count: int = 1, precision=None, preferred_element_type=None):
    plan = plan_for(lhs.shape, rhs.shape, window_strides, lhs_dilation, rhs_dilation,
                    dimension_numbers, feature_group_count, batch_group_count,
                    preferred_element_type, use_onednn=self.onednn and onednn.supports(lhs.dtype)
                    and lhs.dtype == rhs.dtype)
    if plan == XLA_PLAN:
      return lax.conv_general_dilated(
          lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
          rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
          feature_group_count=feature_group_count, batch_group_count=batch_group_count,
          precision=precision, preferred_element_type=preferred_element_type)
    return planned_conv(plan, lhs.shape, rhs.shape, window_strides, padding)(lhs, rhs)


def planned_conv(plan: Plan, lhs_shape, rhs_shape, window_strides, padding):
  """conv(x, w) for NHWC inputs and HWIO kernels of these shapes, its
  forward pass and two gradients computed as `plan` says."""
  shape = layer_shape(lhs_shape, rhs_shape, window_strides)
  pads = _pads(shape, padding)
  out_hw = tuple(_out_size(n, k, s, p) for n, k, s, p in
                 zip((shape.height, shape.width), shape.kernel, shape.strides, pads))
  return _planned_conv(plan, shape.strides, pads, out_hw, shape.groups)


def layer_shape(lhs_shape, rhs_shape, window_strides) -> ConvShape:
  """The layer's shape; its feature groups follow from the kernel's input channels."""
  _, h, w, c = lhs_shape
  kh, kw, group_channels, o = rhs_shape
  return ConvShape(h, w, c, o, (kh, kw), tuple(window_strides), c // group_channels)


def _is_nhwc(dimension_numbers) -> bool:
  if dimension_numbers is None:
    return False
  if isinstance(dimension_numbers, lax.ConvDimensionNumbers):
    return tuple(dimension_numbers) == ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))
  return tuple(dimension_numbers) == ("NHWC", "HWIO", "NHWC")


def plan_for(lhs_shape, rhs_shape, window_strides, lhs_dilation=None, rhs_dilation=None,
             dimension_numbers=None, feature_group_count=1, batch_group_count=1,
             preferred_element_type=None, use_onednn: bool = False) -> Plan:
  """The plan for one call on the CPU: `choose`'s for 2-D NHWC convolutions,
  grouped or not (oneDNN's if `use_onednn`); XLA's for everything else
  (dilated, batch-grouped, other layouts)."""
  plain = (len(lhs_shape) == 4 and _is_nhwc(dimension_numbers) and batch_group_count == 1
           and preferred_element_type is None
           and all(d == 1 for d in (lhs_dilation or (1, 1)))
           and all(d == 1 for d in (rhs_dilation or (1, 1))))
  if not plain:
    return XLA_PLAN
  return choose(layer_shape(lhs_shape, rhs_shape, window_strides), onednn=use_onednn)
