"""The benchmark (python -m selfattn bench) compares like with like and writes what it says."""
import contextlib
import importlib.util
import json

import numpy as np
import pytest

import selfattn
from selfattn import _bench


def small_cases():
    return [c for c in _bench.build_cases(quick=True, torch=None)
            if any(f"n={n} " in c["name"] + " " for n in (8, 512))]


def arrays(result):
    """A case's result as a list of arrays (backward cases return several gradients)."""
    if isinstance(result, (tuple, list)):
        return [np.asarray(r) for r in result]
    return [np.asarray(result)]


@pytest.mark.parametrize("case", small_cases(), ids=lambda c: c["name"])
def test_peers_compute_what_ours_computes(case):
    """Every peer returns the same values, in the same dtype, as selfattn for that case."""
    assert_peers_agree(case)


@pytest.mark.parametrize("case", _bench._step_cases(512, 64, np.float32)
                         + _bench._step_cases(512, 64, np.float64), ids=lambda c: c["name"])
def test_step_cases_time_the_same_product(case):
    """The step cases (scores, output, projection against np.matmul) at a size the quick set
    does not run: the same operation on both sides (the scores' np.matmul peer has no scale, so
    ours is timed with scale=1.0)."""
    assert_peers_agree(case)


def assert_peers_agree(case):
    state = case["setup"](np.random.default_rng(0))
    ours = arrays(case["ours"](state))
    for name, peer in case["peers"].items():
        if peer is None:
            continue
        theirs = arrays(peer(state))
        assert len(theirs) == len(ours), name
        for mine, other in zip(ours, theirs):
            assert other.shape == mine.shape, name
            assert other.dtype == mine.dtype, name
            tol = 2e-4 if mine.dtype == np.float32 else 1e-10
            scale = max(1.0, float(np.abs(mine).max(initial=0)))
            np.testing.assert_allclose(mine, other, rtol=tol, atol=tol * scale, err_msg=name)


def test_main_writes_json_and_table(tmp_path, capsys):
    path = tmp_path / "bench.json"
    status = _bench.main(["--cases", "layer float64 n=8 ", "softmax float32",
                          "--repeat", "1", "--no-memory", "--json", str(path)])
    assert status == 0
    out = capsys.readouterr()
    assert "layer float64 n=8 d=4" in out.out and "x naive" in out.out
    assert "[1/" in out.err                                    # progress goes to stderr
    data = json.loads(path.read_text())
    names = [r["name"] for r in data["results"]]
    assert "layer float64 n=8 d=4" in names and "softmax float32 n=2048" in names
    for r in data["results"]:
        assert r["time_s"] > 0
        assert r["peers"]["naive"]["ratio"] > 0
    assert data["info"]["gemm_peak_gflops"]["float32"] > 0
    # the rates measured again at the end, and the run called steady or not
    assert set(data["info"]["roofline_rates_end"]) == set(data["info"]["roofline_rates"])
    assert isinstance(data["info"]["steady"], bool)
    assert "measured again at the end" in out.out


def test_a_run_whose_rates_moved_is_called_unsteady():
    start = {"sgemm": 150e9, "dgemm": 70e9, "read": 25e9}
    steady = {"sgemm": 145e9, "dgemm": 72e9, "read": 24.5e9}
    assert _bench.rate_drift(start, steady) == ("sgemm", pytest.approx(145 / 150))
    assert _bench.describe_drift(start, steady).startswith("steady: the rates moved by 3% at most")
    moved = dict(steady, dgemm=51e9)      # another tenant took a core for part of the run
    assert _bench.rate_drift(start, moved)[0] == "dgemm"
    line = _bench.describe_drift(start, moved)
    assert line.startswith("unsteady: dgemm 70.0 at the start, 51.0 GFLOP/s at the end (-27%)")
    assert "beside another run's" in line
    assert _bench.rate_drift(start, {}) is None


def test_case_filter_and_bad_arguments(tmp_path, capsys):
    for bad in (["--repeat", "0"], ["--threads", "0"], ["--no-such-option"]):
        with pytest.raises(SystemExit):
            _bench.main(bad)
    # refused before anything is measured (these raised mid-run, or after it, losing the results)
    for bad, words in (
            (["--threads", "100000"], "--threads: set_num_threads: n must be between 1 and"),
            (["--cooldown", "-1"], "--cooldown must be a number of seconds >= 0, got -1.0"),
            (["--cooldown", "nan"], "--cooldown must be a number of seconds >= 0, got nan"),
            (["--cases", "["], "--cases: '[' is not a regular expression"),
            (["--json", str(tmp_path / "no" / "x.json")], "(its folder does not exist)"),
            (["--plot", str(tmp_path)], "(a folder of that name exists)"),
            # os.access said yes (root; a read-only mount): the run was lost at its end
            (["--json", "/proc/selfattn-bench.json"], "cannot write '/proc/selfattn-bench.json' ("),
            (["--cases", "nosuch"], "--cases: no case matches nosuch; the groups: attention, "),
            (["--cases", "nosuch", "--no-memory"], "(and --no-memory leaves out the memory case)"),
            (["--threads", "1", "--cases", "nosuch"], "--cases: no case matches nosuch"),
            # a plot matplotlib cannot write was a traceback after the whole run (or a file
            # named other than asked: "noext" wrote noext.png)
            (["--plot", str(tmp_path / "plot.txt")], "plot.txt' ends in .txt, which matplotlib "
                                                     "cannot write; name it .png, .svg or .pdf"),
            (["--plot", str(tmp_path / "noext")], "noext' has no suffix; name it .png"),
            # ".png" is a hidden file without a suffix to Python; its typist meant a PNG
            (["--plot", str(tmp_path / ".png")], ".png' is a suffix without a file name; name "
                                                 f"the file, e.g. {str(tmp_path / 'bench.png')!r}"),
            (["--plot", str(tmp_path / "..png")], "..png' has no suffix; name it .png")):
        before = selfattn.get_num_threads()
        selfattn.set_num_threads(2)
        with pytest.raises(SystemExit) as info:
            _bench.main(bad)
        assert info.value.code == 2
        assert words in capsys.readouterr().err, bad
        assert selfattn.get_num_threads() == 2      # nothing was set before the refusal
        selfattn.set_num_threads(before)
    assert not (tmp_path / "x.json").exists()
    assert _bench._unwritable(str(tmp_path / "x.json")) is None   # the try leaves no file
    assert not (tmp_path / "x.json").exists()
    (tmp_path / "kept.json").write_text("an earlier run")
    assert _bench._unwritable(str(tmp_path / "kept.json")) is None
    assert (tmp_path / "kept.json").read_text() == "an earlier run"
    assert _bench._select([{"name": "sdpa float32 n=8 d=64", "group": "attention"},
                           {"name": "softmax float64 n=512", "group": "steps"}],
                          ["steps"])[0]["name"] == "softmax float64 n=512"


class FakeHost:
    """A clock and a sleep for run_case, and functions that run slow for a while after a pause,
    as on the shared hosts (cores gone idle): 5 ms a call until 8 ms after the pause, then 1 ms,
    on a clock that only the calls and pauses move, so the test is exact."""

    def __init__(self):
        self.now, self.warm_at, self.calls = 0.0, 0.008, []

    def perf_counter(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds
        self.warm_at = self.now + 0.008
        self.calls.append("pause")

    def function(self, name):
        def call(state):
            self.now += 0.005 if self.now < self.warm_at else 0.001
            self.calls.append(name)
        return call


def test_each_sample_follows_its_own_warm_up(monkeypatch):
    """A pause (the cooldown after a peer's sample) makes the next calls slow for 8 ms, longer
    than one call; neither ours nor a peer is charged for it, whatever its place in the order,
    because each sample follows at least warm_up seconds of calls of its own function."""
    host = FakeHost()
    monkeypatch.setattr(_bench, "time", host)
    case = {"name": "fake", "group": "fake", "setup": lambda rng: None,
            "ours": host.function("ours"),
            "peers": {"first peer": host.function("first peer"),
                      "second peer": host.function("second peer")}}
    result = _bench.run_case(case, repeat=3, rng=None, min_sample=0.004, cooldown=0.15,
                             warm_up=0.01)
    assert result["time_s"] == pytest.approx(0.001)
    for peer in ("first peer", "second peer"):
        assert result["peers"][peer]["time_s"] == pytest.approx(0.001)
        assert result["peers"][peer]["ratio"] == pytest.approx(1.0)
    # the timed loop, a pause after each peer's sample: runs of one function's calls
    pauses = [i for i, call in enumerate(host.calls) if call == "pause"]
    timed = host.calls[pauses[-6] + 1:]
    runs = [call for i, call in enumerate(timed) if i == 0 or timed[i - 1] != call]
    assert runs == ["second peer", "pause", "ours", "first peer", "pause"] * 2 + ["second peer",
                                                                                  "pause"]
    # ours after a pause: two slow calls (10 ms) of warm-up, then its sample of 1 ms calls
    ours_run = timed[timed.index("ours"):timed.index("first peer")]
    assert len(ours_run) > 2


def test_a_peer_slow_in_most_repeats_is_unsteady_and_one_slow_repeat_is_not(monkeypatch):
    """spread: the median over the fastest repeat. A peer whose calls ran 30x slower in 2 of 3
    repeats (a busy host) is past UNSTEADY; ours, slow in one repeat only, is not."""
    def ours(state):
        pass

    def peer(state):
        pass

    # the times of each one's samples: two to size them, then one a repeat
    times = {ours: iter([1e-3, 1e-3, 1e-3, 3e-2, 1e-3]), peer: iter([1e-3, 1e-3, 3e-2, 1e-3, 3e-2])}
    monkeypatch.setattr(_bench, "_time_once", lambda fn, state, number: next(times[fn]))
    case = {"name": "fake", "group": "fake", "setup": lambda rng: None, "ours": ours,
            "peers": {"peer": peer}}
    result = _bench.run_case(case, repeat=3, rng=None, min_sample=0.004, cooldown=0.0,
                             warm_up=0.0)
    assert result["spread"] == {"ours": pytest.approx(1.0), "peer": pytest.approx(30.0)}
    assert _bench._unsteady(result, "peer")
    assert "30.00?" in _bench.format_table([result], {}, ["peer"])


def test_a_single_call_of_warm_up_would_time_the_slow_calls(monkeypatch):
    """The fake host's slow start outlasts one call: with warm_up=0 (one call) ours, which follows
    a pause, is charged for it, so the test above can fail."""
    host = FakeHost()
    monkeypatch.setattr(_bench, "time", host)
    case = {"name": "fake", "group": "fake", "setup": lambda rng: None,
            "ours": host.function("ours"), "peers": {"peer": host.function("peer")}}
    result = _bench.run_case(case, repeat=3, rng=None, min_sample=0.004, cooldown=0.15,
                             warm_up=0.0)
    assert result["time_s"] > 0.001
    assert result["peers"]["peer"]["time_s"] == pytest.approx(0.001)


def test_a_memory_bound_case_is_compared_with_the_rate_measured_beside_it(monkeypatch):
    """A case whose roofline is the read bandwidth measures it again after each round of its
    interleaved repeats (RATES_BESIDE), and its roofline column compares it with their median,
    not with the run's rate from minutes before: here the bandwidth moves (10, 30, 20 GB/s) and
    ours reads 20 MB a call in 1 ms, so 100% of the 20 GB/s beside it, where the run's 40 GB/s
    would have said 50%. A compute-bound case keeps the run's rate."""
    host = FakeHost()
    monkeypatch.setattr(_bench, "time", host)
    entered = []

    @contextlib.contextmanager
    def fake_read_rate():
        entered.append(True)
        rates = iter([10e9, 30e9, 20e9])

        def measure():
            host.calls.append("read")
            return next(rates)
        yield measure

    monkeypatch.setattr(_bench, "RATES_BESIDE", {"read": fake_read_rate})
    case = {"name": "fake decode", "group": "decode", "setup": lambda rng: None,
            "roofline": ("read", 20e6), "ours": host.function("ours"),
            "peers": {"peer": host.function("peer")}}
    result = _bench.run_case(case, repeat=3, rng=None, min_sample=0.004, cooldown=0.15,
                             warm_up=0.01)
    assert entered == [True]                          # one probe for the case, set up once
    assert result["rate_beside"] == {"read": 20e9}
    assert _bench.roofline_fraction(result, {"read": 40e9}) == pytest.approx(1.0)
    timed = host.calls[host.calls.index("read") - 1:]
    rounds = [call for i, call in enumerate(timed) if i == 0 or timed[i - 1] != call]
    assert rounds[1:] == ["read", "ours", "peer", "pause"] * 2 + ["read"]
    table = _bench.format_table([result], {"read": 40e9}, ["peer"])
    assert "100% read of 20.0 GB/s" in table

    gemm = dict(case, name="fake scores", roofline=("sgemm", 2e8))
    result = _bench.run_case(gemm, repeat=3, rng=None, min_sample=0.004, cooldown=0.15,
                             warm_up=0.01)
    assert "rate_beside" not in result and len(entered) == 1
    assert _bench.roofline_fraction(result, {"sgemm": 4e11}) == pytest.approx(0.5)


def read_memory_cores():
    """read_memory of each backend this build has: the C extension's four streams and the NumPy
    backend's reduction."""
    from selfattn import _numpy_core
    cores = [pytest.param(_numpy_core, id="numpy")]
    if selfattn.config()["backend"] == "c":
        cores.append(pytest.param(selfattn._core, id="c"))
    return cores


@pytest.mark.parametrize("core", read_memory_cores())
@pytest.mark.parametrize("n_words", [0, 1, 31, 32, 33, 1023, 1024 * 4 + 37, 40000])
def test_read_memory_reads_every_word(core, n_words):
    """The probe's reader ORs every word of its array (so a probe that skipped some of it would
    report a rate it never read at): one bit set at each of many places (each stream's start, end
    and middle, the words left over after the four streams, the last word), one at a time, is
    always in the result; the array is not changed."""
    words = np.zeros(n_words, np.uint64)
    assert core.read_memory(words) == 0
    stream = n_words // 32 * 8
    places = {0, n_words - 1, n_words // 2, 4 * stream, 4 * stream - 1}
    places |= {s * stream + k for s in range(4) for k in (0, 7, 8, stream // 2, stream - 1)}
    for bit, place in enumerate(sorted(p for p in places if 0 <= p < n_words)):
        words[:] = 0
        words[place] = np.uint64(1) << np.uint64(bit % 64)
        copy = words.copy()
        assert core.read_memory(words) == 1 << (bit % 64), place
        np.testing.assert_array_equal(words, copy)
    words = np.arange(n_words, dtype=np.uint64) << np.uint64(20)
    assert core.read_memory(words) == int(np.bitwise_or.reduce(words))


@pytest.mark.skipif(selfattn.config()["backend"] != "c", reason="the C extension's argument check")
@pytest.mark.parametrize("words", [np.zeros(8, np.float64), np.zeros(8, np.int64),
                                   np.zeros(16, np.uint64)[::2], np.zeros((2, 4), np.uint64),
                                   np.zeros(8, np.dtype(np.uint64).newbyteorder()), [1, 2]],
                         ids=["float64", "int64", "strided", "2-d", "swapped", "list"])
def test_read_memory_takes_only_what_it_can_read_in_place(words):
    with pytest.raises(ValueError, match="_core.read_memory: words must be a 1-d contiguous"):
        selfattn._core.read_memory(words)


def test_the_read_probe_reads_its_array():
    """read_probe's threads read an array of the size asked (one read untimed), at some rate."""
    with _bench.read_probe(2, nbytes=1 << 22) as read:
        assert read() > 0 and read() > 0
    assert _bench.measure_bandwidth(2, 3, nbytes=1 << 22) > 0


def test_plot_without_matplotlib_names_an_install_that_exists(monkeypatch, capsys, tmp_path):
    """No selfattn on PyPI: `pip install selfattn[plot]` would fail, or one day install another
    package; the advice names matplotlib, or the extra from selfattn's own folder."""
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    assert _bench.write_plot(str(tmp_path / "p.png"), [], ["torch"]) is False
    err = capsys.readouterr().err
    assert "pip install matplotlib" in err and 'pip install ".[plot]"' in err, err
    assert "pip install selfattn" not in err


def _result(name, group, time_s, peers, spread=None):
    return {"name": name, "group": group, "flops": None, "roofline": None, "time_s": time_s,
            "peers": {p: {"time_s": t, "ratio": t / time_s} for p, t in peers.items()},
            "spread": spread or {}}


LONG = "selfattn fused forward (forward / backward time; target >= 0.4: backward <= 2.5x)"


def test_the_table_has_a_block_per_group_with_only_its_peers():
    """A reviewer's run: one table of 44 rows with a column for every peer of the run (10, most
    cells '-'), one header 85 characters long: 366 characters a row."""
    results = [_result("sdpa n=8", "attention", 1e-5, {"torch": 2e-5, "naive": 3e-5}),
               _result("backward n=8", "backward", 2e-5, {LONG: 8e-6, "torch autograd": 3e-5}),
               _result("noisy n=8", "attention", 1e-5, {"torch": 3e-2}, {"ours": 1.1, "torch": 2400})]
    table = _bench.format_table(results, {}, ["torch", "naive", LONG, "torch autograd"])
    attention, backward, note = table.split("\n\n")
    assert attention.startswith("attention:\ncase") and "x naive" in attention
    assert "x [1]" not in attention and "autograd" not in attention
    assert backward.startswith("backward:\ncase") and "x torch autograd" in backward
    assert "x torch " not in backward.splitlines()[1].replace("x torch autograd", "")
    assert backward.splitlines()[-1] == f"[1] x {LONG}" and "x [1]" in backward
    assert max(len(line) for line in attention.splitlines() + backward.splitlines()[:-1]) < 100
    # the noisy peer's ratio is marked, and what the mark means said once
    assert "3000.00?" in attention and "2.00?" not in attention
    assert note.startswith("?: half the repeats of selfattn or of the peer, or more, ran over "
                           "2x slower than the fastest")


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_the_plot_draws_speed_ups_only_and_each_rows_bars_on_its_label(tmp_path, monkeypatch):
    """The bars were offset by their peer's index among all 10 peers (a 'vs naive' bar above its
    row's label, another near the next row's), the legend covered the last rows, and the
    backward's forward/backward ratio was drawn as a 'speed-up' of 0.4. Each bar runs from 1 to
    its ratio (on the log axis a bar from its edge made 0.95 look like a bar of its own)."""
    import matplotlib.axes
    drawn = []
    barh = matplotlib.axes.Axes.barh
    monkeypatch.setattr(matplotlib.axes.Axes, "barh",
                        lambda self, y, width, **kw: drawn.append((y, kw["left"] + width,
                                                                   kw.get("label")))
                        or barh(self, y, width, **kw))
    results = [_result("sdpa n=8", "attention", 1e-5, {"torch": 2e-5, "naive": 3e-5}),
               _result("backward n=8", "backward", 2e-5, {LONG: 8e-6, "torch autograd": 3e-5})]
    assert _bench.write_plot(str(tmp_path / "p.png"), results,
                             ["torch", "naive", LONG, "torch autograd"])
    assert (tmp_path / "p.png").stat().st_size > 0
    assert [(round(y, 3), round(w, 3)) for y, w, _ in drawn] == [(-0.2, 2.0), (0.2, 3.0),
                                                                 (1.0, 1.5)]
    assert [label for _, _, label in drawn] == ["vs torch", "vs naive", "vs torch autograd"]
