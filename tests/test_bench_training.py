"""The benchmark rows of selfattn/_bench_training.py: well formed, and every peer computes what
ours computes (checked at small sizes, so the test stays fast)."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from selfattn import _bench, _bench_training as bench


def test_cases_are_well_formed():
    assert len(bench.CASES) >= 3
    for case in bench.CASES:
        assert set(case) == {"name", "group", "dtype", "flops", "setup", "ours", "peers"}
        assert isinstance(case["name"], str) and isinstance(case["group"], str)
        assert case["flops"] > 0 and callable(case["setup"]) and callable(case["ours"])
        for peer in case["peers"].values():
            assert peer is None or callable(peer)
        # the roofline column: the share of the GEMM rate of the case's precision
        precision = "f64" if "f64" in case["name"] else "f32"
        assert case["dtype"] == {"f32": "float32", "f64": "float64"}[precision]
        gemm = {"f32": "sgemm", "f64": "dgemm"}[precision]
        assert _bench.case_roofline(case) == (gemm, case["flops"])


def load_targets():
    path = Path(__file__).resolve().parents[1] / "bench" / "targets.py"
    spec = importlib.util.spec_from_file_location("bench_targets", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_targets_show_what_a_ratio_target_needs_of_the_gemm_rate(tmp_path):
    """bench/targets.py's issue-11 rows: against torch, the GEMM rate's share that ours and torch
    reach by the case's flops, and what the target needs (here 1e9 flops in 10 ms = 100 GFLOP/s,
    50% of a 200 GFLOP/s sgemm; torch takes 1.25x as long: 40%; 1.5x torch needs 60%)."""
    result = {"name": "multi_head_attention_backward f32 n=512 d_model=256 heads=8",
              "group": "backward", "flops": 1e9, "dtype": "float32", "time_s": 0.01,
              "roofline": ["sgemm", 1e9],
              "peers": {"torch autograd backward": {"ratio": 1.25}}}
    info = {"date": "today", "roofline_rates": {"sgemm": 2e11, "dgemm": 1e11, "read": 2e10}}
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"info": info, "results": [result]}))
    _, rows = load_targets().issue11_rows(str(path))
    cells = {case: measured for case, _, measured in rows}
    assert cells[result["name"] + " vs torch autograd"] == (
        "1.25x (sgemm: ours 50%, torch 40%; 1.5x needs 60%)")


def test_targets_read_a_decode_case_against_the_bandwidth_beside_it(tmp_path):
    """A decode row's roofline is the read rate measured beside the case (rate_beside) where the
    run has one: 537 MB in 20 ms is 26.8 GB/s, 89% of the 30 GB/s beside it (67% of the run's
    40 GB/s from its start); a run without it (older JSON) keeps the start's rate."""
    result = {"name": "decode float32 B=1 H=32 n_q=1 n_k=16384 d=128 bottom-right",
              "group": "decode", "flops": 1e8, "dtype": "float32", "time_s": 0.02,
              "roofline": ["read", 536870912.0], "rate_beside": {"read": 3e10},
              "peers": {"torch": {"ratio": 1.5}}}
    info = {"date": "today", "roofline_rates": {"sgemm": 2e11, "dgemm": 1e11, "read": 4e10}}
    for beside, cell in ((True, "1.50x; 89% read"), (False, "1.50x; 67% read")):
        run = dict(result) if beside else {k: v for k, v in result.items() if k != "rate_beside"}
        path = tmp_path / "run.json"
        path.write_text(json.dumps({"info": info, "results": [run]}))
        _, rows = load_targets().issue11_rows(str(path))
        cells = {case: measured for case, _, measured in rows}
        assert cells[result["name"] + " vs torch SDPA; roofline"] == cell


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
        if case["name"].startswith(("multi_head_attention_backward",
                                    "multi_head_attention_vjp backward")):
            continue    # sized by _mb_case's arguments: test_multi_head_backward_cases
        check_peers(case)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_multi_head_backward_cases(dtype):
    names = [case["name"] for case in bench.CASES]
    for bits in (32, 64):
        assert f"multi_head_attention_backward f{bits} n=512 d_model=256 heads=8" in names
    assert "multi_head_attention_backward f32 n=1024 d_model=512 heads=8" in names
    for name in ("f32 n=512 d_model=256", "f32 n=1024 d_model=512", "f64 n=512 d_model=256"):
        assert f"multi_head_attention_vjp backward {name} heads=8" in names
    check_peers(bench._mb_case(20, 16, dtype))
    saved = bench._mb_case(20, 16, dtype, saved=True)
    assert saved["name"].startswith("multi_head_attention_vjp backward")
    check_peers(saved)
    state = saved["setup"](np.random.default_rng(0))
    stateless = bench._mb_case(20, 16, dtype)["ours"](state)
    for a, b in zip(saved["ours"](state), stateless):          # the same gradients
        np.testing.assert_allclose(a, b, rtol=1e-4 if dtype == np.float32 else 1e-10, atol=1e-6)

