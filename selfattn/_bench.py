"""``python -m selfattn bench``: selfattn's own benchmark.

Every case times selfattn ("ours") and its peers in the same run, interleaved (ours, peer 1,
peer 2, ours, ...), each sample right after at least 20 ms of untimed calls of the same function
(at least one call), and reports medians of the repeats:

* the naive NumPy solution of the notebook (``Q @ K.T / sqrt(d)``, ``exp(x - max) / sum``,
  ``W @ V``), and plain ``np.matmul`` for the products;
* ``torch.nn.functional.scaled_dot_product_attention`` when torch is importable, with
  ``torch.set_num_threads`` equal to ours.

It prints times, GFLOP/s (attention counts ``4 n_q n_k d``, causal the visible half), the ratio
``peer time / our time`` (above 1: selfattn is faster) and a **roofline** column: the case's rate
as a fraction of a rate the machine reaches in the same run (see ``ROOFLINE_RATES``): for a
compute-bound case the sgemm or dgemm rate of ``np.matmul`` on large squares, for a memory-bound
one (decoding: K and V read once) the read bandwidth of the bench's threads reading 1.25 GiB (an
OR-reduction of 64-bit words in C, see ``read_probe``), which such a case measures again after
each round of its own repeats and is compared with (``RATES_BESIDE``): on a shared host the
bandwidth moves by a quarter within a run. The rates are measured again once the cases have run, and
the report says whether the run was steady: where a rate moved by more than ``STEADY_DRIFT``, the
machine's speed changed during the run (on a shared host, another tenant's work), and its ratios
are best read beside another run's. Progress goes to stderr.

A case is a dict ``{"name", "group", "flops", "setup": f(rng) -> state, "ours": f(state),
"peers": {name: f(state) or None}}``, optionally with ``"roofline": (rate, amount)``: the work
of one call in the units of that measured rate (``("sgemm", flops)``; a case with ``"dtype"``
and ``"flops"`` gets the GEMM rate of its dtype without saying so). Other modules can add cases:
``selfattn._bench_training.CASES`` (the backward and multi-head cases) run too.

NumPy's OpenBLAS reads ``OPENBLAS_CORETYPE`` when it loads, so to measure it at its best run
``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m selfattn bench``. With several threads
the runner pauses ``--cooldown`` seconds (0.15) after each peer's sample, because OpenBLAS's idle
threads spin for 2**28 clock ticks after a call (0.103 s at 2.6 GHz: 0.1 s was too short) and
would take a core from whatever is timed next.
On a machine shared with other work the numbers vary from run to run; ``--threads 1`` is the
steadiest comparison.
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import re
import statistics
import sys
import time

import numpy as np

import selfattn

from . import _bench_training

SIZES = [8, 64, 512, 2048, 4096, 8192]
HEADS = [64, 128]
DTYPES = [np.float32, np.float64]
QUICK_SIZES = [8, 512, 2048, 4096]
MEMORY_N = 65536


# ---- the naive NumPy solution of the notebook --------------------------------------------------

def naive_scores(Q, K, causal=False):
    # a Python float scale: np.sqrt(d) is a NumPy float64 scalar, which (NumPy 2) would turn
    # float32 scores into float64 and make this peer slower than it needs to be
    S = Q @ K.T * (1 / math.sqrt(Q.shape[-1]))
    if causal:
        S = np.where(np.tril(np.ones(S.shape, bool)), S, -np.inf)
    return S


def naive_softmax(S):
    e = np.exp(S - S.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def naive_attention(Q, K, V, causal=False):
    return naive_softmax(naive_scores(Q, K, causal)) @ V


def naive_layer(X, W_q, W_k, W_v, causal=False):
    return naive_attention(X @ W_q, X @ W_k, X @ W_v, causal)


# ---- cases -------------------------------------------------------------------------------------

def _torch():
    try:
        import torch
    except Exception:               # not installed, or broken: the peer is simply absent
        return None
    return torch


def _attention_flops(n_q, n_k, d, causal):
    pairs = n_q * n_k if not causal else sum(min(i + 1, n_k) for i in range(n_q))
    return 4.0 * pairs * d


def _sdpa_case(n, d, dtype, causal, torch):
    def setup(rng):
        Q, K, V = (rng.standard_normal((n, d)).astype(dtype) for _ in range(3))
        state = {"Q": Q, "K": K, "V": V}
        if torch is not None:
            state["t"] = [torch.from_numpy(a)[None, None] for a in (Q, K, V)]
        return state

    def torch_sdpa(s):
        with torch.inference_mode():
            return torch.nn.functional.scaled_dot_product_attention(*s["t"], is_causal=causal)

    return {
        "name": f"sdpa {np.dtype(dtype).name} n={n} d={d}{' causal' if causal else ''}",
        "group": "attention",
        "dtype": np.dtype(dtype).name,
        "flops": _attention_flops(n, n, d, causal),
        "setup": setup,
        "ours": lambda s: selfattn.scaled_dot_product_attention(s["Q"], s["K"], s["V"],
                                                                is_causal=causal),
        "peers": {
            "naive": lambda s: naive_attention(s["Q"], s["K"], s["V"], causal),
            "torch": torch_sdpa if torch is not None else None,
        },
    }


def _gqa_case(n, d, heads, kv_heads, dtype, causal):
    """Grouped-query attention against the same call with K/V repeated to every query head (the
    copy made in setup, so that only the attention is timed): no slower is the requirement."""
    def setup(rng):
        Q = rng.standard_normal((heads, n, d)).astype(dtype)
        K, V = (rng.standard_normal((kv_heads, n, d)).astype(dtype) for _ in range(2))
        group = heads // kv_heads
        return {"Q": Q, "K": K, "V": V,
                "K_rep": np.repeat(K, group, axis=0), "V_rep": np.repeat(V, group, axis=0)}

    return {
        "name": f"gqa {np.dtype(dtype).name} n={n} d={d} heads={heads}/{kv_heads}"
                f"{' causal' if causal else ''}",
        "group": "attention",
        "dtype": np.dtype(dtype).name,
        "flops": heads * _attention_flops(n, n, d, causal),
        "setup": setup,
        "ours": lambda s: selfattn.scaled_dot_product_attention(
            s["Q"], s["K"], s["V"], is_causal=causal, enable_gqa=True),
        "peers": {
            "repeated": lambda s: selfattn.scaled_dot_product_attention(
                s["Q"], s["K_rep"], s["V_rep"], is_causal=causal),
        },
    }


def _layer_case(n, d_model, d, dtype, causal):
    def setup(rng):
        X = rng.standard_normal((n, d_model)).astype(dtype)
        W = [(rng.standard_normal((d_model, d)) / np.sqrt(d_model)).astype(dtype)
             for _ in range(3)]
        return {"X": X, "W": W}

    return {
        "name": f"layer {np.dtype(dtype).name} n={n} d={d}{' causal' if causal else ''}",
        "group": "layer",
        "dtype": np.dtype(dtype).name,
        "flops": 2.0 * n * d_model * 3 * d + _attention_flops(n, n, d, causal),
        "setup": setup,
        "ours": lambda s: selfattn.self_attention_layer(s["X"], *s["W"], is_causal=causal),
        "peers": {"naive": lambda s: naive_layer(s["X"], *s["W"], causal)},
    }


def _peak_bytes(fn):
    """The peak memory traced while fn() runs (tracemalloc: NumPy's arrays and selfattn's
    scratch, PyMem_RawMalloc, alike), its result included."""
    import tracemalloc

    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _window_case(n, window, d, dtype, causal):
    """A sliding window of `window` = (left, right) keys by window= (the kernels skip every block
    no query sees: O(n w d)) against the same call with the equivalent dense (n, n) band mask.
    Memory: the peak bytes of each way, the dense one building its mask (n^2 bytes) and calling."""
    def band_mask():
        return selfattn.window_mask(n, n, *window)

    def setup(rng):
        Q, K, V = (rng.standard_normal((n, d)).astype(dtype) for _ in range(3))
        return {"Q": Q, "K": K, "V": V, "mask": band_mask()}

    def ours(s):
        return selfattn.scaled_dot_product_attention(s["Q"], s["K"], s["V"], is_causal=causal,
                                                     window=window)

    def dense(s, mask=None):
        return selfattn.scaled_dot_product_attention(
            s["Q"], s["K"], s["V"], is_causal=causal, mask=s["mask"] if mask is None else mask)

    left, right = window
    pairs = sum(min(i + (0 if causal else right), n - 1) - max(i - left, 0) + 1 for i in range(n))
    return {
        "name": f"window {np.dtype(dtype).name} n={n} w={left + right + 1} d={d}"
                f"{' causal' if causal else ''} window={window}",
        "group": "window",
        "dtype": np.dtype(dtype).name,
        "flops": 4.0 * pairs * d,
        "setup": setup,
        "ours": ours,
        "peers": {"dense band mask": dense},
        "memory": lambda s: {"ours": _peak_bytes(lambda: ours(s)),
                             "dense band mask": _peak_bytes(lambda: dense(s, band_mask()))},
    }


def _step_cases(n, d, dtype):
    """The notebook's steps one call at a time, each against np.matmul of the same operands (its
    BLAS threads = ours), both allocating their result. scores: Q @ K^T on both sides, ours with
    scale=1.0 (the raw dot products; its default scale would be a multiply np.matmul does not do)
    and np.matmul of the transposed view (no naive peer: it is np.matmul). output: weights @ V,
    ours with its zero-weight rule (a scan of V). projection: X @ W_all (the three d x d
    projections side by side), through compute_attention_output."""
    name = np.dtype(dtype).name

    def setup(rng):
        Q, K, V = (rng.standard_normal((n, d)).astype(dtype) for _ in range(3))
        S = naive_scores(Q, K)
        X = rng.standard_normal((n, d)).astype(dtype)
        W_all = rng.standard_normal((d, 3 * d)).astype(dtype)
        W = naive_softmax(S)
        assert S.dtype == W.dtype == dtype
        return {"Q": Q, "K": K, "V": V, "S": S, "W": W, "X": X, "W_all": W_all}

    return [
        {"name": f"scores {name} n={n} d={d}", "group": "steps", "dtype": name,
         "flops": 2.0 * n * n * d, "setup": setup,
         "ours": lambda s: selfattn.compute_self_attention_scores(s["Q"], s["K"], scale=1.0),
         "peers": {"np.matmul": lambda s: np.matmul(s["Q"], s["K"].T)}},
        {"name": f"softmax {name} n={n}", "group": "steps", "dtype": None,
         "flops": None, "setup": setup,
         "ours": lambda s: selfattn.softmax_attention_weights(s["S"]),
         "peers": {"naive": lambda s: naive_softmax(s["S"])}},
        {"name": f"output {name} n={n} d={d}", "group": "steps", "dtype": name,
         "flops": 2.0 * n * n * d, "setup": setup,
         "ours": lambda s: selfattn.compute_attention_output(s["W"], s["V"]),
         "peers": {"np.matmul": lambda s: np.matmul(s["W"], s["V"])}},
        {"name": f"projection {name} n={n} d={d}", "group": "steps", "dtype": name,
         "flops": 2.0 * n * d * 3 * d, "setup": setup,
         "ours": lambda s: selfattn.compute_attention_output(s["X"], s["W_all"]),
         "peers": {"np.matmul": lambda s: np.matmul(s["X"], s["W_all"])}},
    ]


# encoder batches: (label, B, H, n, d) -- many small problems, each head a separate attention
BATCH_SHAPES = [("bert", 32, 12, 128, 64), ("vit", 8, 12, 197, 64), ("tiny", 64, 4, 16, 16)]


def _batch_case(label, B, H, n, d, dtype, causal, torch):
    shape = (B, H, n, d)

    def setup(rng):
        Q, K, V = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
        state = {"Q": Q, "K": K, "V": V}
        if torch is not None:
            state["t"] = [torch.from_numpy(a) for a in (Q, K, V)]
        return state

    def naive(s):
        S = s["Q"] @ np.swapaxes(s["K"], -1, -2) * (1 / math.sqrt(d))
        if causal:
            S = np.where(np.tril(np.ones((n, n), bool)), S, -np.inf)
        return naive_softmax(S) @ s["V"]

    def torch_sdpa(s):
        with torch.inference_mode():
            return torch.nn.functional.scaled_dot_product_attention(*s["t"], is_causal=causal)

    return {
        "name": f"{label} {np.dtype(dtype).name} B={B} H={H} n={n} d={d}"
                f"{' causal' if causal else ''}",
        "group": "batches",
        "dtype": np.dtype(dtype).name,
        "flops": B * H * _attention_flops(n, n, d, causal),
        "setup": setup,
        "ours": lambda s: selfattn.scaled_dot_product_attention(s["Q"], s["K"], s["V"],
                                                                is_causal=causal),
        "peers": {"naive": naive, "torch": torch_sdpa if torch is not None else None},
    }


def _batch_cases(torch):
    cases = []
    for label, B, H, n, d in BATCH_SHAPES:
        for causal in (False, True) if label == "bert" else (False,):
            cases.append(_batch_case(label, B, H, n, d, np.float32, causal, torch))
    return cases


# ---- decoding: few queries against a long KV cache (memory-bound) ------------------------------

# (batch, heads, n_q, n_k, d): one query per head against a 16k cache; a batch of 8 caches of 4k;
# a few queries (speculative decoding, chunked prefill)
DECODE_SHAPES = [(1, 32, 1, 16384, 128), (8, 32, 1, 4096, 128), (1, 32, 8, 16384, 128)]
QUICK_DECODE_SHAPES = DECODE_SHAPES[:1] + DECODE_SHAPES[2:]
BANDWIDTH_BYTES = 2 ** 30 + 2 ** 28     # read by measure_bandwidth: past any cache


def _decode_case(batch, heads, n_q, n_k, d, dtype, torch):
    """Attention of n_q queries, the last tokens, against a cache of n_k keys, per head, causal
    aligned bottom-right (query i sees keys j <= i + n_k - n_q; torch's causal_lower_right): K
    and V are read once, so the time is set by the memory, and the roofline is the read
    bandwidth."""
    shape = (batch, heads)

    def setup(rng):
        Q, K, V = (rng.standard_normal(shape + (n, d), dtype=np.float32).astype(dtype, copy=False)
                   for n in (n_q, n_k, n_k))
        state = {"Q": Q, "K": K, "V": V}
        if torch is not None:
            state["t"] = [torch.from_numpy(a) for a in (Q, K, V)]
        return state

    def torch_sdpa(s):
        from torch.nn.attention.bias import causal_lower_right
        with torch.inference_mode():
            return torch.nn.functional.scaled_dot_product_attention(
                *s["t"], attn_mask=causal_lower_right(n_q, n_k))

    name = np.dtype(dtype).name
    return {
        "name": f"decode {name} B={batch} H={heads} n_q={n_q} n_k={n_k} d={d} bottom-right",
        "group": "decode",
        "dtype": name,
        "flops": 4.0 * batch * heads * n_q * n_k * d,
        # K and V are read once: the roofline is the memory's read bandwidth
        "roofline": ("read", 2.0 * batch * heads * n_k * d * np.dtype(dtype).itemsize),
        "setup": setup,
        "ours": lambda s: selfattn.scaled_dot_product_attention(s["Q"], s["K"], s["V"],
                                                                is_causal="bottom_right"),
        "peers": {"torch": torch_sdpa if torch is not None else None},
    }


def decode_cases(quick, torch):
    return [_decode_case(*shape, np.float32, torch)
            for shape in (QUICK_DECODE_SHAPES if quick else DECODE_SHAPES)]


@contextlib.contextmanager
def read_probe(threads, nbytes=BANDWIDTH_BYTES):
    """Yields read(): `threads` threads each read their share of one array larger than any cache
    (allocated once, read once untimed), and read() returns the rate in bytes per second. Each
    thread ORs its share's 64-bit words with ``selfattn._core.read_memory``, without the GIL:
    four streams, each asked for 8 KiB ahead (csrc/read_memory.c), as fast as the decode kernel
    reads K and V. On the lead's Xeon, two threads, NumPy's ``np.bitwise_or.reduce`` read 26 GB/s
    where the decode kernel read 32, and its roofline column showed 126%; read_memory reads 32
    (16 on one thread, NumPy 13). The NumPy backend's read_memory is that reduction."""
    from concurrent.futures import ThreadPoolExecutor

    data = np.ones(nbytes // 8, np.uint64)
    parts = np.array_split(data, threads)
    with ThreadPoolExecutor(threads) as pool:
        def read():
            t0 = time.perf_counter()
            list(pool.map(selfattn._core.read_memory, parts))
            return data.nbytes / (time.perf_counter() - t0)
        read()
        yield read


def measure_bandwidth(threads, repeat, nbytes=BANDWIDTH_BYTES):
    """The machine's read bandwidth in GB/s (read_probe), the median of the repeats."""
    with read_probe(threads, nbytes) as read:
        return statistics.median(read() for _ in range(max(3, repeat))) / 1e9


def measure_read_rate(repeat):
    """The roofline's read bandwidth with the bench's thread count, in bytes per second."""
    return {"read": measure_bandwidth(selfattn.get_num_threads(), repeat) * 1e9}


def read_rate_beside():
    """read_probe with the bench's thread count: what run_case measures between a memory-bound
    case's repeats (RATES_BESIDE)."""
    return read_probe(selfattn.get_num_threads())


def build_cases(quick, torch):
    cases = [_layer_case(8, 4, 4, np.float64, False)]          # the notebook's own size
    sizes = QUICK_SIZES if quick else SIZES
    heads = [64] if quick else HEADS
    for dtype in DTYPES:
        for d in heads:
            for n in sizes:
                if quick and dtype == np.float64 and n > 2048:
                    continue
                for causal in (False, True):
                    cases.append(_sdpa_case(n, d, dtype, causal, torch))
    for n in (512, 2048):
        cases.append(_gqa_case(n, 64, 32, 8, np.float32, True))
    layer_sizes = [(np.float32, 4096), (np.float64, 2048)]
    if not quick:
        layer_sizes += [(np.float32, 512), (np.float32, 2048), (np.float64, 512),
                        (np.float64, 4096)]
    for dtype, n in layer_sizes:
        cases.append(_layer_case(n, 64, 64, dtype, False))
    cases.extend(_batch_cases(torch))
    for dtype in DTYPES:
        for n in ([2048] if quick else [512, 2048, 4096]):
            cases.extend(_step_cases(n, 64, dtype))
    # a causal sliding window of w = 256 keys (Mistral's shape, 4096 there)
    cases.append(_window_case(2048 if quick else 16384, (255, 0), 64, np.float32, True))
    cases.extend(decode_cases(quick, torch))
    cases.extend(_bench_training.CASES)
    return cases


# ---- timing ------------------------------------------------------------------------------------

def _time_once(fn, state, number):
    t0 = time.perf_counter()
    for _ in range(number):
        fn(state)
    return (time.perf_counter() - t0) / number


def run_case(case, repeat, rng, min_sample=0.02, cooldown=0.0, warm_up=0.02):
    """Medians of `repeat` interleaved samples of ours and every available peer.

    After each peer's sample the runner sleeps `cooldown` seconds: OpenBLAS's idle threads spin
    for about 0.1 s after a call, and would otherwise steal a core from whatever runs next.
    Each sample follows untimed calls of the same function for at least `warm_up` seconds (at
    least one call): on these shared hosts the first call after the pause ran 19-30% slower with
    two threads (the cores had gone idle), and without the warm-up the function timed right after
    a pause paid that while the one timed after it did not (ours always followed a pause, the
    first peer never). One call was not enough for short ones: on an AMD EPYC (Zen 4) the f64
    scores at n=512 (0.5 ms) timed 0.61-0.65 ms after one warm-up call, 0.48 ms after 10 ms of
    them, as when called in a loop."""
    with contextlib.ExitStack() as stack:
        return _run_case(case, repeat, rng, min_sample, cooldown, warm_up, stack)


def _run_case(case, repeat, rng, min_sample, cooldown, warm_up, stack):
    spec = case_roofline(case)
    beside = (stack.enter_context(RATES_BESIDE[spec[0]]())
              if spec and spec[0] in RATES_BESIDE else None)
    state = case["setup"](rng)
    fns = {"ours": case["ours"]}
    fns.update({k: v for k, v in case["peers"].items() if v is not None})
    number, first = {}, {}
    for key, fn in fns.items():                   # warm up, and size each sample
        _time_once(fn, state, 1)
        first[key] = _time_once(fn, state, 1)
        number[key] = max(1, min(10_000, math.ceil(min_sample / max(first[key], 1e-7))))
    slowest = max(first[k] * number[k] + max(first[k], warm_up) for k in fns)  # sample, warm-up
    reps = repeat if slowest * repeat * len(fns) < 120 else max(3, int(120 / (slowest * len(fns))))
    samples = {key: [] for key in fns}
    rates_beside = []
    for _ in range(reps):
        for key, fn in fns.items():
            warm_until = time.perf_counter() + warm_up
            fn(state)
            while time.perf_counter() < warm_until:
                fn(state)
            samples[key].append(_time_once(fn, state, number[key]))
            if key != "ours" and cooldown:
                time.sleep(cooldown)
        if beside is not None:
            rates_beside.append(beside())
    memory = case["memory"](state) if "memory" in case else None
    del state
    gc.collect()
    times = {key: statistics.median(v) for key, v in samples.items()}
    result = {"name": case["name"], "group": case["group"], "flops": case.get("flops"),
              "dtype": case.get("dtype"), "roofline": case_roofline(case), "repeats": reps, "time_s": times["ours"],
              "peers": {},
              # each one's median over its fastest repeat: past UNSTEADY, half its repeats or
              # more ran that much slower than it can, and the table marks its ratio
              "spread": {key: times[key] / min(v) if min(v) > 0 else math.inf
                         for key, v in samples.items()}}
    for key in case["peers"]:
        if key in times:
            result["peers"][key] = {"time_s": times[key], "ratio": times[key] / times["ours"]}
        else:
            result["peers"][key] = None
    if memory is not None:
        result["peak_bytes"] = memory
    if rates_beside:
        result["rate_beside"] = {spec[0]: statistics.median(rates_beside)}
    return result


def measure_gemm_rates(repeat):
    """FLOP/s of np.matmul on 2048 x 2048, median of repeats: {"sgemm": ..., "dgemm": ...}."""
    rates = {}
    rng = np.random.default_rng(0)
    for dtype, name in ((np.float32, "sgemm"), (np.float64, "dgemm")):
        n = 2048
        A, B = (rng.standard_normal((n, n)).astype(dtype) for _ in range(2))
        A @ B
        times = [_time_once(lambda s: A @ B, None, 1) for _ in range(max(5, repeat))]
        rates[name] = 2.0 * n ** 3 / statistics.median(times)
    return rates


# ---- the roofline ------------------------------------------------------------------------------
# Each measured rate: its name, what it is, and the function that measures it (repeat -> {name:
# rate per second}). A case's roofline is (its amount of work / its time) / the named rate.
ROOFLINE_RATES = [
    ({"sgemm": "GFLOP/s", "dgemm": "GFLOP/s"}, "np.matmul 2048^2", measure_gemm_rates),
    ({"read": "GB/s"}, "the bench's threads OR-reducing 1.25 GiB of 64-bit words in C",
     measure_read_rate),
]
_GEMM_RATE = {"float32": "sgemm", "float64": "dgemm"}
_UNIT_SCALE = {"GFLOP/s": 1e9, "GB/s": 1e9}
# Rates that a case whose roofline names them measures again itself, once after each round of its
# interleaved repeats (rate name -> a context manager yielding measure() -> rate per second), and
# whose median is its roofline's rate: the read bandwidth of this shared machine moved by 24%
# between the start and the end of one run (35.1 and 26.8 GB/s), so a decode case measured
# against the start's rate was read as 56% of a bandwidth it may never have had.
RATES_BESIDE = {"read": read_rate_beside}


def measure_roofline_rates(repeat, progress=lambda msg: None):
    """Every rate of ROOFLINE_RATES, measured now: {name: rate per second}."""
    rates = {}
    for units, what, measure in ROOFLINE_RATES:
        progress(f"measuring {', '.join(units)} ({what}) ...")
        rates.update(measure(repeat))
    return rates


def _rate_unit(name):
    """The unit of a ROOFLINE_RATES rate: "GFLOP/s", "GB/s"."""
    return next(units[name] for units, _, _ in ROOFLINE_RATES if name in units)


def describe_rates(rates):
    """The rates as `sgemm 150.2 GFLOP/s, ...`."""
    parts = []
    for units, what, _ in ROOFLINE_RATES:
        for name, unit in units.items():
            if name in rates:
                parts.append(f"{name} {rates[name] / _UNIT_SCALE[unit]:.1f} {unit}")
    return ", ".join(parts)


# A run whose roofline rates moved by more than this between its start and its end ran while the
# machine's speed changed (another tenant of a shared host, a frequency change): its ratios are
# best read beside another run's. (On the 2-core AMD EPYC of docs/performance.md, six sgemm
# measurements back to back, a second apart, ranged from 124 to 149 GFLOP/s: 10% is noise there.)
STEADY_DRIFT = 0.15


def rate_drift(start, end):
    """The rate that moved most between two measurements of ROOFLINE_RATES: (name, end / start),
    or None where they share no rate."""
    changes = [(name, end[name] / start[name]) for name in start if name in end and start[name] > 0]
    if not changes:
        return None
    return max(changes, key=lambda change: abs(math.log(change[1])) if change[1] > 0 else math.inf)


def describe_drift(start, end):
    """A line on how steady the machine was during a run, from its rates at the start and end."""
    drift = rate_drift(start, end)
    if drift is None:
        return "no rate measured twice"
    name, ratio = drift
    unit = _rate_unit(name)
    moved = (f"{name} {start[name] / _UNIT_SCALE[unit]:.1f} at the start, "
             f"{end[name] / _UNIT_SCALE[unit]:.1f} {unit} at the end ({100 * (ratio - 1):+.0f}%)")
    if abs(ratio - 1) > STEADY_DRIFT:
        return (f"unsteady: {moved}: the machine's speed changed during the run, so read its "
                f"ratios beside another run's")
    return f"steady: the rates moved by {100 * abs(ratio - 1):.0f}% at most ({moved})"


def case_roofline(case):
    """(rate name, work of one call) for a case, or None where it has no roofline."""
    if case.get("roofline"):
        return tuple(case["roofline"])
    if case.get("dtype") in _GEMM_RATE and case.get("flops"):
        return _GEMM_RATE[case["dtype"]], case["flops"]
    return None


def roofline_rate(result, rates):
    """The rate a result's roofline compares it with (per second): the one measured beside its
    repeats (RATES_BESIDE) where it has one, else the run's, from `rates`; or None."""
    spec = result.get("roofline")
    if not spec:
        return None
    return result.get("rate_beside", {}).get(spec[0], rates.get(spec[0]))


def roofline_fraction(result, rates):
    """The fraction of its measured rate a result reached, or None."""
    rate = roofline_rate(result, rates)
    if not rate or not result.get("time_s"):
        return None
    return result["roofline"][1] / result["time_s"] / rate


def measure_memory(n, d, causal):
    """Peak traced memory of one self_attention_layer call above its inputs, in bytes.

    tracemalloc sees NumPy's arrays and selfattn's scratch (PyMem_RawMalloc) alike."""
    import tracemalloc

    rng = np.random.default_rng(0)
    X = rng.standard_normal((n, d)).astype(np.float32)
    W = [(rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float32) for _ in range(3)]
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        t0 = time.perf_counter()
        out = selfattn.self_attention_layer(X, *W, is_causal=causal)
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    return {"name": f"memory layer float32 n={n} d={d}{' causal' if causal else ''}",
            "peak_above_inputs_bytes": peak, "output_bytes": out.nbytes, "time_s": elapsed,
            "naive_scores_bytes": n * n * 4}


# ---- reporting ---------------------------------------------------------------------------------

def cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return [{k: v for k, v in info.items() if k in ("internal_api", "version", "architecture",
                                                    "num_threads")} for info in threadpool_info()
            if info.get("user_api") == "blas"]


def _fmt_time(t):
    if t is None:
        return "-"
    if t < 1e-3:
        return f"{t * 1e6:.1f} us"
    if t < 1:
        return f"{t * 1e3:.2f} ms"
    return f"{t:.2f} s"


# a ratio is marked where the median of ours or of the peer's repeats is this many times their
# fastest: half the repeats or more ran that much slower, the machine busy meanwhile (a torch
# call of 12 us timed 30 ms in 2 of 3 repeats on a shared host). One slow repeat moves no median
# and marks nothing (ours ran 2x slower in one of 3 repeats of 20 ms now and then)
UNSTEADY = 2.0
# a peer's name longer than this heads its column as a note, "x [1]", told in full below
_LONG_PEER = 28


def _unsteady(result, peer):
    spread = result.get("spread", {})
    return max(spread.get("ours", 1.0), spread.get(peer, 1.0)) > UNSTEADY


def format_table(results, rates, peer_names):
    """One table per group of cases (in the order they ran), each with the columns of the peers
    its cases have; a peer's long name is a numbered note under its table, and a ratio whose
    repeats were unsteady is marked "?"."""
    groups = {}
    for r in results:
        groups.setdefault(r.get("group"), []).append(r)
    blocks, marked = [], False
    for group, members in groups.items():
        peers = [p for p in peer_names if any(r["peers"].get(p) for r in members)]
        table, notes, unsteady = _group_table(members, rates, peers)
        marked |= unsteady
        blocks.append("\n".join(([f"{group}:"] if group else []) + [table] + notes))
    if marked:
        blocks.append(f"?: half the repeats of selfattn or of the peer, or more, ran over "
                      f"{UNSTEADY:g}x slower than the fastest (the machine was busy meanwhile?): "
                      f"run the case again (--cases NAME) before reading its ratio")
    return "\n\n".join(blocks)


def _group_table(results, rates, peer_names):
    heads, notes = [], []
    for p in peer_names:
        if len(p) > _LONG_PEER:
            notes.append(f"[{len(notes) + 1}] x {p}")
            heads.append(f"x [{len(notes)}]")
        else:
            heads.append(f"x {p}")
    head = ["case", "time", "GFLOP/s", "roofline"] + heads
    rows, unsteady = [], False
    for r in results:
        gf = r["flops"] / r["time_s"] / 1e9 if r.get("flops") else None
        fraction = roofline_fraction(r, rates)
        roofline = "-"
        if fraction is not None:
            name = r["roofline"][0]
            roofline = f"{100 * fraction:.0f}% {name}"
            if name in r.get("rate_beside", {}):        # the rate measured beside the case
                unit = _rate_unit(name)
                roofline += f" of {r['rate_beside'][name] / _UNIT_SCALE[unit]:.1f} {unit}"
        row = [r["name"], _fmt_time(r["time_s"]), f"{gf:.1f}" if gf else "-", roofline]
        for p in peer_names:
            info = r["peers"].get(p)
            mark = "?" if info and _unsteady(r, p) else ""
            unsteady |= bool(mark)
            row.append(f"{info['ratio']:.2f}{mark}" if info else "-")
        rows.append(row)
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    lines = ["  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in
                       enumerate(zip(head, widths)))]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                               enumerate(zip(row, widths))))
    return "\n".join(lines), notes, unsteady


def _plotted_peers(peer_names):
    """The peers whose ratio is a speed-up of selfattn over another library or NumPy code: not
    selfattn's own other functions (the backward's "x selfattn fused forward" is a ratio of its
    own two times, not a speed-up)."""
    return [p for p in peer_names if not p.startswith("selfattn")]


def write_plot(path, results, peer_names):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("selfattn bench: --plot needs matplotlib, which is not installed "
              "(pip install matplotlib, or in selfattn's source folder pip install \".[plot]\"); "
              "no plot written",
              file=sys.stderr)
        return False
    peers = _plotted_peers(peer_names)
    rated = [r for r in results if any(r["peers"].get(p) for p in peers)]
    fig, ax = plt.subplots(figsize=(10, max(3, 0.3 * len(rated) + 1.5)))
    colors = {p: plt.get_cmap("tab10")(k % 10) for k, p in enumerate(peers)}
    labelled = set()
    for i, r in enumerate(rated):
        # each row's bars share its band, centred on its label, whatever peers it has
        here = [p for p in peers if r["peers"].get(p)]
        height = 0.8 / len(here)
        for k, p in enumerate(here):
            ratio = r["peers"][p]["ratio"]
            y = i + (k - (len(here) - 1) / 2) * height
            # from 1 (the peer's speed): left of it slower, right of it faster
            ax.barh(y, (ratio - 1) or 1e-3, left=1, height=height, color=colors[p],
                    label=None if p in labelled else f"vs {p}")
            labelled.add(p)
            if _unsteady(r, p):     # beyond the bar's end, on whichever side of 1 it is
                ax.text(ratio, y, " ? unsteady " if ratio >= 1 else " unsteady ? ",
                        ha="left" if ratio >= 1 else "right", va="center", fontsize=6)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(np.arange(len(rated)))
    ax.set_yticklabels([r["name"] for r in rated], fontsize=7)
    ax.set_ylim(len(rated) - 0.5, -0.5)
    ax.set_xscale("log")
    plain = matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}")    # 2, not 2 x 10^0
    ax.xaxis.set_major_formatter(plain)
    low, high = ax.get_xlim()
    # the minor ticks labelled only over a short range: over several decades they run together
    ax.xaxis.set_minor_formatter(plain if high / low < 30 else matplotlib.ticker.NullFormatter())
    ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("speed-up of selfattn (peer time / selfattn time; > 1 is faster)")
    ax.set_title("selfattn benchmark")
    # beside the axes, where it covers no bar and no label
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=7, frameon=False)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return True


def _plot_formats():
    """The file suffixes matplotlib can write, or None without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return None
    return set(Figure().canvas.get_supported_filetypes())


def _select(cases, filters):
    if not filters:
        return cases
    pats = [re.compile(f, re.IGNORECASE) for f in filters]
    return [c for c in cases if any(p.search(c["name"]) or p.search(c["group"]) for p in pats)]


def _unwritable(path):
    """Why `path` cannot be written, or None: tried by opening it to append (os.access says yes
    to root everywhere, and to a read-only mount or /proc); a file made for the try is removed."""
    existed = os.path.lexists(path)
    try:
        with open(path, "ab"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    if not existed:
        with contextlib.suppress(OSError):
            os.remove(path)
    return None


def _check_arguments(parser, args):
    """Refuses, before anything is measured, what would fail mid-run or after it (the results
    lost with it): a bad --cases pattern, --cooldown, --threads, an output file that cannot be
    written, or a plot without matplotlib or in a format it cannot write."""
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.cooldown is not None and not (math.isfinite(args.cooldown) and args.cooldown >= 0):
        parser.error(f"--cooldown must be a number of seconds >= 0, got {args.cooldown}")
    for pattern in args.cases or ():
        try:
            re.compile(pattern)
        except re.error as exc:
            parser.error(f"--cases: {pattern!r} is not a regular expression ({exc})")
    for option, path in (("--json", args.json), ("--plot", args.plot)):
        if path is None:
            continue
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path) or not os.path.isdir(folder):
            parser.error(f"{option}: cannot write {path!r} (" + (
                "a folder of that name exists" if os.path.isdir(path) else
                "its folder does not exist") + ")")
        why = _unwritable(path)
        if why:
            parser.error(f"{option}: cannot write {path!r} ({why})")
    if args.plot is not None:
        formats = _plot_formats()
        suffix = os.path.splitext(args.plot)[1].lower().lstrip(".")
        if formats is None:
            parser.error("--plot needs matplotlib, which is not installed (pip install "
                         "matplotlib, or in selfattn's source folder pip install \".[plot]\")")
        base = os.path.basename(args.plot)
        if not suffix and base.startswith(".") and base[1:].lower() in formats:
            # ".png" is a hidden file without a suffix to Python, not a PNG to the one who typed it
            parser.error(f"--plot: {args.plot!r} is a suffix without a file name; name the file, "
                         f"e.g. {os.path.join(os.path.dirname(args.plot), 'bench' + base)!r}")
        if suffix not in formats:
            parser.error(f"--plot: {args.plot!r} " + (f"has no suffix" if not suffix else
                                                       f"ends in .{suffix}, which matplotlib "
                                                       f"cannot write")
                         + f"; name it .png, .svg or .pdf (or one of "
                         f"{', '.join(sorted(formats))})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m selfattn bench",
        description="selfattn's benchmark: selfattn against naive NumPy, np.matmul and torch "
                    "SDPA, measured side by side (interleaved, medians of repeats).")
    parser.add_argument("--quick", action="store_true",
                        help="a reduced set (about two minutes on 2 cores)")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--plot", metavar="PNG", help="also draw the speed-ups (needs matplotlib)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="threads for selfattn, torch and NumPy's BLAS (default: selfattn's)")
    parser.add_argument("--repeat", type=int, metavar="N", help="timed repeats per case "
                        "(default 7, or 3 with --quick)")
    parser.add_argument("--cases", nargs="+", metavar="REGEX",
                        help="run only cases whose name or group matches one of these")
    parser.add_argument("--no-memory", action="store_true", help="skip the n=65536 memory case")
    parser.add_argument("--cooldown", type=float, metavar="S",
                        help="seconds to pause after each peer's sample so that its spinning "
                             "BLAS threads go idle (default 0.15 with several threads, else 0)")
    args = parser.parse_args(argv)
    _check_arguments(parser, args)
    repeat = args.repeat or (3 if args.quick else 7)

    torch = _torch()
    every_case = build_cases(args.quick, torch)
    cases = _select(every_case, args.cases)
    memory_case = [{"name": "memory", "group": "memory"}]
    with_memory = not args.no_memory and (not args.cases or _select(memory_case, args.cases))
    if not cases and not with_memory:
        groups = {c["group"] for c in every_case + ([] if args.no_memory else memory_case)}
        parser.error(f"--cases: no case matches {' '.join(args.cases)}"
                     + (" (and --no-memory leaves out the memory case)" if args.no_memory else "")
                     + f"; the groups: {', '.join(sorted(groups))}")
    if args.threads is not None:
        try:
            selfattn.set_num_threads(args.threads)
        except ValueError as exc:
            parser.error(f"--threads: {exc}")
    threads = selfattn.get_num_threads()
    if torch is not None:
        torch.set_num_threads(threads)
    blas_limit = None
    try:
        from threadpoolctl import threadpool_limits
        blas_limit = threadpool_limits(limits=threads, user_api="blas")
    except ImportError:
        pass

    def progress(msg):
        print(msg, file=sys.stderr, flush=True)

    if blas_limit is None:
        progress(f"note: threadpoolctl is not installed, so NumPy's BLAS (the np.matmul peer) "
                 f"keeps its own thread count instead of {threads}; "
                 f"`pip install threadpoolctl` (or `pip install .[bench]`)")

    if os.environ.get("OPENBLAS_CORETYPE") or os.environ.get("OPENBLAS_L2_SIZE"):
        progress("note: OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are set, which can slow NumPy's BLAS "
                 "(a peer); run `env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m selfattn "
                 "bench` to measure it at its best")
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_name(), "threads": threads, "isa": selfattn.get_isa(),
        "selfattn": selfattn.__version__, "numpy": np.__version__,
        "torch": getattr(torch, "__version__", None), "python": platform.python_version(),
        "blas": blas_info(),
        "openblas_env": {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
                         if k in os.environ},
    }
    progress(f"selfattn bench: {info['cpu']}, {threads} threads, isa {info['isa']}, "
             f"numpy {info['numpy']}, torch {info['torch'] or 'not installed'}")
    rates = measure_roofline_rates(repeat, progress)
    info["roofline_rates"] = rates
    info["gemm_peak_gflops"] = {dtype: rates[name] / 1e9 for dtype, name in _GEMM_RATE.items()}
    progress(f"  {describe_rates(rates)}")

    cooldown = args.cooldown if args.cooldown is not None else (0.15 if threads > 1 else 0.0)
    info["cooldown_s"] = cooldown
    rng = np.random.default_rng(12345)
    results = []
    t_start = time.perf_counter()
    for k, case in enumerate(cases):
        progress(f"[{k + 1}/{len(cases)}] {case['name']}")
        results.append(run_case(case, repeat, rng, cooldown=cooldown))
    memory = None
    if with_memory:
        progress(f"memory: self_attention_layer float32 n={MEMORY_N} d=64 ...")
        memory = measure_memory(MEMORY_N, 64, causal=args.quick)
    # the rates again, now that the cases ran: a shared machine whose speed changed meanwhile
    # shows it here (the roofline column keeps the rates of the start)
    rates_end = measure_roofline_rates(repeat, progress)
    info["roofline_rates_end"] = rates_end
    drift = rate_drift(rates, rates_end)
    info["steady"] = drift is None or abs(drift[1] - 1) <= STEADY_DRIFT
    if blas_limit is not None:
        blas_limit.restore_original_limits()

    peer_names = []
    for r in results:
        for p in r["peers"]:
            if p not in peer_names:
                peer_names.append(p)
    print(f"selfattn {info['selfattn']} benchmark, {info['date']}")
    print(f"CPU: {info['cpu']}; threads: {threads}; isa: {info['isa']}; numpy {info['numpy']}"
          f"; torch {info['torch'] or '-'}; BLAS: {info['blas'] or '?'}")
    sources = "; ".join(" and ".join(units) + ": " + what for units, what, _ in ROOFLINE_RATES)
    print(f"roofline rates, measured in this run: {describe_rates(rates)} ({sources}); a "
          f"case whose roofline is {' or '.join(RATES_BESIDE)} measures that rate again after "
          "each round of its repeats and is compared with their median")
    print(f"measured again at the end: {describe_rates(rates_end)}; "
          f"{describe_drift(rates, rates_end)}")
    print("x PEER = peer time / selfattn time (above 1: selfattn is faster); medians of "
          f"{repeat} interleaved repeats, each after 20 ms or more of untimed calls of its "
          "function\n")
    print(format_table(results, rates, peer_names))
    for r in results:
        if "peak_bytes" in r:
            ours = r["peak_bytes"]["ours"]
            print(f"\n{r['name']}: peak memory " + ", ".join(
                f"{key} {b / 2**20:.1f} MiB" + ("" if key == "ours" else f" ({b / ours:.0f}x ours)")
                for key, b in r["peak_bytes"].items()))
    if memory:
        print(f"\n{memory['name']}: peak memory above the inputs "
              f"{memory['peak_above_inputs_bytes'] / 2**20:.1f} MiB (output alone "
              f"{memory['output_bytes'] / 2**20:.1f} MiB; the naive scores matrix alone would be "
              f"{memory['naive_scores_bytes'] / 2**30:.0f} GiB), {memory['time_s']:.1f} s")
    progress(f"done in {time.perf_counter() - t_start:.0f} s")

    status = 0
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "results": results, "memory": memory}, f, indent=1)
    if args.plot and not write_plot(args.plot, results, peer_names):
        status = 2
    return status


if __name__ == "__main__":
    sys.exit(main())
