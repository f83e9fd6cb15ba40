"""c_build: libraries built once per source, in Triton's cache, with no partial file left by a failed build,
and a failed build remembered so that later processes do not compile it again."""
import os

import pytest

from tools import c_build
from tools.c_build import build_shared_library, c_compiler

pytestmark = pytest.mark.skipif(c_compiler() is None, reason="needs a C compiler")


@pytest.fixture
def cache(tmp_path, monkeypatch):
    from triton import knobs

    monkeypatch.setattr(knobs.cache, "dir", str(tmp_path))
    return tmp_path


def test_a_library_is_built_once_and_found_after(cache):
    path = build_shared_library("int answer(void) { return 42; }\n", "answer", "libanswer.so")
    assert os.path.exists(path) and os.path.dirname(os.path.dirname(path)) == str(cache)
    stamp = os.stat(path).st_mtime_ns
    assert build_shared_library("int answer(void) { return 42; }\n", "answer", "libanswer.so") == path
    assert os.stat(path).st_mtime_ns == stamp  # not built again
    assert os.listdir(os.path.dirname(path)) == ["libanswer.so"]  # the work directory is gone


def test_a_failed_build_leaves_no_library_and_is_not_retried(cache, monkeypatch):
    source = "int broken(void) { return }\n"
    with pytest.raises(RuntimeError, match="building libbroken.so with .* failed") as first:
        build_shared_library(source, "broken", "libbroken.so")
    assert "error" in str(first.value)  # the compiler's message
    directory, = (cache / name for name in os.listdir(cache))
    assert sorted(os.listdir(directory)) == ["build-failed.txt"]  # no library, no work directory
    def no_compile(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(c_build.subprocess, "run", no_compile)
    with pytest.raises(RuntimeError, match="failed before") as again:
        build_shared_library(source, "broken", "libbroken.so")
    assert "broken" in str(again.value)

