"""He et al.'s CIFAR-10 ResNet tables beside ours (issue #47 item 2).

He, Zhang, Ren & Sun, "Deep Residual Learning for Image Recognition", CVPR
2016 (2016a), Table 6, and He, Zhang, Ren & Sun, "Identity Mappings in Deep
Residual Networks", ECCV 2016 (2016b), Table 3: test error (%) on CIFAR-10
after 64k iterations on all 50k training images (our "paper" protocol).
2016a gives ResNet-110 as its best run and "mean ± std" over 5 runs (6.43,
6.61 ± 0.16); the other rows are single published numbers.

`render(samples)` turns each config's paper-protocol runs (chosen by
cnn/report/results_table.py, which writes the README block) into a row: our
error as mean ± std (n), the 95 % Student-t interval of our mean, and, where
the paper gives a mean and std, Welch's unequal-variance t-test of our mean
against it (scipy's `ttest_ind_from_stats`); where it gives one number,
whether that number lies inside our interval.

`figure(samples)` draws the same comparison against depth: test error of
every paper-protocol CIFAR ResNet run (v1 and v2, ours at any depth, the
published ones where the papers give them), each seed a dot, our mean with
its 95 % interval, the published numbers beside them.
"""
import dataclasses
import re
import statistics

BEGIN, END = "<!-- he2016-table:begin -->", "<!-- he2016-table:end -->"


@dataclasses.dataclass(frozen=True)
class Published:
  config: str
  net: str
  source: str
  params: str  # as the paper gives them
  error: float  # the number in the table, %
  mean_std_n: tuple[float, float, int] | None = None  # error mean, std, runs, where given


PUBLISHED = (
    Published("resnet20v1_cifar10", "ResNet-20", "2016a, Table 6", "0.27M", 8.75),
    Published("resnet32v1_cifar10", "ResNet-32", "2016a, Table 6", "0.46M", 7.51),
    Published("resnet44v1_cifar10", "ResNet-44", "2016a, Table 6", "0.66M", 7.17),
    Published("resnet56v1_cifar10", "ResNet-56", "2016a, Table 6", "0.85M", 6.97),
    Published("resnet110v1_cifar10", "ResNet-110", "2016a, Table 6 (best of 5)", "1.7M", 6.43,
              (6.61, 0.16, 5)),
    Published("resnet110v2_cifar10", "ResNet-110, pre-activation", "2016b, Table 3", "1.7M",
              6.37),
    Published("resnet164v2_cifar10", "ResNet-164, pre-activation (bottleneck)",
              "2016b, Table 3", "1.7M", 5.46),
)


# The CIFAR-10 ResNet configs the figure places by depth: resnet<depth>v<1|2>_cifar10.
CIFAR_RESNET = re.compile(r"resnet(\d+)(v[12])_cifar10")
VERSIONS = {"v1": ("post-activation (v1)", "C0"), "v2": ("pre-activation (v2)", "C3")}


def depth_and_version(config: str) -> tuple[int, str] | None:
  """("resnet56v1_cifar10") -> (56, "v1"); None for any other config."""
  m = CIFAR_RESNET.fullmatch(config)
  return (int(m.group(1)), m.group(2)) if m else None


def welch(errors: list[float], published: tuple[float, float, int]) -> str:
  """Welch's t-test of our mean error against the published mean ± std (n)."""
  from scipy import stats  # pylint: disable=import-outside-toplevel
  mean, std, n = published
  t, p = stats.ttest_ind_from_stats(statistics.mean(errors), statistics.stdev(errors),
                                    len(errors), mean, std, n, equal_var=False)
  verdict = "differs at the 5 % level" if p < 0.05 else "no difference at the 5 % level"
  return f"t = {t:.2f}, p = {p:.2f}: {verdict}"


def row(paper: Published, entries: list[dict]) -> str:
  published = f"{paper.error:.2f}" + (
      f" ({paper.mean_std_n[0]:.2f} ± {paper.mean_std_n[1]:.2f}, n = {paper.mean_std_n[2]})"
      if paper.mean_std_n else "")
  head = f"| {paper.net} | {paper.source} | {paper.params} | {published} |"
  if not entries:
    return f"{head} no paper-protocol run yet | | | `{paper.config}` |"
  errors = [100 * (1 - e["test_accuracy"]) for e in entries]
  params = entries[0].get("num_params")
  ours = (f"{errors[0]:.2f} (n = 1)" if len(errors) == 1 else
          f"{statistics.mean(errors):.2f} ± {statistics.stdev(errors):.2f} (n = {len(errors)})")
  ours += f", {params / 1e6:.2f}M params" if params else ""
  if len(errors) < 2:
    return f"{head} {ours} | — (one seed) | needs n ≥ 2 | `{paper.config}` |"
  from cnn import seeds  # pylint: disable=import-outside-toplevel (scipy's t quantiles)
  low, high = seeds.summary(errors)["interval"]
  if paper.mean_std_n:
    test = "Welch: " + welch(errors, paper.mean_std_n)
  else:
    test = (f"the published {paper.error:.2f} lies "
            f"{'inside' if low <= paper.error <= high else 'outside'} our interval "
            "(one published number: no test)")
  return f"{head} {ours} | {low:.2f}-{high:.2f} | {test} | `{paper.config}` |"


def render(samples: dict[str, list[dict]]) -> str:
  """The table; `samples`: config name -> its paper-protocol runs (one sample)."""
  lines = ["| net | published in | params (paper) | published error % | ours: test error %, "
           "mean ± std (n) | 95 % interval of our mean | against the paper | config |",
           "|---|---|---:|---:|---|---|---|---|"]
  lines += [row(paper, samples.get(paper.config, [])) for paper in PUBLISHED]
  return "\n".join(lines) + "\n"


def errors_by_depth(samples: dict[str, list[dict]]) -> dict[str, dict[int, list[float]]]:
  """version -> depth -> our test errors (%), from every CIFAR ResNet config in `samples`."""
  out: dict[str, dict[int, list[float]]] = {}
  for config, entries in samples.items():
    placed = depth_and_version(config)
    if placed and entries:
      depth, version = placed
      out.setdefault(version, {})[depth] = [100 * (1 - e["test_accuracy"]) for e in entries]
  return out


def _half_interval(errors: list[float]) -> float:
  """Half the 95 % Student-t interval of the mean (0 for one seed: no spread known)."""
  if len(errors) < 2:
    return 0.0
  from cnn import seeds  # pylint: disable=import-outside-toplevel (scipy's t quantiles)
  low, high = seeds.summary(errors)["interval"]
  return (high - low) / 2


def figure(samples: dict[str, list[dict]]):
  """Test error (%) against depth, v1 and v2: each of our seeds a small dot, our mean
  (n >= 2: with its 95 % Student-t interval) a large one joined by a line, the
  published numbers as open squares (ResNet-110 v1 also with 2016a's mean ± std of
  its 5 runs)."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel (slow)
  ours = errors_by_depth(samples)
  published = [(*depth_and_version(p.config), p) for p in PUBLISHED]
  fig = Figure(figsize=(7.5, 4.8))
  ax = fig.add_subplot()
  for version, (label, colour) in VERSIONS.items():
    papers = sorted((depth, p) for depth, v, p in published if v == version)
    ax.plot([d for d, _ in papers], [p.error for _, p in papers], "s--", color=colour,
            markerfacecolor="white", label=f"He et al., {label}")
    for depth, paper in papers:
      if paper.mean_std_n:
        mean, std, n = paper.mean_std_n
        ax.errorbar([depth * 1.03], [mean], [std], fmt="s", color=colour,
                    markerfacecolor="white", capsize=3,
                    label=f"He et al., ResNet-{depth} {version}: mean ± std of {n} runs")
    mine = sorted(ours.get(version, {}).items())
    for depth, errors in mine:
      ax.plot([depth] * len(errors), errors, ".", color=colour, alpha=0.45)
      ax.annotate(f"n = {len(errors)}", (depth, max(errors)), textcoords="offset points",
                  xytext=(5, 4), fontsize=7, color=colour)
    if mine:
      ax.errorbar([d for d, _ in mine], [statistics.mean(e) for _, e in mine],
                  [_half_interval(e) for _, e in mine], fmt="o-", color=colour, capsize=4,
                  label=f"ours, {label}: mean and 95 % interval (seeds as dots)")
  depths = sorted({d for d, _, _ in published} | {d for v in ours.values() for d in v})
  ax.set_xscale("log")
  ax.set_xticks(depths, [str(d) for d in depths])
  ax.minorticks_off()
  ax.set_xlabel("depth (layers)")
  ax.set_ylabel("CIFAR-10 test error %")
  ax.set_title("CIFAR-10 ResNets under the paper protocol (64k iterations, 50k images)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig
