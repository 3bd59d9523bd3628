"""Property-based fuzzing of every public array function (hypothesis).

The only outcomes allowed are a correct result (checked against the error-bounded NumPy reference
in attn_reference.py, inputs unchanged) or TypeError/ValueError/MemoryError with a message; see
fuzz_cases.py for what is generated. CI runs derandomized (the same cases every run) with
SELFATTN_FUZZ_EXAMPLES examples per test (default 300); `python tests/fuzz.py --seed A:B` runs
fresh seeded cases for longer local campaigns.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import selfattn
import fuzz_cases as F

EXAMPLES = int(os.environ.get("SELFATTN_FUZZ_EXAMPLES", "300"))
CI = settings(max_examples=EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck), print_blob=True)

FUNCTIONS = F.array_functions()
# Each case runs on one instruction-set tier, drawn with the case, so every tier gets fuzzed.
ISAS = list(selfattn._core.supported_isas())


def on_a_tier(data, run):
    isa = data.draw(st.sampled_from(ISAS), label="isa")
    before = selfattn.get_isa()
    selfattn.set_isa(isa)
    try:
        run()
    finally:
        selfattn.set_isa(before)
KNOWN = [n for n in FUNCTIONS if n in F.VALID_CASES]
UNKNOWN = [n for n in FUNCTIONS if n not in F.VALID_CASES]


def test_the_fuzzer_knows_the_notebook_functions():
    # Everything selfattn exports must be fuzzed one way or the other, and the five functions of
    # the foundation with value checks.
    for name in ("compute_self_attention_scores", "softmax_attention_weights",
                 "compute_attention_output", "scaled_dot_product_attention",
                 "self_attention_layer"):
        assert name in KNOWN


@pytest.mark.parametrize("name", KNOWN)
@CI
@given(data=st.data())
def test_valid_moderate_values(name, data):
    args, kw = data.draw(F.valid(name, wild=False))
    on_a_tier(data, lambda: F.run_case(name, args, kw, must_succeed=True))


@pytest.mark.parametrize("name", KNOWN)
@CI
@given(data=st.data())
def test_valid_special_values(name, data):
    args, kw = data.draw(F.valid(name, wild=True))
    on_a_tier(data, lambda: F.run_case(name, args, kw, must_succeed=True))


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("mask", [[[1e308]], [[-1e308]], [[1e308, -1e308], [-1e308, 3.0]]],
                         ids=["1e308", "-1e308", "both"])
def test_a_float64_mask_past_float32s_range(isa, mask):
    """A case the fuzzer drew in CI: float32 Q and K (and V) with a float64 mask of 1e308. The
    package makes a finite mask value past the compute dtype's range that dtype's largest of the
    same sign, not inf (selfattn/_validate.py's _additive), and the reference now reads the mask
    so too (it had cast it to inf and asked for inf)."""
    mask = np.array(mask)
    n = mask.shape[0]
    Q, K, V = (np.arange(n * 2, dtype=np.float32).reshape(n, 2) / 4 for _ in range(3))
    before = selfattn.get_isa()
    selfattn.set_isa(isa)
    try:
        got = F.run_case("compute_self_attention_scores", (Q, K), {"mask": mask},
                         must_succeed=True)
        F.run_case("scaled_dot_product_attention", (Q, K, V), {"mask": mask}, must_succeed=True)
    finally:
        selfattn.set_isa(before)
    big = np.finfo(np.float32).max
    assert got.dtype == np.float32 and np.array_equal(np.abs(got) == big, np.abs(mask) == 1e308)


@pytest.mark.parametrize("name", KNOWN)
@CI
@given(data=st.data())
def test_odd_inputs(name, data):
    args, kw = data.draw(F.odd(name))
    on_a_tier(data, lambda: F.run_case(name, args, kw, must_succeed=False))


@pytest.mark.skipif(not UNKNOWN, reason="every exported function has value-checked fuzzing")
@pytest.mark.parametrize("name", UNKNOWN or ["-"])
@CI
@given(data=st.data())
def test_other_exported_functions(name, data):
    args, kw = data.draw(F.generic(name))
    on_a_tier(data, lambda: F.run_case(name, args, kw, must_succeed=False))


def test_no_flush_to_zero_after_import():
    # A library built with -ffast-math can switch the whole process to flush subnormals to zero.
    assert selfattn is not None
    tiny = np.float64(2.0) ** -1073
    assert tiny != 0 and tiny * 0.5 != 0
    assert np.float32(1e-45) != 0
