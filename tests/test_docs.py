"""README.md and docs/*.md: a README that fits on a few screens, links that
lead somewhere, and no run log in the user docs.

The README is what a newcomer reads first, so it stays short and points into
docs/; a section moved between files breaks every link to it, which no reader
reports. Both are cheap to check and easy to break when text is moved."""
import re
from pathlib import Path

import pytest

from conftest import REPO

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
MAX_README_LINES = 250
# The history of how a number was obtained belongs in git, not in the user docs.
SESSION_HISTORY = ("this session", "every session", "last session", "next session",
                   "resumed every")

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
GENERATED = re.compile(r"<!-- ([\w-]+):begin -->.*?<!-- \1:end -->", re.S)


def prose(text: str) -> str:
  """The text a link can live in: fenced code blocks and code spans removed."""
  return CODE_SPAN.sub("", FENCE.sub("", text))


def anchor(heading: str) -> str:
  """GitHub's id for a heading: lower case, punctuation dropped, spaces to hyphens."""
  return re.sub(r"[^\w\- ]", "", CODE_SPAN.sub(lambda m: m.group()[1:-1], heading)
                .strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
  headings = re.findall(r"^#+ (.+)$", FENCE.sub("", path.read_text()), re.M)
  return {anchor(h) for h in headings}


def test_readme_fits_on_a_few_screens():
  lines = len(README.read_text().splitlines())
  assert lines <= MAX_README_LINES, f"README.md has {lines} lines; move detail into docs/"


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_to_a_file_and_heading_that_exist(page):
  broken = []
  for target in LINK.findall(prose(page.read_text())):
    if re.match(r"[a-z]+:", target):  # https:, mailto:
      continue
    path, _, fragment = target.partition("#")
    file = (page.parent / path).resolve() if path else page
    if not file.exists():
      broken.append(f"{target}: no file {file.relative_to(REPO)}")
    elif fragment and file.suffix == ".md" and fragment not in anchors(file):
      broken.append(f"{target}: no heading #{fragment} in {file.relative_to(REPO)}")
  assert not broken, f"{page.relative_to(REPO)}: " + "; ".join(broken)


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: str(p.relative_to(REPO)))
def test_user_docs_carry_no_session_history(page):
  """Hand-written text only: a generated block is fixed in its generator."""
  text = GENERATED.sub("", page.read_text()).lower()
  found = [phrase for phrase in SESSION_HISTORY if phrase in text]
  assert not found, f"{page.relative_to(REPO)} reads like a run log: {found}"


def test_the_docs_folder_is_linked_from_the_readme():
  linked = {(README.parent / t.partition("#")[0]).resolve()
            for t in LINK.findall(prose(README.read_text()))}
  assert DOCS and not [p.name for p in DOCS if p.resolve() not in linked]
