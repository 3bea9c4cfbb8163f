"""A CPU stand-in for airbench's scripts in the kit's tests (theirs need CUDA).

Like them it reads `cifar10/train.pt` and `test.pt` from its folder (here it
only checks they exist), prints the same table (`|  run  |  epoch  | ... |`,
the run's label on its first row only, a final "eval" row per run with the
TTA accuracy and the seconds), starts with a warm-up run and then goes on
until it is stopped. STANDIN_HANG=1: hangs after the warm-up.
"""
import os
import sys
import time

for split in ("train", "test"):
  if not os.path.exists(f"cifar10/{split}.pt"):
    sys.exit(f"no cifar10/{split}.pt")
COLUMNS = ["run   ", "epoch", "train_acc", "val_acc", "tta_val_acc", "time_seconds"]


def row(values, rule=False):
  text = "".join(f"|  {str(v).rjust(len(c))}  " for v, c in zip(values, COLUMNS)) + "|"
  print(text)
  if rule:
    print("-" * len(text))


print("-" * 60)
row(COLUMNS, rule=True)
for run in ["warmup", *range(10**6)]:
  for epoch in range(2):
    row([run if epoch == 0 else "", epoch, "0.5000", "0.9000", "", ""])
  accuracy = 0.25 if run == "warmup" else 0.9400 + 0.0001 * (run % 5)
  row(["", "eval", "0.5000", "0.9000", f"{accuracy:.4f}", f"{2.5 + 0.01 * (run == 0):.4f}"],
      rule=True)
  if os.environ.get("STANDIN_HANG"):
    time.sleep(3600)
  time.sleep(0.05)
