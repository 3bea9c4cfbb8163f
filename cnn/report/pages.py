"""The report as text: markdown for reading in a terminal or a pull request,
and a self-contained `index.html` (inline CSS, images by relative path, no
scripts or external assets) that opens from disk without a server.
"""
import html as html_lib
import json
from typing import Any, Sequence

from cnn import robustness
from cnn.robustness.section import Table, generic_table

SUMMARY_ROWS = ("accuracy", "macro avg", "weighted avg")
METRICS = ("precision", "recall", "f1-score")

# (results.json key, label, formatter) for the headline table.
_PERCENT = lambda v: f"{100 * v:.2f}%"
HEADLINE = (
    ("test_accuracy", "test accuracy (best-validation checkpoint)", _PERCENT),
    ("best_val_accuracy", "best validation accuracy", _PERCENT),
    ("best_epoch", "best epoch", str),
    ("last_test_accuracy", "test accuracy (last checkpoint)", _PERCENT),
    ("train_accuracy", "train accuracy (last epoch)", _PERCENT),
    ("num_params", "parameters", lambda v: f"{v:,}"),
    ("epochs", "epochs", str),
    ("batch_size", "batch size", str),
    ("wall_time_s", "training wall time", lambda v: f"{v:.1f} s"),
    ("images_per_s", "training images/s", lambda v: f"{v:,.0f}"),
    ("compile_time_s", "compile time", lambda v: f"{v:.1f} s"),
)

# figure file -> its caption; a robustness section's figure has its own (ReportSection.caption).
CAPTIONS = {
    "curves.png": "Training curves: train vs validation per epoch, learning rate.",
    "confusion_matrix.png": "Confusion matrix on the test set: counts and row-normalised.",
    "misclassified.png": "The test images misclassified with the highest confidence.",
    "activations.png": "Feature maps of the first convolution and of each stage's output "
                       "(strongest channels) for {image} (config.eval.report_image_index).",
}


def activations_title(image: dict) -> str:
  return (f"test image #{image['index']}: true {image['true']}, predicted "
          f"{image['predicted']} ({image['confidence']:.0%})")


def _checkpoint_line(report: dict) -> str:
  checkpoint = report.get("checkpoint") or {}
  line = f"{report['num_examples']} test images"
  if checkpoint.get("epoch") is not None:
    line += f"; checkpoint of epoch {checkpoint['epoch']}"
    if checkpoint.get("val_accuracy") is not None:
      line += f" (best validation accuracy {_PERCENT(checkpoint['val_accuracy'])})"
  return line


def report_rows(report: dict) -> list[list[str]]:
  """[name, precision, recall, f1, support] rows, sklearn's text layout: the
  accuracy row has only the F1 column and the total support."""
  rows = [[name, *(f"{m[k]:.4f}" for k in METRICS), str(m["support"])]
          for name, m in report["classes"].items()]
  rows.append(["accuracy", "", "", f"{report['accuracy']:.4f}", str(report["num_examples"])])
  for key in SUMMARY_ROWS[1:]:
    rows.append([key, *(f"{report[key][k]:.4f}" for k in METRICS), str(report[key]["support"])])
  return rows


def confused_rows(report: dict) -> list[list[str]]:
  return [[p["true"], p["predicted"], str(p["count"]), f"{100 * p['fraction_of_true']:.1f}%"]
          for p in report["most_confused"]]


REPORT_HEADER = ["class", "precision", "recall", "f1-score", "support"]
CONFUSED_HEADER = ["true class", "predicted as", "count", "% of true class"]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1
                   ) -> str:
  """Text columns left-aligned, numbers right-aligned."""
  lines = ["| " + " | ".join(header) + " |",
           "|" + "|".join(["---"] * text_columns + ["---:"] * (len(header) - text_columns)) + "|"]
  lines += ["| " + " | ".join(row) + " |" for row in rows]
  return "\n".join(lines) + "\n"


def markdown(report: dict) -> str:
  return (f"# Classification report: {report['model']} on {report['dataset']}\n\n"
          f"{_checkpoint_line(report)}.\n\n"
          + markdown_table(REPORT_HEADER, report_rows(report))
          + "\n## Most-confused class pairs\n\n"
          + (markdown_table(CONFUSED_HEADER, confused_rows(report), text_columns=2)
             if report["most_confused"] else "No misclassified test images.\n")
          + robustness_markdown(report.get("robustness") or {}))


def html_table(header: Sequence[str], rows: Sequence[Sequence[str]], text_columns: int = 1
               ) -> str:
  """Like `markdown_table`: numbers (after `text_columns`) right-aligned."""
  esc = html_lib.escape
  cell = lambda i, c: f'<td{" class=num" if i >= text_columns else ""}>{esc(c)}</td>'
  head = "".join(f"<th>{esc(h)}</th>" for h in header)
  body = "".join("<tr>" + "".join(cell(i, c) for i, c in enumerate(row)) + "</tr>\n"
                 for row in rows)
  return f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n"


def headline_rows(results: dict) -> list[list[str]]:
  return [[label, fmt(results[key])] for key, label, fmt in HEADLINE
          if results.get(key) is not None]


_CSS = """
body { font-family: sans-serif; margin: 2em auto; padding: 0 1.5em; max-width: 1400px;
       color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.7em; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
th { background: #eef; }
figure { margin: 1em 0 2em; }
img { max-width: 100%; border: 1px solid #ddd; }
pre { background: #f6f6f6; padding: 1em; overflow-x: auto; font-size: 0.85em; }
"""


def html(report: dict, results: dict, config: dict[str, Any], images: Sequence[str]) -> str:
  """`index.html`: headline numbers, the tables, every figure and the config
  of the training run (from `results.json`; else `config`, the evaluation's,
  which may differ in fields that do not change the model, like the seed)."""
  esc = html_lib.escape
  title = f"{report['model']} on {report['dataset']}"
  headline = (html_table(["", "value"], headline_rows(results)) if results
              else "<p>No results.json in this workdir.</p>\n")
  confused = (html_table(CONFUSED_HEADER, confused_rows(report), text_columns=2)
              if report["most_confused"]
              else "<p>No misclassified test images.</p>\n")
  image = report.get("activations_image")
  captions = {**CAPTIONS, **{s.figure_file: s.caption for s in robustness.SECTIONS.values()
                             if s.figure is not None}}
  caption = lambda name: captions.get(name, name).format(
      image=activations_title(image) if image else "one test image")
  figures = "".join(
      f'<figure><img src="{esc(name)}" alt="{esc(name)}">'
      f"<figcaption>{esc(caption(name))}</figcaption></figure>\n"
      for name in images)
  run_config = results.get("config")
  config_heading = "Config of the training run" if run_config else "Config"
  config_text = json.dumps(run_config or config, indent=2, sort_keys=True, default=str)
  return (
      "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
      f"<title>Report: {esc(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
      f"<h1>Report: {esc(title)}</h1>\n"
      f"<p>{esc(_checkpoint_line(report))}; test accuracy "
      f"<b>{_PERCENT(report['accuracy'])}</b>.</p>\n"
      f"<h2>Headline numbers</h2>\n{headline}"
      f"<h2>Per-class metrics</h2>\n{html_table(REPORT_HEADER, report_rows(report))}"
      f"<h2>Most-confused class pairs</h2>\n{confused}"
      f"<h2>Figures</h2>\n{figures}"
      f"{robustness_html(report.get('robustness') or {})}"
      f"<h2>{config_heading}</h2>\n<pre>{esc(config_text, quote=False)}</pre>\n"
      "</body>\n</html>\n")


# --- robustness (cnn/robustness: each section's table) ------------------------------------

def robustness_tables(results: dict) -> list[Table]:
  """The table of each measured section, in the order they were run (a result
  whose section is no longer registered: its numbers key by key)."""
  measured = [name for name, result in results.items()
              if name not in ("sections", "seconds") and isinstance(result, dict) and result]
  return [robustness.SECTIONS[name].table(results[name]) if name in robustness.SECTIONS
          else generic_table(name, results[name]) for name in measured]


def robustness_markdown(results: dict) -> str:
  return "".join(f"\n## {heading}\n\n{note}\n\n" + markdown_table(header, rows, text)
                 for heading, note, header, rows, text in robustness_tables(results))


def robustness_html(results: dict) -> str:
  esc = html_lib.escape
  return "".join(f"<h2>{esc(heading)}</h2>\n<p>{esc(note)}</p>\n"
                 + html_table(header, rows, text)
                 for heading, note, header, rows, text in robustness_tables(results))
