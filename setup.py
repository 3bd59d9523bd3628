"""Build script for selfattn's C extension; the metadata lives in pyproject.toml."""
import os

import numpy
from setuptools import Extension, setup

# Every source of the extension, listed explicitly (no globbing: a stray file never slips in).
SOURCES = [
    "csrc/module.c",
    "csrc/dispatch.c",
    "csrc/threadpool.c",
    "csrc/kernels_ref.c",
    "csrc/isa_generic.c",
    "csrc/isa_avx2.c",
    "csrc/isa_avx512.c",
    "csrc/backward_blocked.c",
]

# -O3 without -ffast-math: the kernels rely on IEEE infinities and NaN (masks are -inf).
# No -march=native either: instruction sets are chosen at run time (csrc/dispatch.c).
COMPILE_ARGS = ["-std=c11", "-O3", "-fno-math-errno", "-Wall", "-Wextra", "-Wno-unused-parameter"]
# Extra flags for special builds (sanitizers, assertions) come from SELFATTN_CFLAGS.
COMPILE_ARGS += os.environ.get("SELFATTN_CFLAGS", "").split()
LINK_ARGS = ["-pthread"] + os.environ.get("SELFATTN_LDFLAGS", "").split()

setup(
    ext_modules=[
        Extension(
            "selfattn._core",
            sources=SOURCES,
            depends=["csrc/attn.h", "csrc/kernels_ref.inc", "csrc/backward_reference.inc",
                     "csrc/isa_tier.inc", "csrc/vector_fast.inc", "csrc/vexp_fast.inc",
                     "csrc/matmul_fast.inc", "csrc/softmax_fast.inc", "csrc/attention_fused.inc",
                     "csrc/backward_fused.inc", "csrc/backward_blocked.inc"],
            include_dirs=[numpy.get_include(), "csrc"],
            define_macros=[("NPY_TARGET_VERSION", "NPY_1_23_API_VERSION")],
            extra_compile_args=COMPILE_ARGS,
            extra_link_args=LINK_ARGS,
        )
    ],
)
