"""README.md as a user reads it: at most 250 lines, every Python snippet self-contained and runnable, every
local link and every command's module present."""
import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
SNIPPETS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_is_short():
    assert len(README.splitlines()) <= 250


@pytest.mark.parametrize("index", range(len(SNIPPETS)))
def test_snippet_runs_as_written(index, tmp_path):
    """Each snippet in a fresh process, from an empty folder, as a user pastes it (no interpreter: on this
    machine backend='auto' runs F.conv2d, on a GPU the kernels)."""
    script = tmp_path / "snippet.py"
    script.write_text(SNIPPETS[index])
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, SNIPPETS[index] + done.stderr[-3000:]


def test_there_are_snippets():
    assert len(SNIPPETS) >= 3


def test_local_links_and_tool_modules_exist():
    for target in re.findall(r"\]\(([^)#:]+)\)", README):
        assert (ROOT / target).exists(), target
    for module in re.findall(r"python -m (tools\.[a-z_]+)", README):
        path = ROOT / module.replace(".", "/")
        assert path.with_suffix(".py").exists() or path.is_dir(), module
    for path in re.findall(r"python (examples/[a-z_]+\.py)", README):
        assert (ROOT / path).exists(), path
