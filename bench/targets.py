"""The README's performance table from `python -m selfattn bench --json` files.

    python bench/targets.py run1.json [run2.json ...]

Prints two Markdown tables, one row per target and one column per run: the fast-kernel and gradient
issues' targets, then issue 11's (decoding, batches of small problems, the backwards, the steps,
long sequences). A cell is the measured ratio (peer time / selfattn time, medians of interleaved
repeats) or fraction of a roofline rate measured in the same run (the read bandwidth of a decode
case between its own repeats: selfattn._bench.RATES_BESIDE); against torch in the multi-head
and backward cases also the share of the run's GEMM rate that ours and torch reach by the case's
flop count, and the share the target would need (past 100%, more than the machine's GEMM rate).
Several runs side by side show how much a shared machine moves the figures.
"""
import json
import sys

from selfattn._bench import roofline_fraction, roofline_rate


def load(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def rows_of(path):
    """(info, [(case, target, measured), ...]) for one run."""
    data = load(path)
    info = data["info"]
    by_name = {r["name"]: r for r in data["results"]}
    peak = info["gemm_peak_gflops"]

    def ratio(name, peer):
        r = by_name.get(name)
        p = r and r["peers"].get(peer)
        return f"{p['ratio']:.2f}x" if p else "not measured"

    def fraction(name):
        r = by_name.get(name)
        if not r:
            return "not measured"
        rate = r["flops"] / r["time_s"] / 1e9
        return f"{rate:.0f} GFLOP/s = {100 * rate / peak[r['dtype']]:.0f}%"

    rows = [
        ("fused layer, float32, n=4096, d=64, vs naive NumPy", "≥ 3x",
         ratio("layer float32 n=4096 d=64", "naive")),
        ("fused layer, float64, n=2048, d=64, vs naive NumPy", "≥ 2x",
         ratio("layer float64 n=2048 d=64", "naive")),
        ("sdpa float32 n=4096 d=64 vs torch SDPA", "≥ 1.0x (aim 1.3x)",
         ratio("sdpa float32 n=4096 d=64", "torch")),
        ("sdpa float32 n=4096 d=64 causal vs torch SDPA", "≥ 1.0x (aim 1.3x)",
         ratio("sdpa float32 n=4096 d=64 causal", "torch")),
    ]
    for n in (2048, 4096, 8192):
        rows.append((f"fused float32 n={n} d=64: attention FLOP rate / sgemm rate", "≥ 65%",
                     fraction(f"sdpa float32 n={n} d=64")))
    for step in ("scores", "output"):
        for dtype in ("float32", "float64"):
            cells = ", ".join(ratio(f"{step} {dtype} n={n} d=64", "np.matmul")
                              for n in (512, 2048, 4096))
            rows.append((f"{step} {dtype} vs np.matmul (n=512, 2048, 4096)", "≥ 0.9x", cells))
    for dtype in ("float32", "float64"):
        cells = ", ".join(ratio(f"softmax {dtype} n={n}", "naive") for n in (512, 2048, 4096))
        rows.append((f"softmax {dtype} vs naive NumPy (n=512, 2048, 4096)", "≥ 2.5x", cells))
    rows.append(("the notebook's size (n=8, d=4) layer vs naive NumPy", "≥ 3x",
                 ratio("layer float64 n=8 d=4", "naive")))
    memory = data.get("memory")
    if memory:
        rows.append(("n=65536, d=64, float32 layer: peak memory above the inputs", "< 300 MiB",
                     f"{memory['peak_above_inputs_bytes'] / 2**20:.1f} MiB"))
    backward = "scaled_dot_product_attention_backward f32 n=2048 d=64"
    r = by_name.get(backward)
    if r:
        peers = r["peers"]
        forward = next((v for k, v in peers.items() if "fused forward" in k and v), None)
        torch = next((v for k, v in peers.items() if "torch" in k and v), None)
        if forward:
            rows.append(("backward f32 n=2048 d=64: time / fused forward's time", "≤ 3x",
                         f"{1 / forward['ratio']:.2f}x"))
        if torch:
            rows.append(("backward f32 n=2048 d=64 vs torch autograd SDPA backward", "≥ 1.0x",
                         f"{torch['ratio']:.2f}x"))

    return info, rows


def issue11_rows(path):
    """(info, [(case, target, measured), ...]) for issue 11's targets, found by group and name so
    that every case of a group the bench runs gets a row."""
    data = load(path)
    info = data["info"]
    results = data["results"]
    by_name = {r["name"]: r for r in results}
    rates = info.get("roofline_rates", {})

    def peer(r, word):
        return next((v for k, v in r["peers"].items() if word in k and v), None)

    def ratio(name, word):
        r = by_name.get(name)
        p = r and peer(r, word)
        return f"{p['ratio']:.2f}x" if p else "not measured"

    def roofline(r):
        fraction = roofline_fraction(r, rates)
        return "" if fraction is None else f"; {100 * fraction:.0f}% {r['roofline'][0]}"

    def against(r, word, target):
        """The ratio to a peer, and for a compute-bound case the GEMM rate's share that ours, the
        peer and a selfattn meeting `target` (peer time / target) reach by the case's flop count:
        past 100%, the target asks for more than the machine's GEMM rate."""
        p = peer(r, word)
        if not p:
            return "not measured"
        spec = r.get("roofline")
        if not spec or not roofline_rate(r, rates) or spec[0] == "read":
            return f"{p['ratio']:.2f}x"
        rate, work = spec
        share = work / r["time_s"] / roofline_rate(r, rates)
        return (f"{p['ratio']:.2f}x ({rate}: ours {100 * share:.0f}%, {word} "
                f"{100 * share / p['ratio']:.0f}%; {target:g}x needs "
                f"{100 * share * target / p['ratio']:.0f}%)")

    rows = []
    for r in results:
        if r["group"] == "decode":
            rows.append((f"{r['name']} vs torch SDPA; roofline", "≥ 1.2x; ≥ 70% read",
                         ratio(r["name"], "torch") + roofline(r)))
    for r in results:
        if r["group"] == "batches":
            rows.append((f"{r['name']} vs torch SDPA", "≥ 1.3x", ratio(r["name"], "torch")))
    for r in results:
        if r["name"].startswith("multi_head_attention "):
            rows.append((f"{r['name']} vs torch SDPA with its projections", "≥ 1.5x",
                         against(r, "torch", 1.5)))
    for r in results:
        if r["name"].startswith("scaled_dot_product_attention_backward"):
            forward = peer(r, "fused forward")
            rows.append((f"{r['name']}: time / our fused forward's time", "≤ 2.5x",
                         f"{1 / forward['ratio']:.2f}x" if forward else "not measured"))
            rows.append((f"{r['name']} vs torch autograd", "≥ 1.5x", against(r, "torch", 1.5)))
        elif r["name"].startswith(("multi_head_attention_backward",
                                   "multi_head_attention_vjp backward")):
            rows.append((f"{r['name']} vs torch autograd", "≥ 1.5x", against(r, "torch", 1.5)))
    for step in ("scores", "output", "projection"):
        for dtype in ("float32", "float64"):
            cells = ", ".join(ratio(f"{step} {dtype} n={n} d=64", "np.matmul")
                              for n in (512, 2048, 4096))
            rows.append((f"{step} {dtype} vs np.matmul (n=512, 2048, 4096)", "≥ 1.0x", cells))
    for dtype in ("float32", "float64"):
        for d in (64, 128):
            cells = ", ".join(ratio(f"sdpa {dtype} n={n} d={d}", "torch") for n in (2048, 4096, 8192))
            rows.append((f"sdpa {dtype} d={d} vs torch SDPA (n=2048, 4096, 8192)", "≥ 1.0x", cells))
    return info, rows


def print_table(runs):
    print("| case | target | " + " | ".join(f"run of {info['date']}" for info, _ in runs) + " |")
    print("|---|---|" + "---|" * len(runs))
    cases = {}                               # case -> target, in the order the runs first give them
    for _, rows in runs:
        for case, target, _ in rows:
            cases.setdefault(case, target)
    cells = [{case: measured for case, _, measured in rows} for _, rows in runs]
    for case, target in cases.items():
        print(f"| {case} | {target} | " + " | ".join(c.get(case, "not measured") for c in cells)
              + " |")


def main(paths):
    runs = [rows_of(path) for path in paths]
    for info, _ in runs:
        peak = info["gemm_peak_gflops"]
        end = info.get("roofline_rates_end")
        again = "" if not end else (
            f" (at the end of the run: sgemm {end['sgemm'] / 1e9:.0f}, dgemm "
            f"{end['dgemm'] / 1e9:.0f} GFLOP/s; {'steady' if info.get('steady') else 'unsteady'})")
        print(f"- run of {info['date']}: {info['cpu']}, {info['threads']} threads, {info['isa']}, "
              f"NumPy {info['numpy']}, torch {info.get('torch')}; GEMM peak by np.matmul: sgemm "
              f"{peak['float32']:.0f}, dgemm {peak['float64']:.0f} GFLOP/s{again}")
    print()
    print_table(runs)
    print()
    print_table([issue11_rows(path) for path in paths])


if __name__ == "__main__":
    main(sys.argv[1:])
