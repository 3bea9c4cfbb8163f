"""The speedrun recipe (cnn/speedrun/), piece by piece against what airbench94
does, the timer, and (slow) a short real run through its command."""
import json
import subprocess
import sys
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cnn import augment, datasets
from cnn.speedrun import data, net, optim, train

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def real_images(cifar10):
  images, labels = cifar10.load_split("train[:300]")
  spec = datasets.get_spec("cifar10")
  return np.asarray(augment.normalize(images, spec.mean, spec.std)), labels


def test_whitening_maps_patch_covariance_to_identity(real_images):
  images, _ = real_images
  kernel = np.asarray(net.whitening_kernel(jnp.asarray(images)), np.float64)
  assert kernel.shape == (2, 2, 3, 24)
  flat = np.asarray(net.patches(jnp.asarray(images)), np.float64)
  assert flat.shape == (300 * 31 * 31, 12)
  # the patch at (0, 0) of image 0, flattened (h, w, c)
  np.testing.assert_array_equal(flat[0], images[0, :2, :2].reshape(-1))
  outputs = flat @ kernel.reshape(12, 24)
  covariance = outputs[:, :12].T @ outputs[:, :12] / len(outputs)
  eigenvalues = np.linalg.eigvalsh(flat.T @ flat / len(flat))
  want = eigenvalues / (eigenvalues + 5e-4)  # the eps keeps the smallest below 1
  np.testing.assert_allclose(np.sort(np.diag(covariance)), np.sort(want), atol=1e-3)  # float32
  np.testing.assert_allclose(covariance - np.diag(np.diag(covariance)), 0, atol=1e-3)
  np.testing.assert_array_equal(kernel[..., 12:], -kernel[..., :12])
  # the network's first layer computes exactly these outputs
  conv = jax.lax.conv_general_dilated(jnp.asarray(images[:1]), jnp.asarray(kernel, jnp.float32),
                                      (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(np.asarray(conv)[0, 0, 0], outputs[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("cin,cout", [(24, 64), (64, 64), (256, 64)])
def test_identity_init_passes_the_first_channels_through(cin, cout):
  kernel = net.identity_init(jax.random.key(0), (3, 3, cin, cout))
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, cin))
  y = nn.Conv(cout, (3, 3), padding="SAME", use_bias=False).apply({"params": {"kernel": kernel}}, x)
  n = min(cin, cout)
  np.testing.assert_allclose(y[..., :n], x[..., :n], atol=1e-6)
  rest = np.asarray(kernel[..., n:])
  assert rest.size == 0 or 0 < np.abs(rest).max() <= 1 / np.sqrt(9 * cin)  # PyTorch's bound


def test_the_network_has_no_batchnorm_scale_and_a_frozen_whitening_layer():
  model = net.CifarNet()
  variables = model.init(jax.random.key(0), jnp.zeros((2, 32, 32, 3)), train=False)
  paths = {jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_leaves_with_path(variables["params"])}
  assert not any("scale" in p for p in paths) and "['whiten_bias']" in paths
  assert "whiten" in variables and "kernel" not in str(variables["params"].get("whiten_bias"))
  bias = np.asarray(variables["params"]["whiten_bias"])  # PyTorch's Conv2d default, as airbench
  assert 0 < np.abs(bias).max() <= 1 / np.sqrt(2 * 2 * 3) and len(set(bias.tolist())) == net.WHITEN_WIDTH
  groups = {p: optim.group_of(p, leaf) for p, leaf in
            jax.tree_util.tree_leaves_with_path(variables["params"])}
  count = {g: sum(1 for v in groups.values() if v == g) for g in set(groups.values())}
  assert count == {"whiten_bias": 1, "head": 1, "filters": 6, "norm_bias": 6}
  out = model.apply(variables, jnp.zeros((2, 32, 32, 3)), train=False)
  assert out.shape == (2, 10) and out.dtype == jnp.float32


def test_the_cpu_kernels_train_the_net_as_flax_layers_do():
  """On the CPU the net is built from the CPU's kernels, as every model is
  (train.layer_spec: the planned convolutions, oneDNN's BatchNorm where built,
  the reshape max pool, also on the odd 31x31 and 7x7 maps and the final 3x3);
  the parameters, the loss, the gradients and the BatchNorm statistics are
  flax's own layers' (float32: within float rounding)."""
  from cnn.kernels import batchnorm, onednn, pool  # pylint: disable=import-outside-toplevel
  from cnn.models.layers import Conv, LayerSpec  # pylint: disable=import-outside-toplevel
  cpu = train.layer_spec("float32", backend="cpu")
  assert cpu.pool is pool.max_pool and cpu.conv.compute is not None
  # oneDNN's BatchNorm, here without a scale, where built
  assert cpu.norm.training is (batchnorm.BatchNorm if onednn.available() else None)
  assert train.layer_spec("float16", backend="gpu") == LayerSpec("float16", conv=Conv("same"))
  x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
  y = jax.random.randint(jax.random.key(2), (8,), 0, 10)
  models = [net.CifarNet(10, (16, 32, 32), spec) for spec in (LayerSpec(conv=Conv("same")), cpu)]
  inits = [m.init(jax.random.key(0), x[:2], train=False) for m in models]
  same = jax.tree.map(lambda a, b: bool((a == b).all()), *inits)
  assert all(jax.tree.leaves(same))
  variables = {**inits[0], "whiten": {"kernel": net.whitening_kernel(x)}}

  def loss(model, params):
    logits, updates = model.apply({**variables, "params": params}, x, train=True,
                                  mutable=["batch_stats"])
    return train.loss_fn(logits, y, 10), updates["batch_stats"]

  (flax_loss, flax_stats), flax_grads = jax.value_and_grad(
      lambda p: loss(models[0], p), has_aux=True)(variables["params"])
  (cpu_loss, cpu_stats), cpu_grads = jax.jit(jax.value_and_grad(
      lambda p: loss(models[1], p), has_aux=True))(variables["params"])
  np.testing.assert_allclose(cpu_loss, flax_loss, rtol=1e-5)
  for want, got in zip(jax.tree.leaves((flax_grads, flax_stats)),
                       jax.tree.leaves((cpu_grads, cpu_stats))):
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=1e-4 * np.abs(want).max())


def test_alternating_flips_are_deterministic_and_alternate():
  images = jnp.arange(6 * 2 * 4 * 1, dtype=jnp.float32).reshape(6, 2, 4, 1)
  mask = data.flip_mask(jax.random.key(3), 6)
  epochs = [np.asarray(data.alternating_flips(images, mask, e)) for e in range(4)]
  mirrored = np.asarray(images[:, :, ::-1])
  for e, out in enumerate(epochs):
    for i in range(6):
      want = mirrored[i] if bool(mask[i]) != (e % 2 == 1) else np.asarray(images[i])
      np.testing.assert_array_equal(out[i], want)
  np.testing.assert_array_equal(epochs[0], epochs[2])  # the same every other epoch
  assert all((epochs[0][i] != epochs[1][i]).any() for i in range(6))  # each image alternates
  big = data.flip_mask(jax.random.key(4), 10000)
  assert 0.47 < float(big.mean()) < 0.53


def test_translate_is_a_crop_of_the_reflect_padded_image():
  images = jax.random.normal(jax.random.key(0), (16, 8, 8, 3))
  out = np.asarray(data.translate(images, jax.random.key(1), 2))
  padded = np.pad(np.asarray(images), ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
  shifts = set()
  for i in range(16):
    found = [(a, b) for a in range(5) for b in range(5)
             if np.array_equal(out[i], padded[i, a:a + 8, b:b + 8])]
    assert found, i
    shifts.add(found[0])
  assert len(shifts) > 4  # drawn per image
  np.testing.assert_array_equal(data.translate(images, jax.random.key(1), 0), images)


def test_orthogonalize_keeps_the_singular_vectors_and_flattens_the_values():
  g = jax.random.normal(jax.random.key(0), (64, 216)) * jnp.linspace(0.01, 3, 216)
  out = np.asarray(optim.orthogonalize(g), np.float64)
  u, s, vt = np.linalg.svd(np.asarray(g, np.float64), full_matrices=False)
  inner = u.T @ out @ vt.T  # diagonal if the singular vectors are kept
  values = np.diag(inner)
  assert values.min() > 0.3 and values.max() < 1.6, values  # airbench: about U(0.5, 1.5)
  assert np.abs(inner - np.diag(values)).max() < 0.05
  tall = np.asarray(optim.orthogonalize(g.T), np.float64)  # transposed in, transposed out
  np.testing.assert_allclose(tall, out.T, atol=2e-2)


def test_a_muon_step_rescales_each_filter_and_steps_along_the_orthogonal_update():
  kernel = jax.random.normal(jax.random.key(0), (3, 3, 8, 16))
  grad = jax.random.normal(jax.random.key(1), (3, 3, 8, 16))
  tx = optim.muon(lambda count: 0.24, momentum=0.6)
  update, _ = tx.update({"k": grad}, tx.init({"k": kernel}), {"k": kernel})
  nesterov = grad + 0.6 * grad  # first step: the buffer is the gradient
  direction = optim.orthogonalize(optim.filter_matrix(nesterov)).T.reshape(kernel.shape)
  rescaled = np.asarray(kernel + update["k"] + 0.24 * direction.astype(jnp.float32))
  np.testing.assert_allclose(np.linalg.norm(rescaled), np.sqrt(16), rtol=1e-4)
  np.testing.assert_allclose(rescaled / np.linalg.norm(rescaled),
                             np.asarray(kernel) / np.linalg.norm(kernel), atol=1e-5)


def test_sgd_groups_decay_linearly_and_the_whitening_bias_stops():
  rate = optim.linear_to_zero(0.053, 75)
  assert float(rate(0)) == pytest.approx(0.053) and float(rate(75)) == 0 == float(rate(150))
  params = {"whiten_bias": jnp.ones(3), "head": {"kernel": jnp.ones((4, 2))}}
  tx = optim.make_optimizer(2000, steps_per_epoch=1, total_steps=8, whiten_bias_epochs=3)
  state = tx.init(params)
  grads = jax.tree.map(jnp.ones_like, params)
  for step in range(5):
    updates, state = tx.update(grads, state, params)
    if step >= 3:  # the whitening bias is frozen after its 3 epochs
      np.testing.assert_array_equal(updates["whiten_bias"], 0)
    assert (np.asarray(updates["head"]["kernel"]) < 0).all()


def test_tta_is_the_mean_of_mirrored_and_translated_views():
  images = jax.random.normal(jax.random.key(0), (2, 6, 6, 1))
  apply = lambda v, x, train: x.reshape(len(x), -1)[:, :3] * v  # noqa: E731 (a position-sensitive "model")
  got = train.tta_logits(apply, 2.0, images)
  f = lambda x: 0.5 * apply(2.0, x, False) + 0.5 * apply(2.0, x[:, :, ::-1], False)  # noqa: E731
  padded = jnp.pad(images, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
  want = 0.5 * f(images) + 0.25 * (f(padded[:, :6, :6]) + f(padded[:, 2:8, 2:8]))
  np.testing.assert_allclose(got, want, rtol=1e-6)


def test_loss_is_label_smoothed_cross_entropy_summed_over_the_batch():
  logits = jnp.asarray([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
  labels = jnp.asarray([0, 2])
  targets = np.full((2, 3), 0.2 / 3) + 0.8 * np.eye(3)[[0, 2]]
  want = -(targets * jax.nn.log_softmax(logits)).sum()
  assert float(train.loss_fn(logits, labels, 3)) == pytest.approx(float(want), rel=1e-6)


@pytest.fixture(scope="module")
def tiny_speedrun(cifar10):
  tr, te = cifar10.load_split("train[:1000]"), cifar10.load_split("test[:500]")
  recipe = train.Recipe(batch_size=250, epochs=1, widths=(8, 16, 16), dtype="float32",
                        eval_batch_size=250)
  return train.Speedrun(tr, te, recipe)


def test_the_timer_excludes_compilation_and_includes_all_device_work(tiny_speedrun):
  """Nothing compiles while the clock runs (compiled ahead, reported apart); and the
  clock covers the device's work: the run's seconds are no less than the same
  pieces executed one by one, each waited for."""
  compiled = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, seconds, **kw: compiled.append(event) if "compile" in event else None)
  s = tiny_speedrun
  assert s.compile_s > 0
  s.run(0)  # the first run's own warm-up (eager init) is outside the clock too
  compiled.clear()
  result = s.run(1)
  assert not [e for e in compiled if "backend_compile" in e], compiled
  variables, opt_state = s.init(jax.random.key(5))
  import time  # pylint: disable=import-outside-toplevel
  start = time.perf_counter()
  variables = jax.block_until_ready(s.fit_fn(variables, s.train_images))
  # The data are arguments of the compiled functions, not constants XLA could
  # fold at compile time (the whitening fit would then be done before the clock).
  fitted = s.fit_fn(s.init(jax.random.key(7))[0], 2 * s.train_images)["whiten"]["kernel"]
  assert not np.allclose(fitted, variables["whiten"]["kernel"])
  params, stats, whiten = variables["params"], variables["batch_stats"], variables["whiten"]
  images, order = jax.block_until_ready(s.data_fn(s.train_images, 0, jax.random.key(6)))
  for i in range(s.steps_per_epoch):
    params, stats, opt_state, _ = jax.block_until_ready(
        s.step_fn(params, stats, opt_state, whiten, images, s.train_labels, order, i))
  jax.block_until_ready(s.eval_fn({"params": params, "batch_stats": stats, "whiten": whiten},
                                  s.test_images))
  one_by_one = time.perf_counter() - start
  assert result["train_seconds"] > 0.5 * one_by_one, (result, one_by_one)
  assert 0 <= result["test_accuracy"] <= 1 and np.isfinite(result["last_loss"])
  parts = s.breakdown(2)  # each phase waited for: they add up to about a run
  assert set(parts) == {"fit_s", "data_s", "steps_s", "dispatch_s", "eval_s", "total_s",
                        "step_ms", "train_images_per_s"}
  assert 0 < parts["dispatch_s"] <= parts["steps_s"] and parts["total_s"] > 0.5 * one_by_one
  assert parts["step_ms"] == pytest.approx(1000 * parts["steps_s"] / s.total_steps, rel=1e-3)


@pytest.mark.slow
def test_the_command_trains_a_fraction_of_an_epoch_on_real_data(data_env, cifar10, tmp_path):
  out = tmp_path / "speedrun.json"
  subprocess.run([sys.executable, "-m", "cnn.speedrun", "--seeds", "2", "--train-images",
                  "4000", "--test-images", "1000", "--epochs", "1", "--batch-size", "500",
                  "--widths", "16,32,32", "--dtype", "float32", "--breakdown", "--profile",
                  f"--out={out}"],
                 cwd=REPO, env=data_env, check=True, capture_output=True, text=True, timeout=900)
  result = json.loads(out.read_text())
  assert result["train_images"] == 4000 and result["test_accuracy"]["n"] == 2
  assert result["compile_seconds"] > 0 and result["train_seconds"]["mean"] > 0
  assert result["test_accuracy"]["mean"] > 0.13  # 8 steps of 500 beat chance (0.10)
  assert [r["seed"] for r in result["runs"]] == [0, 1]
  assert result["breakdown"]["seed"] == 2 and result["breakdown"]["steps_s"] > 0
  profile = result["profile"]  # a third run, traced: the step's kernels take most of it
  assert profile["seed"] == 3 and "error" not in profile, profile
  assert max(profile["modules"], key=profile["modules"].get) == "jit__step"


def test_auto_dtype_is_airbench_half_on_gpus_and_native_elsewhere():
  from cnn.speedrun.__main__ import default_dtype  # pylint: disable=import-outside-toplevel
  assert (default_dtype("gpu"), default_dtype("tpu"), default_dtype("cpu")) == (
      "float16", "bfloat16", "float32")
  # the box's command names no dtype: it runs airbench's float16
  from tools import accelerator_kit  # pylint: disable=import-outside-toplevel
  assert "--dtype" not in accelerator_kit.SIZES["box"]().speedrun


@pytest.mark.parametrize("argv,says", [
    (["--widths", "8,x"], "--widths takes 3 positive channel counts"),
    (["--widths", "8,16"], "--widths takes 3 positive channel counts"),
    (["--widths", "8,0,16"], "--widths takes 3 positive channel counts"),
    (["--epochs", "0"], "--epochs must be at least 1, not 0"),
    (["--batch-size", "0"], "--batch-size must be at least 1"),
    (["--seeds", "0"], "--seeds must be at least 1"),
    (["--test-images", "-1"], "--test-images must be at least 0")])
def test_the_command_refuses_bad_arguments_in_one_line_before_loading_data(argv, says, capsys):
  from cnn.speedrun.__main__ import main  # pylint: disable=import-outside-toplevel
  assert main(argv) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: {says}") and err.count("\n") == 1, err


def test_the_kernel_profile_reads_a_real_trace_and_counts_each_kernel_once(tmp_path):
  """A real trace (this CPU's) read back: the traced program's operations,
  their calls and shares; on a GPU plane the stream lines count and the lines
  that summarise them do not (a plane built as the profiler builds it)."""
  from cnn.speedrun import profile  # pylint: disable=import-outside-toplevel
  f = jax.jit(lambda a, b: jnp.tanh(a @ b).sum())
  a = jnp.ones((256, 256))
  jax.block_until_ready(f(a, a))
  with jax.profiler.trace(str(tmp_path)):
    for _ in range(3):
      jax.block_until_ready(f(a, a))
  found = profile.read_trace(str(tmp_path))
  assert found["where"] == "/host:CPU" and found["device_ms"] > 0
  mine = [o for o in found["top"] if "lambda" in o["module"]]
  assert mine and all(o["calls"] % 3 == 0 for o in mine)
  assert abs(sum(o["share"] for o in found["top"]) - 1) < 0.02 or len(found["top"]) == 15

  class Event:  # what jax.profiler.ProfileEvent gives: name, duration_ns, stats
    def __init__(self, name, ns, **stats):
      self.name, self.duration_ns, self.stats = name, ns, list(stats.items())

  class Line:
    def __init__(self, name, events):
      self.name, self.events = name, events

  class Plane:
    def __init__(self, name, lines):
      self.name, self.lines = name, lines

  conv = Event("sm90_xmma_fprop", 3e6, hlo_op="cudnn-conv.1", hlo_module="jit__step")
  fusion = Event("loop_fusion", 1e6, hlo_op="fusion.2", hlo_module="jit__step")
  data = type("Data", (), {"planes": [
      Plane("/host:CPU", [Line("python", [Event("x", 5e6, hlo_op="y")])]),
      Plane("/device:GPU:0", [Line("Stream #13(Compute)", [conv, fusion, conv]),
                              Line("XLA Ops", [conv, fusion, conv]),
                              Line("TensorFlow Ops", [conv]),
                              Line("XLA Modules", [Event("jit__step", 7e6)])])]})()
  where, events = profile.device_events(data)
  table = profile.kernel_table(events)
  assert where == "/device:GPU:0" and table["device_ms"] == 7.0
  assert table["top"][0] == {"module": "jit__step", "op": "cudnn-conv.1",
                             "kernel": "sm90_xmma_fprop", "ms": 6.0, "calls": 2, "share": 0.8571}
  tpu = type("Data", (), {"planes": [Plane("/device:TPU:0", [
      Line("Steps", [Event("0", 9e6)]), Line("XLA Ops", [conv, fusion]),
      Line("XLA Modules", [Event("jit__step", 4e6)])])]})()
  where, events = profile.device_events(tpu)
  assert where == "/device:TPU:0" and profile.kernel_table(events)["device_ms"] == 4.0
