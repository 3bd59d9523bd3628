#!/usr/bin/env python
"""Seeded fuzz campaigns, longer than CI's: `python tests/fuzz.py --seed 0:100 [--examples 500]`.

For every seed in [A, B) and every public array function, runs the hypothesis fuzz tests of
test_fuzz.py (valid moderate values, valid special values, odd inputs; a signature-driven fuzz
for functions it does not know) with `hypothesis.seed(seed)`, so any failure is reproduced by
rerunning the same seed. Prints the number of cases run; exits 1 on the first failure.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from hypothesis import HealthCheck, given, seed, settings, strategies as st  # noqa: E402

import fuzz_cases as F  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", default="0:10", help="A:B runs seeds A..B-1 (or one seed N)")
    parser.add_argument("--examples", type=int, default=300, help="cases per function, mode and seed")
    parser.add_argument("--only", default=None, help="fuzz only this function")
    opts = parser.parse_args()
    lo, _, hi = opts.seed.partition(":")
    seeds = range(int(lo), int(hi) if hi else int(lo) + 1)
    names = [n for n in F.array_functions() if opts.only in (None, n)]
    counter = {"cases": 0}

    def body(strategy_for, must_succeed):
        def run(name, data):
            args, kw = data.draw(strategy_for(name))
            counter["cases"] += 1
            F.run_case(name, args, kw, must_succeed)
        return run

    modes = [
        ("valid", lambda n: F.valid(n, wild=False), True),
        ("special", lambda n: F.valid(n, wild=True), True),
        ("odd", F.odd, False),
    ]
    start = time.time()
    for s in seeds:
        for name in names:
            known = name in F.VALID_CASES
            for mode, strategy_for, must_succeed in (modes if known else [("generic", F.generic, False)]):
                run = body(strategy_for, must_succeed)

                def bind(run, name):
                    return lambda data: run(name, data)
                test = given(data=st.data())(bind(run, name))
                test = settings(max_examples=opts.examples, deadline=None, database=None,
                                suppress_health_check=list(HealthCheck))(test)
                test = seed(s)(test)
                try:
                    test()
                except Exception:
                    print(f"FAILED: seed {s}, {name}, {mode} (rerun: --seed {s} --only {name})",
                          flush=True)
                    raise
            print(f"seed {s}: {name} ok", flush=True)
    print(f"{counter['cases']} cases in {time.time() - start:.0f} s, no failure")


if __name__ == "__main__":
    main()
