"""plot_attention: a heatmap with queries as rows and keys as columns, rendered offscreen (Agg)."""
import os
import io
import subprocess
import warnings
import sys
import traceback

import numpy as np
import pytest

import selfattn

matplotlib = pytest.importorskip("matplotlib", reason="matplotlib is the `plot` extra (in `test`)")
matplotlib.use("Agg")
import matplotlib.image  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _weights(n_q=3, n_k=4, seed=0):
    scores = np.random.default_rng(seed).normal(size=(n_q, n_k))
    return selfattn.softmax_attention_weights(scores)


def _png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    buf.seek(0)
    return matplotlib.image.imread(buf, format="png")


def test_renders_to_a_png_of_the_expected_size():
    w = _weights(3, 4)
    fig = plt.figure(figsize=(4, 3), dpi=100)
    ax = fig.add_subplot()
    out = selfattn.plot_attention(w, ["the", "cat", "sat"], key_tokens=["a", "b", "c", "d"], ax=ax)
    assert out is ax
    image = _png(fig)
    assert image.shape == (300, 400, 4)  # 4 x 3 inches at 100 dpi, RGBA
    assert image[..., :3].std() > 0.05    # not a blank canvas
    # The heatmap holds the weights, rows = queries, on a fixed 0..1 scale.
    heat = ax.images[0]
    np.testing.assert_array_equal(np.asarray(heat.get_array()), w)
    assert heat.get_clim() == (0.0, 1.0)
    assert len(fig.axes) == 2 and fig.axes[1].get_ylabel() == "attention weight"  # colorbar


def test_default_figure_png():
    ax = selfattn.plot_attention(_weights(5, 5), list("abcde"))
    image = _png(ax.figure)
    width, height = ax.figure.get_size_inches() * ax.figure.dpi
    assert image.shape == (round(height), round(width), 4)


def test_token_labels_and_positions_are_set_together():
    ax = selfattn.plot_attention(_weights(3, 4), ["q0", "q1", "q2"], key_tokens=["k0", "k1", "k2", "k3"])
    assert [t.get_text() for t in ax.get_yticklabels()] == ["q0", "q1", "q2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["k0", "k1", "k2", "k3"]
    assert list(ax.get_yticks()) == [0, 1, 2] and list(ax.get_xticks()) == [0, 1, 2, 3]
    assert ax.get_ylabel() == "query" and ax.get_xlabel() == "key"

    ax = selfattn.plot_attention(_weights(3, 3), ["x", "y", "z"])  # self-attention: same labels
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y", "z"]


def test_values_are_written_in_small_maps_only():
    w = _weights(3, 4)
    ax = selfattn.plot_attention(w)
    texts = sorted(t.get_text() for t in ax.texts)
    assert texts == sorted(f"{v:.2f}" for v in w.ravel())
    assert len(selfattn.plot_attention(_weights(30, 30)).texts) == 0
    assert len(selfattn.plot_attention(_weights(30, 30), annotate=True).texts) == 900
    assert len(selfattn.plot_attention(w, annotate=False).texts) == 0


def test_heads():
    w = np.stack([_weights(3, 3, seed=s) for s in range(4)])  # (H, n, n)
    ax = selfattn.plot_attention(w, head=2)
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), w[2])
    assert ax.get_title() == "head 2"
    ax = selfattn.plot_attention(w[None], head=-1)  # (1, H, n, n): batch of one
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), w[3])
    ax = selfattn.plot_attention(w[:1])  # one head needs no head=
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), w[0])
    with pytest.raises(ValueError, match=r"holds 4 heads, or the sequences of a batch "
                                         r".*head=0 \.\.\. head=3"):
        selfattn.plot_attention(w)
    with pytest.raises(ValueError, match=r"head=4 does not exist; weights has 4 heads"):
        selfattn.plot_attention(w, head=4)
    with pytest.raises(ValueError, match="has no head dimension"):
        selfattn.plot_attention(w[0], head=0)
    with pytest.raises(ValueError, match=r"batch dimensions \(2,\)"):
        selfattn.plot_attention(np.stack([w, w]), head=0)


def test_clear_errors():
    w = _weights(3, 4)
    with pytest.raises(ValueError, match=r"tokens has 3 labels for the 3 queries, but there are 4 keys; pass key_tokens="):
        selfattn.plot_attention(w, ["a", "b", "c"])
    with pytest.raises(ValueError, match=r"tokens has 2 labels but the weights have 3 queries \(rows\)"):
        selfattn.plot_attention(w, ["a", "b"], key_tokens=list("abcd"))
    with pytest.raises(ValueError, match=r"key_tokens has 3 labels but the weights have 4 keys \(columns\)"):
        selfattn.plot_attention(w, list("abc"), key_tokens=list("abc"))
    with pytest.raises(TypeError, match="not a single string"):
        selfattn.plot_attention(_weights(3, 3), "abc")
    with pytest.raises(TypeError, match=r"^plot_attention: tokens must be a list of 3 labels, "
                                        r"one per query, got 5$"):
        selfattn.plot_attention(_weights(3, 3), 5)
    with pytest.raises(TypeError, match="key_tokens must be a list of 4 labels, one per key, got"):
        selfattn.plot_attention(w, list("abc"), key_tokens=4)

    class Unprintable:
        def __str__(self):
            raise TypeError("no str for this one")
    with pytest.raises(TypeError, match="^no str for this one$"):     # its own error, not ours
        selfattn.plot_attention(_weights(3, 3), ["a", Unprintable(), "c"])
    with pytest.raises(ValueError, match="must be a matrix"):
        selfattn.plot_attention(np.ones(3) / 3)
    with pytest.raises(TypeError, match="real numbers"):
        selfattn.plot_attention(np.ones((2, 2), complex))
    with pytest.warns(UserWarning, match="outside \\[0, 1\\].*scores rather than weights"):
        selfattn.plot_attention(np.array([[3.0, -1.0], [0.5, 0.5]]))


def test_weights_after_dropout_are_drawn_up_to_their_largest():
    """Kept weights after dropout are divided by 1 - p, so some are above 1 and none below 0:
    the warning names dropout, and the colours are not clipped at 1."""
    rng = np.random.default_rng(0)
    X, W = rng.normal(size=(6, 8)), rng.normal(size=(3, 8, 4))
    _, w = selfattn.self_attention_layer(X, *W, return_weights=True, dropout_p=0.5, seed=1)
    assert w.max() > 1 and w.min() >= 0
    with pytest.warns(UserWarning, match=r"above 1 \(up to .*weights after dropout.*colours go up "
                                         r"to the largest") as record:
        ax = selfattn.plot_attention(w)
    assert not any("scores rather than weights" in str(r.message) for r in record)
    assert ax.images[0].get_clim() == (0.0, pytest.approx(w.max()))


def test_token_labels_from_a_generator():
    w = _weights(2, 3)
    ax = selfattn.plot_attention(w, (t for t in "ab"), key_tokens=(t for t in "xyz"))
    assert [t.get_text() for t in ax.get_xticklabels()] == ["x", "y", "z"]
    with pytest.raises(ValueError, match="tokens has 2 labels for the 2 queries, but there are 3"):
        selfattn.plot_attention(w, (t for t in "ab"))


def test_without_matplotlib_import_error_says_how_to_install(monkeypatch):
    for mod in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, mod, None)  # hidden: importing it raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r'pip install matplotlib \(or, in selfattn\'s source folder, '
                                          r'pip install "\.\[plot\]"\)'):
        selfattn.plot_attention(_weights())


def test_import_selfattn_does_not_import_matplotlib():
    code = "import sys, selfattn; assert 'matplotlib' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_vmin_vmax_and_a_colour_range_that_shows_small_weights():
    ax = selfattn.plot_attention(_weights(3, 4), vmin=0.1, vmax=0.5)
    assert ax.images[0].get_clim() == (0.1, 0.5)
    w = _weights(24, 24)  # 24 keys: every weight is small
    ax = selfattn.plot_attention(w)
    assert ax.images[0].get_clim() == (0.0, pytest.approx(w.max()))
    assert selfattn.plot_attention(_weights(8, 8)).images[0].get_clim() == (0.0, 1.0)


def test_numbers_shown_up_to_20_tokens_in_a_smaller_font():
    ax = selfattn.plot_attention(_weights(16, 16))
    assert len(ax.texts) == 256 and ax.texts[0].get_fontsize() < 8
    assert selfattn.plot_attention(_weights(6, 6)).texts[0].get_fontsize() == 8
    assert len(selfattn.plot_attention(_weights(21, 21)).texts) == 0


def test_rows_that_do_not_sum_to_one_warn():
    scores = np.random.default_rng(1).normal(size=(4, 5))
    column_softmax = np.exp(scores) / np.exp(scores).sum(axis=0, keepdims=True)
    with pytest.warns(UserWarning, match="rows of the weights do not sum to 1.*axis 0"):
        selfattn.plot_attention(column_softmax)
    masked = _weights(3, 4)
    masked[1] = 0.0  # a fully masked query: no warning
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        selfattn.plot_attention(masked)


def test_a_masked_array_is_refused_as_everywhere_else():
    # np.asarray dropped its mask: every entry was drawn, the hidden ones too, without a word
    w = _weights(3, 3)
    hidden = np.ma.masked_array(w, mask=~selfattn.causal_mask(3))
    with pytest.raises(TypeError, match=r"plot_attention: weights is a masked array \(numpy.ma\)"
                                        r".*weights.filled\(value\).*mask= argument"):
        selfattn.plot_attention(hidden)
    with pytest.raises(TypeError, match=r"plot_attention: mask is a masked array.*mask.filled"):
        selfattn.plot_attention(w, mask=np.ma.masked_array(selfattn.causal_mask(3), mask=False))
    assert not plt.get_fignums()  # refused before a figure was made


def test_long_sequences_keep_a_readable_figure():
    """A figure that grew with the tokens was 72 x 65 inches at 128 tokens (1.9 GB to save):
    the default figure stops at 12 x 10 inches, and from 41 tokens every k-th one is labelled,
    each label still at its own token's position."""
    tokens = [f"t{i}" for i in range(128)]
    ax = selfattn.plot_attention(_weights(128, 128), tokens)
    assert tuple(ax.figure.get_size_inches()) == (12.0, 10.0)
    for ticks, labels in ((ax.get_xticks(), ax.get_xticklabels()),
                          (ax.get_yticks(), ax.get_yticklabels())):
        assert 20 <= len(ticks) <= 40
        assert [t.get_text() for t in labels] == [tokens[int(i)] for i in ticks]
    assert tuple(selfattn.plot_attention(_weights(3, 4)).figure.get_size_inches()) == (4.2, 2.7)
    ax = selfattn.plot_attention(_weights(40, 40))  # up to 40: every one labelled
    assert list(ax.get_xticks()) == list(range(40))


def test_mask_draws_hidden_keys_white_and_without_a_number():
    """Hidden keys have weight 0, as do visible keys whose weight rounds to 0.00: with mask=,
    the hidden ones are drawn white, unnumbered, and the key axis says so."""
    n = 5
    mask = selfattn.causal_mask(n)
    scores = np.random.default_rng(0).normal(size=(n, n)) * 8
    w = selfattn.softmax_attention_weights(np.where(mask, scores, -np.inf))
    assert (w[~mask] == 0).all() and (w[mask] < 0.005).any()  # some visible weights read 0.00
    ax = selfattn.plot_attention(w, list("abcde"), mask=mask)
    heat, blank = ax.images
    np.testing.assert_array_equal(np.asarray(heat.get_array()), w)
    np.testing.assert_array_equal(np.ma.getmaskarray(blank.get_array()), mask)  # shown where hidden
    image = _png(ax.figure)
    assert image.shape[-1] == 4 and image[..., :3].max() == 1.0  # white is drawn
    assert len(ax.texts) == int(mask.sum())       # one number per visible key
    assert ax.get_xlabel() == "key (white: hidden by the mask)"
    # the same mask as a float (added to the scores: -inf hides), or broadcast over heads
    ax = selfattn.plot_attention(w, mask=np.where(mask, 0.0, -np.inf))
    assert len(ax.texts) == int(mask.sum())
    ax = selfattn.plot_attention(np.stack([w, w]), head=1, mask=mask)
    assert len(ax.texts) == int(mask.sum()) and ax.get_title() == "head 1"
    ax = selfattn.plot_attention(w, mask=np.ones((n, n), bool))  # nothing hidden
    assert len(ax.images) == 1 and ax.get_xlabel() == "key"


def test_weights_on_hidden_keys_are_named_and_drawn():
    """A student's mask applied after the softmax leaves weight on hidden keys: a warning says
    so (with a query and a key), and those cells keep their colour and number."""
    n = 4
    mask = selfattn.causal_mask(n)
    w = selfattn.softmax_attention_weights(np.random.default_rng(1).normal(size=(n, n)))
    with pytest.warns(UserWarning, match=r"6 weights sit on keys the mask hides \(query 0 gives "
                                         r"0\.\d+ to key 1\).*applied after the softmax"):
        ax = selfattn.plot_attention(w, mask=mask)
    assert len(ax.images) == 1 and len(ax.texts) == n * n


def test_a_mask_applied_after_the_softmax_is_named_and_the_warning_points_at_the_call():
    """weights * mask (the keys' weights zeroed after the softmax) leaves rows summing to less
    than 1 and nothing on hidden keys: the warning says which slip that is, at the caller's
    line."""
    n = 6
    mask = selfattn.causal_mask(n)
    w = selfattn.softmax_attention_weights(np.random.default_rng(1).normal(size=(n, n)))
    with pytest.warns(UserWarning, match=r"5 of 6 rows .*was the mask applied after the softmax "
                                         r"\(weights \* mask\)\?") as caught:
        selfattn.plot_attention(w * mask, mask=mask)
    assert [os.path.basename(c.filename) for c in caught] == ["test_plot.py"]
    with pytest.warns(UserWarning, match="do not sum to 1") as caught:
        selfattn.plot_attention(w * mask)  # without the mask nothing says which keys are hidden
    assert "after the softmax" not in str(caught[0].message)


def test_errors_show_the_callers_line_only():
    with pytest.raises(ValueError, match="plot_attention: tokens has 2 labels") as info:
        selfattn.plot_attention(_weights(3, 3), ["a", "b"])
    files = [os.path.basename(f.filename) for f in traceback.extract_tb(info.value.__traceback__)]
    assert files == ["test_plot.py", "_validate.py"]  # the public call's one frame


def test_bad_masks_are_named():
    w = _weights(3, 4)
    with pytest.raises(ValueError, match=r"plot_attention: mask \(3, 3\) does not broadcast to "
                                         r"the weights \(3, 4\)"):
        selfattn.plot_attention(w, mask=np.ones((3, 3), bool))
    with pytest.raises(TypeError, match=r"mask must be boolean \(True: may attend\).*int64"):
        selfattn.plot_attention(w, mask=np.ones((3, 4), np.int64))


def test_a_boolean_array_is_drawn_as_a_mask():
    """causal_mask / window_mask drawn as they are: two colours and a legend, not weights
    (no warning that its rows do not sum to 1, no colour scale of 'attention weight')."""
    mask = selfattn.window_mask(6, 6, 2, 0) & selfattn.causal_mask(6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ax = selfattn.plot_attention(mask, list("abcdef"))
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()), mask.astype(float))
    assert ax.get_title() == "mask" and len(ax.texts) == 0
    bar = ax.figure.axes[1]
    assert [t.get_text() for t in bar.get_yticklabels()] == ["hidden", "may attend"]
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcdef")
    heads = np.stack([mask, selfattn.causal_mask(6)])
    ax = selfattn.plot_attention(heads, head=1, mask=~np.eye(6, dtype=bool))  # both: and
    np.testing.assert_array_equal(np.asarray(ax.images[0].get_array()),
                                  (selfattn.causal_mask(6) & ~np.eye(6, dtype=bool)).astype(float))
    assert ax.get_title() == "head 1: mask"


def test_masks_as_libraries_write_them():
    """A mask with the batch and head axes of size 1 that the weights drop, and a float mask of
    -1e9 rather than -inf (a hidden key whose weight is exactly 0): both draw the hidden keys
    white. One weight on a hidden key is told in the singular."""
    n = 4
    causal = selfattn.causal_mask(n)
    w = selfattn.softmax_attention_weights(np.where(causal, 0.0, -1e9))
    for mask in (causal[None, None], np.where(causal, 0.0, -1e9)[None]):
        ax = selfattn.plot_attention(w[None], mask=mask)
        assert len(ax.images) == 2 and len(ax.texts) == int(causal.sum())
    one = w.copy()
    one[0] = [0.5, 0.5, 0, 0]      # rows still sum to 1
    with pytest.warns(UserWarning, match=r"^plot_attention: 1 weight sits on keys the mask hides "
                                         r"\(query 0 gives 0\.5 to key 1\).* It is drawn as a "
                                         r"weight\.$"):
        selfattn.plot_attention(one, mask=causal)


def test_nan_and_inf_weights_are_named_and_the_grey_explained():
    """A learner's softmax without the max subtracted gives NaN rows: plotted silently in grey,
    with "row 0 sums to 0.5" for a row [nan, 0.5] as the only warning."""
    scores = np.array([[1000.0, 999.0, -5.0], [0.1, 0.2, 0.3]])
    with np.errstate(all="ignore"):
        naive = np.exp(scores) / np.exp(scores).sum(axis=-1, keepdims=True)   # row 0: nan, nan, 0
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ax = selfattn.plot_attention(naive)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert "2 of the weights are NaN or inf (query 0, key 0: nan)" in messages[0]
    assert "s.max(axis=-1, keepdims=True)" in messages[0]
    assert caught[0].filename == __file__
    assert "grey: NaN or inf" in ax.get_xlabel()
    # the numbers written on grey cells are black, readable on light grey
    nan_texts = [t for t in ax.texts if t.get_text() == "nan"]
    assert len(nan_texts) == 2 and all(t.get_color() == "black" for t in nan_texts)

    half = np.array([[np.nan, 0.5], [0.5, 0.5]])
    with pytest.warns(UserWarning, match="1 of the weights is NaN or inf") as record:
        selfattn.plot_attention(half)
    assert not any("sum to 1" in str(w.message) for w in record)
    with pytest.warns(UserWarning, match=r"query 1, key 0: inf"):
        selfattn.plot_attention(np.array([[1.0, 0.0], [np.inf, 0.0]]))


def test_equal_weights_keep_the_colours_of_0_to_1():
    """Uniform attention over 16 keys was drawn at the top of the colour scale (vmax = 1/16),
    where over 15 it was dark: equal weights have no structure to stretch."""
    for n in (15, 16, 40):
        uniform = np.full((3, n), 1.0 / n)
        assert selfattn.plot_attention(uniform).images[0].get_clim() == (0.0, 1.0)
        plt.close("all")


def test_nan_rows_the_mask_hides_whole_are_named_as_such():
    """A row that sees no key is NaN from a softmax (-inf - -inf): the advice to subtract the
    row's maximum, which made the NaN, was wrong there."""
    mask = np.tril(np.ones((3, 3), dtype=bool))
    mask[0] = False
    weights = _weights(3, 3)
    weights[0] = np.nan
    weights[1:] = np.where(mask[1:], weights[1:], 0.0)
    weights[1:] /= weights[1:].sum(axis=-1, keepdims=True)
    with pytest.warns(UserWarning) as record:
        ax = selfattn.plot_attention(weights, mask=mask)
    text = " ".join(str(w.message) for w in record)
    assert "3 of the weights are NaN or inf (query 0, key 0: nan)" in text
    assert "drawn white, as hidden keys. That row sees no key (the mask hides all of them)" in text
    assert "subtract" not in text and "grey" not in ax.get_xlabel()


def test_nearly_equal_float32_weights_keep_the_colours_of_0_to_1():
    uniform = selfattn.softmax_attention_weights(np.float32(np.random.default_rng(3).normal(
        size=(1, 16)) * 1e-7 + 0.5).repeat(3, axis=0))
    assert uniform.min() != uniform.max()       # a unit in the last place apart
    assert selfattn.plot_attention(uniform).images[0].get_clim() == (0.0, 1.0)


def test_a_mask_of_the_opposite_convention_is_named_as_inverted():
    """torch's nn.MultiheadAttention masks (True = hide) given as mask=: every weight sits on a
    'hidden' key, and the warning asked whether the mask came after the softmax."""
    weights = selfattn.scaled_dot_product_attention(
        np.eye(6), np.eye(6), np.eye(6), is_causal=True, return_weights=True)[1]
    with pytest.warns(UserWarning, match=r"is the mask inverted\? Here True means 'may attend'.*"
                                         r"pass ~mask") as record:
        selfattn.plot_attention(weights, mask=~selfattn.causal_mask(6))
    assert "after the softmax" not in " ".join(str(w.message) for w in record)
    # weights on hidden keys beside visible ones: the order slip it was
    with pytest.warns(UserWarning, match="after the softmax"):
        selfattn.plot_attention(_weights(6, 6), mask=selfattn.causal_mask(6))


def test_bfloat16_weights_are_plotted():
    """JAX's bfloat16 weights (ml_dtypes' dtype, kind "V") were refused as "must be real
    numbers"; they are shown as float32 holds them."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    w = _weights()
    ax = selfattn.plot_attention(w.astype(ml_dtypes.bfloat16))
    shown = np.asarray(ax.images[0].get_array())
    np.testing.assert_array_equal(shown, w.astype(ml_dtypes.bfloat16).astype(np.float32))


def test_weights_rounded_to_bfloat16_or_float16_sum_to_one_within_their_rounding():
    """Correct softmax weights rounded to bfloat16 (torch's, then .float() as the TypeError for
    bfloat16 advises) have rows that sum to 1 within about 2e-3: a fixed tolerance of 1e-3
    warned on a third of them. A row off by more still warns, with its sum shown to the digit
    that differs from 1 (1.003 was shown as "1")."""
    rng = np.random.default_rng(0)
    for dtype_bits in (16, 32):
        for trial in range(20):
            x = rng.normal(size=(32, 32)) * 3
            e = np.exp(x - x.max(axis=-1, keepdims=True))
            w = (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)
            # bfloat16: float32 with its low 16 bits rounded away (to nearest even)
            bits = w.view(np.uint32).astype(np.uint64)
            bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
            rounded = bits.astype(np.uint32).view(np.float32)
            weights = rounded if dtype_bits == 32 else w.astype(np.float16)
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                selfattn.plot_attention(weights)
            plt.close("all")
    with pytest.warns(UserWarning, match=r"\(row 0 sums to 1\.003\)"):
        selfattn.plot_attention(np.full((2, 2), 0.5015))


def test_token_labels_are_shown_as_written_on_one_line_and_cut_when_long():
    """Two `$` made a label matplotlib's math text ("costs $5 or $6" drawn in italics without
    them; "$\\frac$" failed the drawing); a newline split a label; a 300-character label
    collapsed the axes."""
    w = _weights(4, 4)
    tokens = ["costs $5 or $6", "$\\frac$", "a\nb", "x" * 300]
    ax = selfattn.plot_attention(w, tokens)
    _png(ax.figure)                                   # draws: it raised ValueError
    shown = [t.get_text() for t in ax.get_yticklabels()]
    assert shown == [r"costs \$5 or \$6", r"\$\frac\$", "a↵b", "x" * 19 + "…"]
    assert [t.get_text() for t in ax.get_xticklabels()] == shown


def test_one_dimensional_weights_are_told_to_be_a_matrix_before_the_mask_is_read():
    with pytest.raises(ValueError, match=r"weights must be a matrix .* use weights\[None, :\]"):
        selfattn.plot_attention([0.5, 0.5], mask=np.ones((2, 2), bool))


def test_annotate_must_be_true_or_false():
    """annotate="no" was truthy and wrote the numbers."""
    with pytest.raises(TypeError, match=r"plot_attention: annotate must be True or False, got 'no'"):
        selfattn.plot_attention(_weights(), annotate="no")
    assert not selfattn.plot_attention(_weights(), annotate=np.False_).texts
