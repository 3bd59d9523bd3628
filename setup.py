"""Build script for selfattn's C extension; the metadata lives in pyproject.toml."""
import concurrent.futures
import glob
import importlib.util
import os
import sys
import sysconfig

import numpy
import setuptools
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

# pyproject.toml states the license as PEP 639 asks (license = "MIT"), which setuptools reads from
# version 77 on; an older one (a Python 3.11 venv comes with 65) stops with a schema error about
# `project.license`. pip install . fetches a new one itself (build-system.requires); a direct
# `python setup.py ...` or --no-build-isolation uses this environment's.
if int(setuptools.__version__.split(".")[0]) < 77:
    sys.exit(f"selfattn's build needs setuptools 77 or newer; this environment has "
             f"{setuptools.__version__}: pip install -U setuptools (pip install . needs nothing)")

# Every source of the extension, listed explicitly (no globbing: a stray file never slips in).
SOURCES = [
    "csrc/module.c",
    "csrc/platform.c",
    "csrc/dispatch.c",
    "csrc/threadpool.c",
    "csrc/kernels_ref.c",
    "csrc/isa_generic.c",
    "csrc/isa_avx2.c",
    "csrc/isa_avx512.c",
    "csrc/isa_neon.c",
    "csrc/backward_blocked.c",
    "csrc/read_memory.c",
]

HERE = os.path.dirname(os.path.abspath(__file__))


def _source_hash():
    """selfattn/_find_core.py's hash of csrc/, the one definition (that file imports only the
    standard library, so it loads without the package)."""
    spec = importlib.util.spec_from_file_location(
        "selfattn_find_core", os.path.join(HERE, "selfattn", "_find_core.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.source_hash(HERE)


SOURCE_HASH = _source_hash()

# Flags by compiler family. -O3 without -ffast-math: the kernels rely on IEEE infinities and NaN
# (masks are -inf). No -march=native either: instruction sets are chosen at run time
# (csrc/dispatch.c), and each tier file asks for its own with a target pragma.
# -ffp-contract=off: no FMA unless a kernel asks for one (VFMA). gcc in C11 mode already works so;
# clang would otherwise fuse a*b+c inside expressions, and exact zeros (a softmax over one key has
# gradient 0) became 6e-17.
# -g0: Python's own CFLAGS hold -g, which made the installed .so 8 MB of debug info around 1.3 MB
# of code; SELFATTN_CFLAGS come later, so a debugging build (CI's sanitizers) passes -g again.
GCC_LIKE_ARGS = ["-std=c11", "-O3", "-fno-math-errno", "-ffp-contract=off", "-Wall", "-Wextra",
                 "-Wno-unused-parameter", "-g0"]
GCC_LIKE_LINK = ["-pthread"]
# MSVC: C11 with its atomics (Visual Studio 2022 17.5 or newer); /fp:precise is the default.
MSVC_ARGS = ["/O2", "/std:c11", "/experimental:c11atomics", "/W3"]
MSVC_LINK = []


# Without a working C compiler the extension is skipped (Extension(optional=True)) and selfattn
# installs as pure Python: selfattn/_backend.py then runs its NumPy backend and says so at import.
NO_COMPILER = """
**********************************************************************************************
selfattn: the C extension selfattn._core could not be built ({error}).
selfattn is installed without it and will run on its pure-NumPy backend (same results, slower).
To build the extension, install a C compiler (macOS: Xcode Command Line Tools,
`xcode-select --install`; Windows: Microsoft C++ Build Tools; Linux: gcc), then run
`pip install .` again.
**********************************************************************************************
"""


def _missing_headers():
    """A line for NO_COMPILER where Python's own headers are missing (Python.h: a compiler
    alone does not build an extension), else ""."""
    include = sysconfig.get_paths()["include"]
    if os.path.exists(os.path.join(include, "Python.h")):
        return ""
    return (f"Python's headers are missing (no Python.h in {include}), which the build needs "
            f"beside a compiler: install them (Debian, Ubuntu: python3-dev; Fedora: "
            f"python3-devel).\n")


class BuildExt(build_ext):
    """Gives each compiler its own spelling of the flags; SELFATTN_CFLAGS / SELFATTN_LDFLAGS add
    extra ones for special builds (sanitizers, assertions). A build that fails is reported with
    NO_COMPILER and then skipped (the extension is optional)."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as error:
            self.failed = True
            print(NO_COMPILER.format(error=str(error).strip() or type(error).__name__)
                  + _missing_headers(), file=sys.stderr)
            # an earlier build's _core in build/lib (or, --inplace, in selfattn/) would be
            # installed (or imported) as this one, of other sources, after "installed without it"
            built = self.get_ext_fullpath(ext.name)
            for stale in (built, os.path.join(HERE, "selfattn", os.path.basename(built))
                          if self.in_place else None):
                try:
                    if stale and os.path.exists(stale):
                        os.remove(stale)
                except OSError as exc:   # Windows: a .pyd a running Python has loaded
                    print(f"selfattn: could not remove the earlier build {stale} ({exc}); "
                          f"import refuses it if its C sources differ from these.",
                          file=sys.stderr)
            raise

    def run(self):
        # setuptools builds into build/lib even with --inplace (then copies): remember where
        # the extension would have gone, for a failed build's stale one (build_extension)
        self.in_place = self.inplace
        super().run()

    def build_extensions(self):
        msvc = self.compiler.compiler_type == "msvc"
        compile_args = list(MSVC_ARGS if msvc else GCC_LIKE_ARGS)
        link_args = list(MSVC_LINK if msvc else GCC_LIKE_LINK)
        compile_args += os.environ.get("SELFATTN_CFLAGS", "").split()
        link_args += os.environ.get("SELFATTN_LDFLAGS", "").split()
        for ext in self.extensions:
            ext.extra_compile_args = compile_args
            ext.extra_link_args = link_args
        if not msvc:
            self.compiler.compile = self._parallel_compile
        # pip builds in this folder, and setuptools keeps build/ from one `pip install .` to the
        # next: it took a build/ of other flags or another compiler (CC=clang) as up to date
        # (and file dates do not tell an older csrc/ unpacked over the tree: its hash does)
        config = repr((getattr(self.compiler, "compiler_so", self.compiler.compiler_type),
                       compile_args, link_args, sys.version, numpy.__version__, SOURCE_HASH))
        stamp = os.path.join(self.build_temp, "selfattn-build-config.txt")
        try:
            with open(stamp, encoding="utf-8") as f:
                self.force = self.force or f.read() != config
            os.remove(stamp)  # until this build succeeds: a failed one is no build of `config`
        except OSError:
            self.force = True
        self.failed = False
        super().build_extensions()
        if not self.failed:
            os.makedirs(self.build_temp, exist_ok=True)
            with open(stamp, "w", encoding="utf-8") as f:
                f.write(config)

    def _parallel_compile(self, sources, output_dir=None, macros=None, include_dirs=None,
                          debug=0, extra_preargs=None, extra_postargs=None, depends=None):
        """CCompiler.compile with the sources compiled side by side, one per available core
        (build_ext's --parallel N, when given, sets the number): the three instruction-set tier
        files take about 15 s each at -O3, most of a build on one core."""
        macros, objects, extra_postargs, pp_opts, build = self.compiler._setup_compile(
            output_dir, macros, include_dirs, sources, depends, extra_postargs)
        cc_args = self.compiler._get_cc_args(pp_opts, debug, extra_preargs)
        try:
            cores = len(os.sched_getaffinity(0))
        except AttributeError:  # not Linux
            cores = os.cpu_count() or 1
        jobs = max(1, min(int(self.parallel or cores), len(build)))

        def compile_one(obj):
            src, ext = build[obj]
            self.compiler._compile(obj, src, ext, cc_args, extra_postargs, pp_opts)

        # list() so that the first compiler error is raised here, as a serial build raises it
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            list(pool.map(compile_one, [obj for obj in objects if obj in build]))
        return objects


class BuildPy(build_py):
    """Copies the package afresh: the Python files an earlier build left in build/ go first, so
    that a module removed from the source tree is not installed again. The compiled extension
    stays (BuildExt decides whether it is up to date)."""

    def run(self):
        for package in self.packages or ():
            folder = os.path.join(self.build_lib, *package.split("."))
            for name in os.listdir(folder) if os.path.isdir(folder) else ():
                path = os.path.join(folder, name)
                if os.path.isfile(path) and not name.startswith("_core."):
                    os.remove(path)
        super().run()


setup(
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
    ext_modules=[
        Extension(
            "selfattn._core",
            sources=SOURCES,
            # every header and included kernel file: an edit to any of them rebuilds the extension
            depends=sorted(glob.glob("csrc/*.h") + glob.glob("csrc/*.inc")),
            include_dirs=[numpy.get_include(), "csrc"],
            define_macros=[("NPY_TARGET_VERSION", "NPY_1_23_API_VERSION"),
                           ("SELFATTN_SOURCE_HASH", SOURCE_HASH)],
            optional=True,
        )
    ],
)
