"""PyTorch twins of our models, timed by `run.py` in a worker process.

ResNet is `../shared/reference/torch_resnet20.py` (He et al. 2016, 1x1
projection shortcuts: our default `shortcut="projection"`, same parameter
count) with the depth as an argument; VGG-16 mirrors `cnn/models/vgg.py`
(BN after every conv; classifier dropout-512-ReLU-dropout-512-ReLU-10). Both run channels-last,
the fast layout of PyTorch's convolutions (CPU and cuDNN alike), with the reference's optimizer:
SGD 0.1, Nesterov momentum 0.9, weight decay 5e-4. On a CUDA GPU when torch sees one (cuDNN's
autotuner on, as JAX's XLA autotunes its convolutions), else on the CPU. "bfloat16" runs the
forward pass and the loss under `torch.autocast` (parameters and optimizer stay fp32, as our
`config.layers.dtype` does).

Worker protocol (one process, so PyTorch's threads never run beside JAX's):
each stdin line `model batch_size steps [dtype]` (dtype "float32", the default, or "bfloat16")
is answered with one stdout line, the images/s of `steps` train steps after warm-up, timed
between two device synchronisations (CUDA runs asynchronously).
"""
import os
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
if DEVICE == "cpu":
  torch.set_num_threads(int(os.environ.get("THREADS", os.cpu_count())))
else:
  torch.backends.cudnn.benchmark = True
DTYPES = {"float32": None, "bfloat16": torch.bfloat16}  # None: no autocast


def synchronize() -> None:
  """Waits for the queued GPU work, so the clock reads finished steps."""
  if DEVICE == "cuda":
    torch.cuda.synchronize()


class Block(nn.Module):
  def __init__(self, cin, cout, stride):
    super().__init__()
    self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.b1 = nn.BatchNorm2d(cout)
    self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.b2 = nn.BatchNorm2d(cout)
    self.sc = None
    if stride != 1 or cin != cout:
      self.sc = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x):
    y = F.relu(self.b1(self.c1(x)))
    y = self.b2(self.c2(y))
    return F.relu(y + (x if self.sc is None else self.sc(x)))


class ResNet(nn.Module):
  def __init__(self, depth=20, classes=10, cin=3):
    super().__init__()
    n = (depth - 2) // 6
    self.stem = nn.Sequential(nn.Conv2d(cin, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16),
                              nn.ReLU())
    layers, c = [], 16
    for i, w in enumerate([16, 32, 64]):
      for j in range(n):
        layers.append(Block(c, w, 2 if (i > 0 and j == 0) else 1))
        c = w
    self.layers = nn.Sequential(*layers)
    self.fc = nn.Linear(64, classes)

  def forward(self, x):
    return self.fc(self.layers(self.stem(x)).mean((2, 3)))


VGG16 = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
  def __init__(self, classes=10, cin=3):
    super().__init__()
    layers, c = [], cin
    for v in VGG16:
      if v == "M":
        layers.append(nn.MaxPool2d(2))
      else:
        layers += [nn.Conv2d(c, v, 3, 1, 1, bias=False), nn.BatchNorm2d(v), nn.ReLU()]
        c = v
    self.features = nn.Sequential(*layers)
    self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(0.5), nn.Linear(512, 512), nn.ReLU(),
                                    nn.Dropout(0.5), nn.Linear(512, 512), nn.ReLU(),
                                    nn.Linear(512, classes))

  def forward(self, x):
    return self.classifier(self.features(x))


def build(name: str) -> nn.Module:
  if name.startswith("resnet"):
    return ResNet(int(name[len("resnet"):]))
  if name == "vgg16":
    return VGG()
  raise ValueError(f"no PyTorch twin for {name!r}")


class Stepper:
  """One model, optimizer and fixed random batch on DEVICE; `images_per_s` times steps."""

  def __init__(self, name: str, batch_size: int, dtype: str = "float32"):
    if dtype not in DTYPES:
      raise ValueError(f"unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
    torch.manual_seed(0)
    self.model = build(name).to(DEVICE, memory_format=torch.channels_last)
    self.opt = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9,
                               weight_decay=5e-4, nesterov=True)
    self.x = torch.randn(batch_size, 3, 32, 32).to(DEVICE, memory_format=torch.channels_last)
    self.y = torch.randint(0, 10, (batch_size,)).to(DEVICE)
    self.autocast = DTYPES[dtype]
    self.batch_size = batch_size
    for _ in range(3):
      self.step()
    synchronize()

  def step(self):
    self.opt.zero_grad(set_to_none=True)
    with torch.autocast(DEVICE, dtype=self.autocast, enabled=self.autocast is not None):
      loss = F.cross_entropy(self.model(self.x), self.y)
    loss.backward()
    self.opt.step()

  def images_per_s(self, steps: int) -> float:
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
      self.step()
    synchronize()
    return self.batch_size * steps / (time.perf_counter() - start)


def worker() -> None:
  steppers = {}
  for line in sys.stdin:
    name, batch_size, steps, *dtype = line.split()
    key = (name, int(batch_size), *dtype)
    if key not in steppers:
      steppers[key] = Stepper(name, int(batch_size), *dtype)
    print(f"{steppers[key].images_per_s(int(steps)):.3f}", flush=True)


if __name__ == "__main__":
  worker()
