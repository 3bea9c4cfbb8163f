"""Exports a trained model for serving, and checks each export against JAX.

    python -m cnn.inference.export runs/r20 --out exports/r20
    python -m cnn.inference.export results/weights/resnet20_mnist_seed0.safetensors \
        --out exports/mnist --formats=onnx,tflite

Every export is the same function: uint8 images (N, H, W, C) as the dataset's
images are (`images.py` converts your files), any batch size N -> float32
logits (N, classes), with the run's normalisation and test-time flip inside
and the weights embedded. Softmax the logits for probabilities.

  stablehlo   model.stablehlo: `jax.export` serialized StableHLO (CPU, CUDA and
              TPU lowerings); `jax.export.deserialize(data).call(images)`
  savedmodel  savedmodel/: TensorFlow SavedModel by `jax2tf` (native
              serialization), signature "serving_default": images -> logits
  tflite      model.tflite: the SavedModel through TensorFlow's TFLite converter
  onnx        model.onnx: by `jax2onnx` (opset 21), run by onnxruntime

Layers are flax's own (`portable`: the model's `LayerSpec.portable()`,
XLA's convolutions and no fusion barriers): the CPU kernels of
`cnn/kernels/` are a training-speed matter, not part of the model. After
writing, each export runs on real test images (the dataset's first
`--check_images` test images) and `export.json` records its largest absolute
logit difference from JAX and its top-1 agreement.
"""
import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from cnn import augment
from cnn.errors import UserError, unknown_name
from cnn.inference import predictor

ONNX_OPSET = 21


def portable(model: nn.Module) -> nn.Module:
  """The same model with flax's own layers: XLA's convolutions, no CPU
  kernels (the same parameters: only its `LayerSpec` changes)."""
  return model.clone(spec=model.spec.portable())


def serving_function(p: predictor.Predictor) -> Callable[[jnp.ndarray], jnp.ndarray]:
  """uint8 (N, H, W, C) -> float32 logits, weights closed over."""
  model = portable(p.model)
  variables = p.variables

  def logits(images):
    x = augment.normalize(images, p.mean, p.std)
    y = model.apply(variables, x, train=False)
    if p.flip:
      # lax.rev, not x[:, :, ::-1]: with a symbolic batch the slice becomes a
      # gather that TFLite's converter does not take
      y = (y + model.apply(variables, jnp.flip(x, axis=2), train=False)) / 2
    return y.astype(jnp.float32)
  return logits


def _batch_polymorphic(p: predictor.Predictor) -> jax.ShapeDtypeStruct:
  h, w, c = p.image_shape
  return jax.ShapeDtypeStruct(jax.export.symbolic_shape(f"b, {h}, {w}, {c}"), jnp.uint8)


def to_stablehlo(p: predictor.Predictor, out: Path) -> Path:
  exported = jax.export.export(jax.jit(serving_function(p)),
                               platforms=("cpu", "cuda", "tpu"))(_batch_polymorphic(p))
  path = out / "model.stablehlo"
  path.write_bytes(exported.serialize())
  return path


def run_stablehlo(path: Path, images: np.ndarray) -> np.ndarray:
  return np.asarray(jax.export.deserialize(bytearray(path.read_bytes())).call(images))


def _tf():
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  tf.config.set_visible_devices([], "GPU")
  return tf


def to_savedmodel(p: predictor.Predictor, out: Path) -> Path:
  tf = _tf()
  from jax.experimental import jax2tf  # pylint: disable=import-outside-toplevel
  h, w, c = p.image_shape
  converted = jax2tf.convert(serving_function(p), polymorphic_shapes=[f"(b, {h}, {w}, {c})"],
                             with_gradient=False)
  module = tf.Module()
  module.logits = tf.function(
      lambda images: {"logits": converted(images)}, autograph=False,
      input_signature=[tf.TensorSpec([None, h, w, c], tf.uint8, name="images")])
  path = out / "savedmodel"
  tf.saved_model.save(module, str(path),
                      signatures={"serving_default": module.logits.get_concrete_function()})
  return path


def run_savedmodel(path: Path, images: np.ndarray) -> np.ndarray:
  tf = _tf()
  serve = tf.saved_model.load(str(path)).signatures["serving_default"]
  return serve(images=tf.constant(images))["logits"].numpy()


def to_tflite(p: predictor.Predictor, out: Path) -> Path:
  tf = _tf()
  saved = out / "savedmodel"
  if not saved.exists():
    to_savedmodel(p, out)
  path = out / "model.tflite"
  path.write_bytes(tf.lite.TFLiteConverter.from_saved_model(str(saved)).convert())
  return path


def run_tflite(path: Path, images: np.ndarray) -> np.ndarray:
  tf = _tf()
  interpreter = tf.lite.Interpreter(model_path=str(path))
  (given,), (taken,) = interpreter.get_input_details(), interpreter.get_output_details()
  interpreter.resize_tensor_input(given["index"], images.shape)
  interpreter.allocate_tensors()
  interpreter.set_tensor(given["index"], images)
  interpreter.invoke()
  return interpreter.get_tensor(taken["index"])


def to_onnx(p: predictor.Predictor, out: Path) -> Path:
  import jax2onnx  # pylint: disable=import-outside-toplevel
  h, w, c = p.image_shape
  path = out / "model.onnx"
  jax2onnx.to_onnx(serving_function(p), [jax.ShapeDtypeStruct(("B", h, w, c), jnp.uint8)],
                   model_name=p.config.model, opset=ONNX_OPSET, return_mode="file",
                   output_path=str(path), input_names=["images"], output_names=["logits"])
  return path


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
  import onnxruntime  # pylint: disable=import-outside-toplevel
  options = onnxruntime.SessionOptions()
  options.log_severity_level = 3  # errors only: not jax2onnx's NCHW/NHWC shape-hint mismatches
  session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
  return session.run(None, {session.get_inputs()[0].name: images})[0]


# name -> (write, run)
FORMATS = {
    "stablehlo": (to_stablehlo, run_stablehlo),
    "savedmodel": (to_savedmodel, run_savedmodel),
    "tflite": (to_tflite, run_tflite),
    "onnx": (to_onnx, run_onnx),
}


def parity(reference: np.ndarray, got: np.ndarray) -> dict:
  """How far an export's logits are from JAX's on the same images."""
  return {"images": int(len(reference)),
          "max_abs_logit_difference": float(np.max(np.abs(reference - got))),
          "top1_agreement": float(np.mean(reference.argmax(-1) == got.argmax(-1)))}


def check_formats(formats: Sequence[str]) -> None:
  for name in formats:
    if name not in FORMATS:
      raise unknown_name("export format", name, FORMATS)


def export(p: predictor.Predictor, out: Path, formats: Sequence[str],
           check: np.ndarray | None) -> dict:
  """Writes each format under `out`; with `check` images, runs each export on
  them and compares with the predictor's logits. Returns export.json's content."""
  check_formats(formats)
  out.mkdir(parents=True, exist_ok=True)
  reference = p.logits(check) if check is not None else None
  written = {}
  for name in formats:
    write, run = FORMATS[name]
    path = write(p, out)
    written[name] = {"path": path.name}
    if reference is not None:
      written[name].update(parity(reference, np.asarray(run(path, check), np.float32)))
  summary = {"source": p.source, "model": p.config.model, "dataset": p.config.data.name,
             "input": {"dtype": "uint8", "shape": ["N", *p.image_shape]},
             "output": {"name": "logits", "shape": ["N", len(p.class_names)]},
             "class_names": list(p.class_names), "flip": p.flip, "exports": written}
  (out / "export.json").write_text(json.dumps(summary, indent=2) + "\n")
  return summary


def test_images(p: predictor.Predictor, count: int) -> np.ndarray:
  """The first `count` images of the dataset's test split."""
  from cnn import datasets  # pylint: disable=import-outside-toplevel
  return datasets.open_dataset(p.config.data).load_split("test")[0][:count]


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cnn.inference.export", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("source", help="a trained workdir or a weights file (*.safetensors)")
  parser.add_argument("--out", required=True, help="folder for the exports and export.json")
  parser.add_argument("--formats", default=",".join(FORMATS),
                      help=f"comma-separated, of {', '.join(FORMATS)} (default: all)")
  parser.add_argument("--checkpoint", default="best", choices=predictor.WHICH)
  parser.add_argument("--check_images", type=int, default=1000,
                      help="test images each export is compared on (0: no check)")
  args = parser.parse_args(argv)
  try:
    check_formats(args.formats.split(","))
    p = predictor.load(args.source, args.checkpoint)
    check = test_images(p, args.check_images) if args.check_images > 0 else None
    summary = export(p, Path(args.out), args.formats.split(","), check)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for name, result in summary["exports"].items():
    measured = (f": max |logit difference| {result['max_abs_logit_difference']:.2e}, top-1 "
                f"agreement {100 * result['top1_agreement']:.2f}% on {result['images']} test "
                "images" if "images" in result else "")
    print(f"{name}: {Path(args.out) / result['path']}{measured}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
