"""The benchmark rows of selfattn/_bench_training.py: well formed, and every peer computes what
ours computes (checked at small sizes, so the test stays fast)."""
import numpy as np
import pytest

from selfattn import _bench_training as bench


def test_cases_are_well_formed():
    assert len(bench.CASES) >= 3
    for case in bench.CASES:
        assert set(case) == {"name", "group", "flops", "setup", "ours", "peers"}
        assert isinstance(case["name"], str) and isinstance(case["group"], str)
        assert case["flops"] > 0 and callable(case["setup"]) and callable(case["ours"])
        for peer in case["peers"].values():
            assert peer is None or callable(peer)


@pytest.fixture
def small(monkeypatch):
    for name, value in (("MH_N", 24), ("MH_D", 32), ("MH_H", 4), ("BW_N", 70), ("BW_D", 8)):
        monkeypatch.setattr(bench, name, value)


def first(result):
    result = result[0] if isinstance(result, tuple) else result
    return np.asarray(result.detach() if hasattr(result, "detach") else result).reshape(
        np.shape(result)[-2:])


def check_peers(case):
    state = case["setup"](np.random.default_rng(0))
    ours = first(case["ours"](state))
    for name, peer in case["peers"].items():
        if peer is None or "forward" in name:
            continue
        np.testing.assert_allclose(first(peer(state)), ours, rtol=2e-3, atol=2e-4,
                                   err_msg=f"{case['name']}: {name}")


def test_peers_compute_the_same_thing(small):
    for case in bench.CASES:
        if case["name"].startswith("multi_head_attention_backward"):
            continue    # sized by _mb_case's arguments: test_multi_head_backward_cases
        check_peers(case)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multi_head_backward_cases(dtype):
    names = [case["name"] for case in bench.CASES]
    for bits in (32, 64):
        assert f"multi_head_attention_backward f{bits} n=512 d_model=256 heads=8" in names
    assert "multi_head_attention_backward f32 n=1024 d_model=512 heads=8" in names
    check_peers(bench._mb_case(20, 16, dtype))

