"""The borrowed GPU box, emulated here: a rehearsal of a visit before it
spends device time.

  python tools/box_rehearsal.py env [--dir D] [--resolve]   # the box's Python, once
  python tools/box_rehearsal.py run VISIT.json [--results R] [--env D]
  python tools/accelerator_kit.py visit --json --size cpu | python tools/box_rehearsal.py run -

The box (/work/.library/device/README.md, Limits and Notes) runs one bash
command at a time in a copy of the working tree, and its limits are easy to
break by accident and expensive to discover there: 15 minutes of device time
a task, a minute or more to start a machine. `run` applies the same limits
here, so that a visit's mistakes about them show up at no device time and
what is left for the box is what only it has (CUDA, speed, memory):

- a command of at most 2,000 characters, `timeout_s` at most 600 (rc 124 or
  137 past it: the process group is killed), at most 8 `carry` paths of at
  most 200 characters, each one existing and ignored by git;
- what travels: `git ls-files -co --exclude-standard`, the carried paths and
  shared/, 64 MiB in all, copied into a fresh checkout without .git;
- $OUT empty before each command; what comes back from it: at most 8 plain
  files, 16 MiB each, 64 MiB together, at most 2 folders down, every name in
  letters, digits, '.', '_' and '-'; the rest is left out and said why;
- a bare machine: `python3` is Python 3.12 with jax 0.11.2 (CPU here) and the
  box's packages, not TensorFlow, tensorflow-datasets, ml_collections or
  dm_pix; the environment holds PATH, HOME, LANG and OUT only (none of our
  CNN_*, TFDS_*, JAX_* or XLA_* variables); /tmp/cnnbox, where a visit keeps
  what outlives a command, is removed when a visit starts and kept between its
  commands (the box stays warm while a visit is under way).

A visit is a JSON list of commands, as `accelerator_kit.py visit --json` prints
it: `[{"name": ..., "command": ..., "carry": [...], "timeout_s": N}, ...]`.
Every command is checked before the first one runs (a visit refused on its
fifth command must not spend the first four); the visit stops at the first
command that fails. The files that come back land in R/NN-NAME/, what the
command printed (the last 12,000 characters, as the tool returns them) in
R/NN-NAME.output_tail.txt, and R/rehearsal.json sums it up. Exit status 0
when every command succeeded within its limits, 1 when one failed or broke a
limit (a left-out file included: on the box it would be lost), 2 with one
line for a mistake you can fix.

Stricter than the box, or not emulated: each command gets a fresh checkout
(the box keeps ignored build outputs there while warm, but a visit cannot
count on staying warm); a process that started its own session (setsid)
runs on here after the visit (the box ends it when it goes back); Python is
3.12.1 here (3.12.3 there) and jaxlib the CPU build, without PyTorch (see
`build_env`).
"""
import argparse
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script

from cnn.errors import UserError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MIB = 2**20

# The box's limits (/work/.library/device/README.md, "Limits").
MAX_COMMAND_CHARS = 2000
MAX_TIMEOUT_S = 600
MAX_CARRY_PATHS = 8
MAX_CARRY_PATH_CHARS = 200
MAX_TREE_BYTES = 64 * MIB
MAX_FILES_BACK = 8
MAX_FILE_BACK_BYTES = 16 * MIB
MAX_BACK_BYTES = 64 * MIB
MAX_FOLDERS_DOWN = 2  # $OUT/a/b/file comes back, $OUT/a/b/c/file does not
TOO_DEEP_NAMED = 16  # the tool names 16 too-deep folders, then counts the rest
OUTPUT_TAIL_CHARS = 12_000  # the tool's output_tail
GOOD_NAME = re.compile(r"[A-Za-z0-9._-]+")
KILL_GRACE_S = 5.0  # SIGTERM at the limit, SIGKILL this much later (rc 124, then 137)

BOX_DIR = Path("/tmp/cnnbox")  # where a visit keeps what outlives a command
SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

# The box's Python: 3.12 with jax 0.11.2 and these (KINDS.md's list for
# nvidia-h200, the part this project imports); torch is left out here, see env.
PYTHON312 = Path("/root/.pyenv/versions/3.12.1/bin/python3.12")
DEFAULT_ENV = Path("/root/.cache/cnn-box-rehearsal/py312")
VERSIONS_FILE = ROOT / "tools" / "box_rehearsal_versions.txt"
JAX_PINS = ("jax==0.11.2", "jaxlib==0.11.2")
BOX_PACKAGES = ("flax", "optax", "orbax-checkpoint", "tensorstore", "chex", "etils", "numpy",
                "scipy", "scikit-learn", "matplotlib", "pillow", "safetensors", "absl-py",
                "pyyaml", "pytest")
BOX_IMPORTS = ("jax", "flax", "optax", "orbax.checkpoint", "tensorstore", "chex", "etils",
               "numpy", "scipy", "sklearn", "matplotlib", "PIL", "safetensors", "absl", "yaml",
               "pytest")
NOT_ON_BOX = ("tensorflow", "tensorflow_datasets", "ml_collections", "dm_pix")
MARKER = "box-rehearsal-complete.json"

# ------------------------------------------------------------------ the box's Python


def versions_digest(path: Path = VERSIONS_FILE) -> str:
  """The versions file's SHA-256: an env built from another file is rebuilt."""
  return hashlib.sha256(path.read_bytes()).hexdigest()


def complete_env(env_dir: Path) -> dict | None:
  """The marker of a finished build from the current versions file, else
  None: a build killed halfway leaves no marker and is redone from scratch."""
  marker = env_dir / MARKER
  if not marker.is_file() or not VERSIONS_FILE.is_file():
    return None
  done = json.loads(marker.read_text())
  return done if done.get("versions_sha256") == versions_digest() else None


def pip(env_dir: Path, args: list[str], log: Path) -> None:
  """`python -m pip ARGS` in the env, appended to `log`; pip's own settings
  (indexes, certificates) are kept, a PYTHONPATH of ours is not."""
  ours = ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")
  env = {k: v for k, v in os.environ.items() if k not in ours}
  with open(log, "a") as f:
    f.write(f"$ pip {' '.join(args)}\n")
    f.flush()
    done = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", *args], env=env,
                          stdout=f, stderr=subprocess.STDOUT, check=False)
  if done.returncode != 0:
    raise UserError(f"pip {args[0]} failed in {env_dir} (rc {done.returncode}): see {log}")


def resolve_versions(env_dir: Path, log: Path) -> None:
  """Let pip choose the box's packages around the pinned jax, then write what
  it chose to VERSIONS_FILE: later builds install exactly that."""
  pip(env_dir, ["install", "-q", *JAX_PINS, *BOX_PACKAGES], log)
  pins = subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "freeze"],
                        capture_output=True, text=True, check=True).stdout.splitlines()
  header = (f"# The rehearsal box's Python 3.12 packages (tools/box_rehearsal.py env): what pip\n"
            f"# resolved for {' '.join((*JAX_PINS, *BOX_PACKAGES))}\n"
            f"# on {datetime.date.today().isoformat()}. Builds install these with --no-deps.\n"
            f"# Re-resolve: python tools/box_rehearsal.py env --resolve\n")
  VERSIONS_FILE.write_text(header + "\n".join(sorted(pins, key=str.lower)) + "\n")


CHECK_ENV = f"""
import importlib, importlib.util, sys
present = [m for m in {NOT_ON_BOX!r} if importlib.util.find_spec(m)]
if present:
  sys.exit("not on the box but importable here: " + ", ".join(present))
for name in {BOX_IMPORTS!r}:
  importlib.import_module(name)
import jax, jax.numpy as jnp
assert jax.__version__ == "0.11.2", jax.__version__
total = jax.jit(lambda x: (2 * x).sum())(jnp.arange(4.0))
assert float(total) == 12.0, total
print(sys.version.split()[0], jax.__version__, jax.devices())
"""


def check_env(env_dir: Path) -> str:
  """What the box promises, asserted in the env with a box-like environment:
  the forbidden packages absent, the others importable, jax.jit running.
  Returns its one line (Python, jax, devices)."""
  done = subprocess.run([str(env_dir / "bin" / "python3"), "-c", CHECK_ENV],
                        env=bare_env(env_dir, Path(tempfile.gettempdir()), None),
                        capture_output=True, text=True, check=False)
  if done.returncode != 0:
    raise UserError(f"the rehearsal env {env_dir} is not the box's: "
                    f"{(done.stderr.strip().splitlines() or ['?'])[-1]}")
  return done.stdout.strip()


def build_env(env_dir: Path = DEFAULT_ENV, *, resolve: bool = False) -> Path:
  """The box's Python (3.12, jax 0.11.2 on the CPU, VERSIONS_FILE), built once:
  reused while its marker says it was finished from the current versions
  file. `resolve` (or no versions file yet) lets pip choose and rewrites the
  file. torch is left out: its CPU build for cp312 comes from PyTorch's own
  index, which this machine cannot reach, and PyPI's is the CUDA build
  (gigabytes of nvidia-* wheels); so the kit's throughput pieces take their
  "no torch" branch in a rehearsal. Returns env_dir."""
  if not resolve and complete_env(env_dir):
    return env_dir
  python312 = PYTHON312 if PYTHON312.is_file() else shutil.which("python3.12")
  if not python312:
    raise UserError(f"no Python 3.12 at {PYTHON312} or on PATH: pyenv install 3.12.1")
  start = time.monotonic()
  shutil.rmtree(env_dir, ignore_errors=True)
  env_dir.parent.mkdir(parents=True, exist_ok=True)
  subprocess.run([str(python312), "-m", "venv", str(env_dir)], check=True)
  log = env_dir / "build.log"
  if resolve or not VERSIONS_FILE.is_file():
    resolve_versions(env_dir, log)
  else:
    pip(env_dir, ["install", "-q", "--no-deps", "-r", str(VERSIONS_FILE)], log)
  pip(env_dir, ["check"], log)
  line = check_env(env_dir)
  seconds = round(time.monotonic() - start, 1)
  (env_dir / MARKER).write_text(json.dumps(
      {"versions_sha256": versions_digest(), "check": line, "build_seconds": seconds,
       "built": datetime.datetime.now().isoformat(timespec="seconds"), "torch": "left out"},
      indent=1) + "\n")
  return env_dir


# ------------------------------------------------------------------ what travels


@dataclasses.dataclass
class Command:
  """One command of a visit, as the tool takes it."""
  name: str
  command: str
  carry: list[str]
  timeout_s: int


def parse_visit(visit) -> list[Command]:
  """The visit's JSON as Commands; a shape the tool could not take at all is
  the user's to fix (limits are checked later, command by command)."""
  if not isinstance(visit, list) or not visit:
    raise UserError("a visit is a non-empty JSON list of "
                    '{"name", "command", "carry", "timeout_s"} objects')
  commands = []
  for i, c in enumerate(visit, 1):
    if (not isinstance(c, dict) or not isinstance(c.get("name"), str) or not c["name"]
        or not isinstance(c.get("command"), str)):
      raise UserError(f"visit command {i} needs a non-empty \"name\" and a \"command\" string")
    carry, timeout_s = c.get("carry", []), c.get("timeout_s", MAX_TIMEOUT_S)
    if not isinstance(carry, list) or not all(isinstance(p, str) for p in carry):
      raise UserError(f"visit command {i} ({c['name']}): \"carry\" must be a list of paths")
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int):
      raise UserError(f"visit command {i} ({c['name']}): \"timeout_s\" must be whole seconds")
    commands.append(Command(c["name"], c["command"], carry, timeout_s))
  return commands


def git_lines(repo: Path, *args: str) -> list[str]:
  """NUL-separated output of a git command in `repo` (names kept byte-exact)."""
  done = subprocess.run(["git", *args], cwd=repo, capture_output=True, check=False)
  if done.returncode != 0:
    raise UserError(f"{repo} is not a git checkout ({done.stderr.decode().strip()})")
  return [os.fsdecode(n) for n in done.stdout.split(b"\0") if n]


def walk_paths(repo: Path, top: str) -> list[str]:
  """`top` and everything below it, links not followed (a link travels as a link)."""
  found = [top]
  if (repo / top).is_dir() and not (repo / top).is_symlink():
    for root, dirs, files in os.walk(repo / top):
      rel = os.path.relpath(root, repo)
      found += [os.path.join(rel, n) for n in sorted(dirs) + sorted(files)]
  return found


def tree_paths(repo: Path) -> list[str]:
  """What travels with every command: tracked and untracked-not-ignored files,
  and shared/ where the checkout has one."""
  paths = git_lines(repo, "ls-files", "-z", "-co", "--exclude-standard")
  if (repo / "shared").is_dir():
    paths += walk_paths(repo, "shared")
  return [p for p in paths if os.path.lexists(repo / p)]


def carry_problem(repo: Path, path: str) -> str | None:
  """Why the tool would not carry `path`, or None: carry is for what git
  ignores, inside the checkout; a tracked path travels anyway."""
  if len(path) > MAX_CARRY_PATH_CHARS:
    return f"carry path {path[:40]!r}... is {len(path)} characters, over {MAX_CARRY_PATH_CHARS}"
  if os.path.isabs(path) or ".." in Path(path).parts or not path.strip("./"):
    return f"carry path {path!r} is not a path inside the checkout"
  if not os.path.lexists(repo / path):
    return f"carry path {path!r} does not exist"
  ignored = subprocess.run(["git", "check-ignore", "-q", "--", path], cwd=repo, check=False)
  if ignored.returncode != 0:
    return f"carry path {path!r} is not ignored by git (tracked or untracked files travel anyway)"
  return None


def sent_bytes(repo: Path, paths: list[str]) -> int:
  """The plain files' sizes added up, as the tool counts the 64 MiB."""
  return sum(os.lstat(repo / p).st_size for p in paths if (repo / p).is_file()
             and not (repo / p).is_symlink())


def limit_problems(repo: Path, c: Command, tree: list[str]) -> tuple[list[str], list[str], int]:
  """Every limit `c` breaks before it runs, the paths it sends and their size."""
  problems = []
  if len(c.command) > MAX_COMMAND_CHARS:
    problems.append(f"command is {len(c.command)} characters, over {MAX_COMMAND_CHARS}")
  if not 1 <= c.timeout_s <= MAX_TIMEOUT_S:
    problems.append(f"timeout_s {c.timeout_s} is outside 1..{MAX_TIMEOUT_S}")
  if len(c.carry) > MAX_CARRY_PATHS:
    problems.append(f"{len(c.carry)} carry paths, over {MAX_CARRY_PATHS}")
  carried = []
  for path in c.carry:
    why = carry_problem(repo, path)
    if why:
      problems.append(why)
    else:
      carried.append(path)
  paths = list(dict.fromkeys(tree + [q for p in carried for q in walk_paths(repo, p)]))
  size = sent_bytes(repo, paths)
  if size > MAX_TREE_BYTES:
    problems.append(f"sends {size / MIB:.1f} MiB, over {MAX_TREE_BYTES // MIB} MiB")
  return problems, paths, size


def copy_tree(repo: Path, paths: list[str], checkout: Path) -> None:
  """The checkout the command runs in: those paths and nothing else (no .git)."""
  for p in paths:
    src, dst = repo / p, checkout / p
    dst.parent.mkdir(parents=True, exist_ok=True)
    if src.is_symlink():
      os.symlink(os.readlink(src), dst)
    elif src.is_dir():
      dst.mkdir(exist_ok=True)
    elif src.is_file():
      shutil.copy2(src, dst)


# ------------------------------------------------------------------ one command on the box


def bare_env(env_dir: Path | None, home: Path, out: Path | None) -> dict:
  """The box's environment: PATH (the rehearsal Python first), HOME, LANG and
  OUT; nothing of ours, so a command that needs a variable must set it."""
  path = f"{env_dir / 'bin'}:{SYSTEM_PATH}" if env_dir else SYSTEM_PATH
  env = {"PATH": path, "HOME": str(home), "LANG": "C.UTF-8"}
  return env | ({"OUT": str(out)} if out else {})


def run_bash(command: str, cwd: Path, env: dict, timeout_s: int, log: Path) -> int:
  """`bash -c COMMAND` with the tool's time limit: at timeout_s its process
  group gets SIGTERM (rc 124), KILL_GRACE_S later SIGKILL (rc 137); whatever
  it left running when it returned is ended too, as on the box."""
  with open(log, "wb") as f:
    proc = subprocess.Popen(["bash", "-c", command], cwd=cwd, env=env, stdout=f,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
      rc = proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
      signal_group(proc.pid, signal.SIGTERM)
      try:
        proc.wait(timeout=KILL_GRACE_S)
        rc = 124
      except subprocess.TimeoutExpired:
        signal_group(proc.pid, signal.SIGKILL)
        proc.wait()
        rc = 137
    signal_group(proc.pid, signal.SIGKILL)
  return 128 - rc if rc < 0 else rc  # killed by a signal: as a shell reports it


def signal_group(pgid: int, sig: int) -> None:
  """Signal a process group that may already be gone."""
  try:
    os.killpg(pgid, sig)
  except (ProcessLookupError, PermissionError):
    pass


def shown(rel: str) -> str:
  """A left-out path as the tool writes it: odd names as Python's ascii() does."""
  return rel if all(GOOD_NAME.fullmatch(part) for part in rel.split("/")) else ascii(rel)


def why_not_back(path: Path, count: int, total: int) -> str | None:
  """Why the tool leaves this file of $OUT out, `count` files of `total` bytes
  already coming back; None when it comes back."""
  if path.is_symlink():
    return "a link"
  if not path.is_file():
    return "not a plain file"
  if not GOOD_NAME.fullmatch(path.name):
    return "a name with odd characters"
  size = path.stat().st_size
  if size > MAX_FILE_BACK_BYTES:
    return f"over {MAX_FILE_BACK_BYTES // MIB} MiB"
  if count == MAX_FILES_BACK:
    return f"over {MAX_FILES_BACK} files"
  if total + size > MAX_BACK_BYTES:
    return f"over {MAX_BACK_BYTES // MIB} MiB together"
  return None


def files_back(out: Path) -> tuple[list[str], list[str]]:
  """The tool's return rules applied to $OUT: (paths that come back, 'PATH
  (why)' for each thing left out). Which of too many files come back is the
  tool's choice; here the first found, a folder's files before its
  subfolders', names in order."""
  back, left, deep, total = [], [], [], 0
  for root, dirs, files in os.walk(out):
    dirs.sort()
    rel_root = os.path.relpath(root, out)
    level = 0 if rel_root == "." else len(rel_root.split("/"))
    for d in sorted(dirs):
      rel = os.path.normpath(os.path.join(rel_root, d))
      if os.path.islink(Path(root) / d):
        left.append(f"{shown(rel)} (a link)")
      elif not GOOD_NAME.fullmatch(d):
        left.append(f"{shown(rel)} (a name with odd characters)")
      elif level >= MAX_FOLDERS_DOWN:
        deep.append(rel)
      else:
        continue
      dirs.remove(d)
    for name in sorted(files):
      rel, path = os.path.normpath(os.path.join(rel_root, name)), Path(root) / name
      why = why_not_back(path, len(back), total)
      if why:
        left.append(f"{shown(rel)} ({why})")
      else:
        back.append(rel)
        total += path.stat().st_size
  left += [f"{shown(d)} (a folder too deep)" for d in deep[:TOO_DEEP_NAMED]]
  if len(deep) > TOO_DEEP_NAMED:
    left.append(f"{len(deep) - TOO_DEEP_NAMED} more folders too deep")
  return back, left


@dataclasses.dataclass
class Result:
  """What a command did on the emulated box, as the tool would report it."""
  name: str
  rc: int | None = None  # None: not run (refused, or an earlier command failed)
  seconds: float = 0.0
  sent_mib: float = 0.0
  back: list[str] = dataclasses.field(default_factory=list)
  back_mib: float = 0.0
  left_out: list[str] = dataclasses.field(default_factory=list)
  refused: list[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    """Succeeded within every limit, nothing it wrote to $OUT lost."""
    return self.rc == 0 and not self.left_out and not self.refused

  def line(self, index: int) -> str:
    """The one line `run` prints for it."""
    head = f"{index:02d} {self.name}"
    if self.refused:
      return f"{head}: refused: {'; '.join(self.refused)}"
    if self.rc is None:
      return f"{head}: not run"
    return (f"{head}: rc {self.rc}, {self.seconds:.1f} s, sent {self.sent_mib:.1f} MiB, "
            f"back {len(self.back)} files ({self.back_mib:.2f} MiB), "
            f"left out: {', '.join(self.left_out) or 'none'}")


def folder_name(index: int, name: str) -> str:
  """R/NN-NAME: the command's index and its name made safe for a folder."""
  return f"{index:02d}-{re.sub(r'[^A-Za-z0-9._-]', '_', name)}"


def run_command(c: Command, paths: list[str], size: int, repo: Path, scratch: Path,
                env_dir: Path | None, landed: Path) -> Result:
  """One command on the warm box: a fresh checkout and an empty $OUT, the
  command under its limit, then what comes back copied to `landed`."""
  checkout, out, log = scratch / "checkout", scratch / "out", scratch / "output.log"
  for d in (checkout, out):
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir()
  copy_tree(repo, paths, checkout)
  start = time.monotonic()
  rc = run_bash(c.command, checkout, bare_env(env_dir, scratch / "home", out), c.timeout_s, log)
  seconds = time.monotonic() - start
  back, left = files_back(out)
  landed.mkdir(parents=True)
  for rel in back:
    (landed / rel).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(out / rel, landed / rel)
  tail = log.read_bytes().decode(errors="replace")[-OUTPUT_TAIL_CHARS:]
  landed.with_name(landed.name + ".output_tail.txt").write_text(tail)
  shutil.rmtree(checkout, ignore_errors=True)
  return Result(c.name, rc, seconds, size / MIB, back,
                sum((out / r).stat().st_size for r in back) / MIB, left)


# ------------------------------------------------------------------ a visit


def fresh_results(results: Path) -> None:
  """An empty results folder; an earlier rehearsal's (it has rehearsal.json)
  is replaced, anything else is not ours to delete."""
  if results.exists() and any(results.iterdir()):
    if not (results / "rehearsal.json").is_file():
      raise UserError(f"{results} is not empty and holds no earlier rehearsal: "
                      f"name another --results folder")
    shutil.rmtree(results)
  results.mkdir(parents=True, exist_ok=True)


def hold_box(box_dir: Path):
  """A lock on the emulated box: two rehearsals at once would remove each
  other's /tmp/cnnbox. Returns the open lock file (held until closed)."""
  lock = open(box_dir.parent / f".{box_dir.name}.rehearsal-lock", "w")
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    lock.close()
    raise UserError(f"another rehearsal is using {box_dir}: wait for it to finish") from None
  return lock


def run_visit(visit: list[dict], results: Path, *, env_dir: Path | None = DEFAULT_ENV,
              repo: Path = ROOT, box_dir: Path = BOX_DIR,
              say: Callable[[str], None] = print) -> list[Result]:
  """Emulate one visit on a fresh box and return each command's Result.

  Every command's limits are checked first; none runs if one is refused.
  Then they run in order until one fails, on one warm machine: `box_dir`
  (the visit's /tmp/cnnbox) is removed at the start and at the end, and kept
  between commands. `env_dir` is the rehearsal Python put first on PATH
  (None: the system's, for commands that need only bash). The files that
  come back are copied to results/NN-NAME/."""
  commands, tree = parse_visit(visit), tree_paths(repo)
  checked = [limit_problems(repo, c, tree) for c in commands]
  outcome = [Result(c.name, refused=problems) for c, (problems, _, _) in zip(commands, checked)]
  fresh_results(results)
  if not any(r.refused for r in outcome):
    with hold_box(box_dir), tempfile.TemporaryDirectory(prefix="box-rehearsal-") as scratch:
      shutil.rmtree(box_dir, ignore_errors=True)
      (Path(scratch) / "home").mkdir()
      try:
        for i, (c, (_, paths, size)) in enumerate(zip(commands, checked), 1):
          outcome[i - 1] = run_command(c, paths, size, repo, Path(scratch), env_dir,
                                       results / folder_name(i, c.name))
          say(outcome[i - 1].line(i))
          if not outcome[i - 1].ok:
            break
        for j in range(i + 1, len(commands) + 1):
          say(outcome[j - 1].line(j))
      finally:
        shutil.rmtree(box_dir, ignore_errors=True)
  else:
    for i, r in enumerate(outcome, 1):
      say(r.line(i))
  (results / "rehearsal.json").write_text(json.dumps(
      [dataclasses.asdict(r) | {"ok": r.ok} for r in outcome], indent=1) + "\n")
  return outcome


# ------------------------------------------------------------------ command line


def command_env(args: argparse.Namespace) -> int:
  reused = not args.resolve and complete_env(args.dir)
  build_env(args.dir, resolve=args.resolve)
  done = json.loads((args.dir / MARKER).read_text())
  print(f"{'reused' if reused else 'built'} {args.dir} ({done['build_seconds']} s to build): "
        f"Python/jax/devices {done['check']}; torch {done['torch']}")
  return 0


def read_visit(source: str) -> list:
  """The visit's JSON from a file, or from standard input for '-'."""
  try:
    return json.loads(sys.stdin.read() if source == "-" else Path(source).read_text())
  except (OSError, json.JSONDecodeError) as e:
    raise UserError(f"cannot read the visit {source}: {e}") from None


def command_run(args: argparse.Namespace) -> int:
  if not complete_env(args.env):
    raise UserError(f"no finished rehearsal env at {args.env}: "
                    f"python tools/box_rehearsal.py env --dir {args.env}")
  outcome = run_visit(read_visit(args.visit), args.results.resolve(), env_dir=args.env)
  failed = [r.name for r in outcome if not r.ok]
  print(f"visit {'rehearsed: every command ok' if not failed else 'failed at ' + failed[0]}; "
        f"results in {args.results}")
  return 1 if failed else 0


def parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  env = sub.add_parser("env", help="build the box's Python 3.12 env once")
  env.add_argument("--dir", type=Path, default=DEFAULT_ENV, help=f"default {DEFAULT_ENV}")
  env.add_argument("--resolve", action="store_true",
                   help=f"let pip choose again and rewrite {VERSIONS_FILE.relative_to(ROOT)}")
  env.set_defaults(run=command_env)
  run = sub.add_parser("run", help="emulate one visit on a fresh box")
  run.add_argument("visit", help="the visit's JSON file, or - for standard input")
  run.add_argument("--results", type=Path, default=ROOT / "runs" / "box-rehearsal",
                   help="where what comes back lands, NN-NAME/ per command (runs/box-rehearsal)")
  run.add_argument("--env", type=Path, default=DEFAULT_ENV, help="the env that `env` built")
  run.set_defaults(run=command_run)
  return p


def main(argv: list[str]) -> int:
  args = parser().parse_args(argv)
  try:
    return args.run(args)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
