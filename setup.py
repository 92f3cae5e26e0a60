"""Build the Cython core and ship the compiled SPIR-V shaders.

Every ``vyrecache/_core/*.pyx`` becomes one extension module.  When
``glslangValidator`` is on PATH, ``shaders/*.comp`` are recompiled into
``vyrecache/shaders/*.spv`` first; otherwise the shipped SPIR-V is used, so an
install from the sdist needs no shader compiler.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

MIN_CYTHON = (3, 0, 8)
HERE = Path(__file__).resolve().parent


def require_cython():
    try:
        import Cython
        from Cython.Build import cythonize
    except ImportError:
        sys.exit("vyrecache needs Cython >= %s to build. Fix: pip install 'Cython>=%s'"
                 % (".".join(map(str, MIN_CYTHON)), ".".join(map(str, MIN_CYTHON))))
    found = tuple(int(part) for part in Cython.__version__.split(".")[:3] if part.isdigit())
    if found < MIN_CYTHON:
        sys.exit("vyrecache needs Cython >= %s, found %s. Fix: pip install -U 'Cython>=%s'"
                 % (".".join(map(str, MIN_CYTHON)), Cython.__version__, ".".join(map(str, MIN_CYTHON))))
    return cythonize


def compile_shaders():
    """Recompile shaders/*.comp into the package when the compiler is present."""
    compiler = shutil.which("glslangValidator")
    sources = sorted((HERE / "shaders").glob("*.comp"))
    if compiler is None or not sources:
        return
    out_dir = HERE / "vyrecache" / "shaders"
    out_dir.mkdir(exist_ok=True)
    for source in sources:
        target = out_dir / (source.stem + ".spv")
        subprocess.run([compiler, "-V", "--target-env", "vulkan1.1", "-o", str(target), str(source)],
                       check=True, stdout=subprocess.DEVNULL)


def extensions():
    import numpy

    debug = os.environ.get("VYRECACHE_DEBUG") == "1"
    macros = [("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")]
    if debug:
        macros.append(("VYRECACHE_DEBUG", "1"))
    flags = (["-O0", "-g"] if debug else ["-O3"]) + ["-pthread"]
    # VYRECACHE_ONLY=engine,allocator builds just those modules (a quick edit-build loop).
    only = set(filter(None, os.environ.get("VYRECACHE_ONLY", "").split(",")))
    modules = []
    for pyx in sorted((HERE / "vyrecache" / "_core").glob("*.pyx")):
        if only and pyx.stem not in only:
            continue
        modules.append(Extension(
            "vyrecache._core." + pyx.stem,
            [str(pyx.relative_to(HERE))],
            include_dirs=[numpy.get_include(), str(HERE / "vyrecache" / "_core")],
            define_macros=macros,
            extra_compile_args=flags,
            extra_link_args=["-pthread"],
        ))
    return modules


class ParallelBuildExt(build_ext):
    """build_ext that compiles the extensions on every core unless told otherwise (-j N).

    pip cannot pass -j, and compiling the core modules one after another is most
    of the time an install from the sdist takes.
    """

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = os.cpu_count() or 1

    def build_extensions(self):
        # GCC caps how much inlining may grow a translation unit (inline-unit-growth, 40% by
        # default).  Cython's generated code is large, so the cap is reached before the engine's
        # hash lookup is inlined into its batch loops and access(), where a call with its register
        # saves is a measurable part of a key's cost (BENCHMARKS.md, "Inlining past GCC's
        # unit-growth cap").
        if os.environ.get("VYRECACHE_DEBUG") != "1" and compiler_is_gcc(self.compiler.compiler_so[0]):
            for extension in self.extensions:
                extension.extra_compile_args = extension.extra_compile_args + [
                    "--param=inline-unit-growth=200"]
        super().build_extensions()


def compiler_is_gcc(executable):
    try:
        banner = subprocess.run([executable, "--version"], capture_output=True, text=True,
                                timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return False
    return "Free Software Foundation" in banner and "clang" not in banner.lower()


cythonize = require_cython()
compile_shaders()
setup(
    cmdclass={"build_ext": ParallelBuildExt},
    ext_modules=cythonize(
        extensions(),
        language_level=3,
        # binding=False: methods stay plain method descriptors, which CPython calls through its
        # specialised fast path, faster than Cython's function objects (BENCHMARKS.md, "The call
        # path").  The "clinic" signatures keep inspect.signature() and help() working on them.
        compiler_directives={"embedsignature": True, "embedsignature.format": "clinic",
                             "binding": False},
    ),
)
