"""Small C and C++ libraries built on first use, as Triton builds its own launchers: once per source, in
Triton's cache."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile


def c_compiler() -> str | None:
    """The C compiler Triton's own builds use: $CC, else gcc, else cc; None where there is none."""
    return os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")


def cxx_compiler() -> str | None:
    """The C++ compiler: $CXX, else g++, else c++; None where there is none."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def build_shared_library(source: str, name: str, filename: str, flags: tuple[str, ...] = (),
                         language: str = "c") -> str:
    """The path of ``source`` (``language`` 'c' or 'c++') built as the shared library ``filename`` in
    ``<Triton's cache>/<name>-<digest>`` (digest of the source, the flags and the compiler), built only where
    it is not there yet: written aside, then moved into place, so a concurrent or interrupted build leaves no
    partial file. ``flags`` follow the source on the command line (libraries to link included). Raises
    RuntimeError where no compiler is found or the build fails (with the compiler's message)."""
    from triton import knobs

    if language not in ("c", "c++"):
        raise ValueError(f"build_shared_library: language must be 'c' or 'c++', got {language!r}")
    compiler = c_compiler() if language == "c" else cxx_compiler()
    if compiler is None:
        raise RuntimeError(f"building {filename} needs a {language.upper()} compiler "
                           + ("(gcc or cc, or $CC)" if language == "c" else "(g++ or c++, or $CXX)"))
    digest = hashlib.sha256("\0".join((source, compiler, *flags)).encode()).hexdigest()[:16]
    directory = os.path.join(knobs.cache.dir, f"{name}-{digest}")
    library = os.path.join(directory, filename)
    if os.path.exists(library):
        return library
    os.makedirs(directory, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=directory) as work:
        source_path = os.path.join(work, f"{name}.{'c' if language == 'c' else 'cpp'}")
        built = os.path.join(work, filename)
        with open(source_path, "w") as f:
            f.write(source)
        done = subprocess.run([compiler, "-O2", "-shared", "-fPIC", source_path, *flags, "-o", built],
                              capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"building {filename} with {compiler} failed:\n{done.stderr[-2000:]}")
        os.replace(built, library)
    return library
