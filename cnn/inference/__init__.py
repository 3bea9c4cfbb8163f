"""After training, using a model: `predictor` (a workdir or weights file as a
function), `images` (your own image files converted to the dataset's form),
`predict` (`main.py --mode=predict`), `weights` (the published weights files)
and `export` (SavedModel, TFLite, ONNX, StableHLO)."""
