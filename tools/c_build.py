"""Small C libraries the development tools build on first use (the stand-in's no-op libcuda.so.1), as Triton
builds its own launchers: once per source, in Triton's cache."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile


_FAILED = "build-failed.txt"  # a failed build's command and message, kept beside the library it did not make


def c_compiler() -> str | None:
    """The C compiler Triton's own builds use: $CC, else gcc, else cc; None where there is none."""
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def build_shared_library(source: str, name: str, filename: str, flags: tuple[str, ...] = ()) -> str:
    """The path of the C ``source`` built as the shared library ``filename`` in
    ``<Triton's cache>/<name>-<digest>`` (digest of the source, the flags and the compiler), built only where
    it is not there yet: written aside, then moved into place, so a concurrent or interrupted build leaves no
    partial file. ``flags`` follow the source on the command line (libraries to link included). Raises
    RuntimeError where no compiler is found or the build fails (with the compiler's message). A failed build
    is remembered (``build-failed.txt`` beside where the library would be, written the same way), so later
    processes raise at once instead of compiling again; delete that file to retry."""
    from triton import knobs

    compiler = c_compiler()
    if compiler is None:
        raise RuntimeError(f"building {filename} needs a C compiler (gcc or cc, or $CC)")
    digest = hashlib.sha256("\0".join((source, compiler, *flags)).encode()).hexdigest()[:16]
    directory = os.path.join(knobs.cache.dir, f"{name}-{digest}")
    library, failed = os.path.join(directory, filename), os.path.join(directory, _FAILED)
    if os.path.exists(library):
        return library
    if os.path.exists(failed):
        with open(failed, encoding="utf-8") as f:
            raise RuntimeError(f"building {filename} failed before (delete {failed} to retry):\n{f.read()}")
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as work:
        source_path = os.path.join(work, f"{name}.c")
        built = os.path.join(work, filename)
        with open(source_path, "w") as f:
            f.write(source)
        done = subprocess.run([compiler, "-O2", "-shared", "-fPIC", source_path, *flags, "-o", built],
                              capture_output=True, text=True)
        if done.returncode:
            message = f"{' '.join(done.args)}\n{done.stderr[-2000:]}"
            with open(os.path.join(work, _FAILED), "w", encoding="utf-8") as f:
                f.write(message)
            os.replace(os.path.join(work, _FAILED), failed)
            raise RuntimeError(f"building {filename} with {compiler} failed:\n{message}")
        os.replace(built, library)
    return library
