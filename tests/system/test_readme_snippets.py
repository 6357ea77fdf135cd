"""Every Python block of README.md runs as written: the blocks are read from the README itself
(so they cannot drift from it), each in a fresh interpreter, in a folder holding what the
README's commands before it would have left there (``runs/its/best.pt`` from ``iteach-fast
train ... --out-dir runs/its``)."""
import os
import re
import subprocess
import sys

import pytest

from iteach_fast.training.config import TrainConfig
from iteach_fast.training.loop import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
README = os.path.join(ROOT, "README.md")


def python_blocks(text: str) -> list[tuple[str, str]]:
    """``(the heading above it, the code)`` of every ```python block of a Markdown text."""
    blocks, heading = [], "top"
    for match in re.finditer(r"^(#+ [^\n]*)$|^```python\n(.*?)^```", text, re.M | re.S):
        if match.group(1):
            heading = match.group(1).lstrip("# ").strip()
        else:
            blocks.append((heading, match.group(2)))
    return blocks


BLOCKS = python_blocks(open(README, encoding="utf-8").read())


def test_the_readme_has_its_snippets():
    headings = [h for h, _ in BLOCKS]
    assert {"The operators", "The model", "Real-time (streaming) ERC", "In Python: a trained checkpoint"} <= \
        set(headings), headings


def test_the_extractor_finds_each_block_under_its_heading():
    text = "# A\n```python\nx = 1\n```\n## B\ntext\n```python\ny = 2\n```\n```bash\nz\n```\n"
    assert python_blocks(text) == [("A", "x = 1\n"), ("B", "y = 2\n")]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_keys):
    """A folder where ``iteach-fast train ... --out-dir runs/its`` has run (the tiny run)."""
    folder = tmp_path_factory.mktemp("readme")
    train(TrainConfig.from_dict({**tiny_keys, "out_dir": str(folder / "runs" / "its")}).validate(),
          log=lambda *a: None)
    return folder


@pytest.mark.parametrize("heading,code", BLOCKS, ids=[f"{i}-{h}" for i, (h, _) in enumerate(BLOCKS)])
def test_readme_snippet_runs_as_written(heading, code, workdir):
    proc = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"the README's snippet under {heading!r} failed:\n{proc.stderr[-3000:]}"
