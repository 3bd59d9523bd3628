"""explain: every intermediate of one layer, equal to selfattn's layer, shown step by step."""
import warnings

import numpy as np
import pytest

import selfattn


def _inputs(n=4, d_model=6, d_k=3, d_v=2, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(dtype) for s in ((n, d_model), (d_model, d_k), (d_model, d_k), (d_model, d_v))]


def _reference(X, W_q, W_k, W_v, scale, hidden=None):
    """Each step in extended precision with plain NumPy."""
    X, W_q, W_k, W_v = (np.asarray(a, np.longdouble) for a in (X, W_q, W_k, W_v))
    Q, K, V = X @ W_q, X @ W_k, X @ W_v
    s = Q @ K.T * scale
    if hidden is not None:
        s = np.where(hidden, -np.inf, s)
    m = s.max(axis=1, keepdims=True)
    e = np.exp(s - m)
    r = e.sum(axis=1, keepdims=True)
    w = e / r
    return dict(Q=Q, K=K, V=V, scores=s, row_max=m, exponentials=e, row_sums=r, weights=w, output=w @ V)


@pytest.mark.parametrize("scale", [None, 1.0, 0.3])
def test_every_intermediate_matches_an_independent_computation(scale):
    X, W_q, W_k, W_v = _inputs()
    t = selfattn.explain(X, W_q, W_k, W_v, scale=scale)
    want_scale = 1 / np.sqrt(3) if scale is None else scale
    assert t.scale == pytest.approx(want_scale)
    ref = _reference(X, W_q, W_k, W_v, want_scale)
    for name, want in ref.items():
        got = getattr(t, name)
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, np.asarray(want, np.float64), rtol=1e-12, atol=1e-14, err_msg=name)
    assert t.row_max.shape == (4, 1) and t.row_sums.shape == (4, 1)
    np.testing.assert_allclose(t.weights.sum(axis=-1), 1.0, rtol=1e-14)
    np.testing.assert_allclose(t.output, selfattn.self_attention_layer(X, W_q, W_k, W_v, scale=scale),
                               rtol=1e-12, atol=1e-14)


def test_causal_and_mask_and_fully_masked_rows():
    X, W_q, W_k, W_v = _inputs()
    t = selfattn.explain(X, W_q, W_k, W_v, is_causal=True)
    upper = np.triu(np.ones((4, 4), bool), k=1)
    assert np.isneginf(t.scores[upper]).all() and np.isfinite(t.scores[~upper]).all()
    assert (t.exponentials[upper] == 0).all() and (t.weights[upper] == 0).all()
    ref = _reference(X, W_q, W_k, W_v, 1 / np.sqrt(3), hidden=upper)
    np.testing.assert_allclose(t.output, np.asarray(ref["output"], np.float64), rtol=1e-12, atol=1e-14)

    mask = np.ones((4, 4), bool)
    mask[2] = False  # query 2 sees nothing
    t = selfattn.explain(X, W_q, W_k, W_v, mask=mask)
    assert np.isneginf(t.row_max[2, 0]) and (t.exponentials[2] == 0).all()
    assert (t.weights[2] == 0).all() and (t.output[2] == 0).all()
    assert not np.isnan(t.exponentials).any()
    np.testing.assert_allclose(t.output, selfattn.self_attention_layer(X, W_q, W_k, W_v, mask=mask),
                               rtol=1e-12, atol=1e-14)


def test_large_scores_stay_finite_and_float32_stays_float32():
    X, W_q, W_k, W_v = _inputs()
    t = selfattn.explain(X * 100, W_q, W_k, W_v)
    assert np.abs(t.scores).max() > 1000
    assert np.isfinite(t.exponentials).all() and np.isfinite(t.weights).all()
    t32 = selfattn.explain(*_inputs(dtype=np.float32))
    assert all(getattr(t32, n).dtype == np.float32 for n in ("Q", "scores", "exponentials", "weights", "output"))


def test_text_shows_every_step():
    t = selfattn.explain(*_inputs(), tokens=["the", "cat", "sat", "down"])
    text = str(t)
    steps = ["1. Project the tokens", "2. Scores", "3. Row maximum", "4. Exponentials", "5. Row sums",
             "6. Weights (softmax)", "7. Output"]
    positions = [text.index(s) for s in steps]
    assert positions == sorted(positions)
    for name in ("Q (4, 3)", "K (4, 3)", "V (4, 2)", "scores (4, 4)", "row_max (4, 1)",
                 "exponentials (4, 4)", "row_sums (4, 1)", "weights (4, 4)", "output (4, 2)"):
        assert name in text
    assert "scale = 1/sqrt(d_k) = 1/sqrt(3) = 0.5774" in text
    assert "tokens: the cat sat down" in text
    assert f"{t.weights[0, 0]:.4f}" in text
    assert repr(t).startswith("<AttentionTrace n=4 d_model=6 d_k=3 d_v=2")


def test_html_shows_every_step_with_token_headers():
    t = selfattn.explain(*_inputs(), tokens=["the", "cat", "<b>", "down"], is_causal=True)
    page = t._repr_html_()
    assert page.count("<h4>") == 7 and page.count("<table>") == 9  # Q K V + six steps' matrices
    assert "<th>&lt;b&gt;</th>" in page  # tokens are escaped
    assert "<th>cat</th>" in page and "-inf" in page
    assert "is_causal hides the keys after each query" in page


def test_large_matrices_are_elided_in_html():
    t = selfattn.explain(*_inputs(n=30))
    page = t._repr_html_()
    assert "⋮" in page and "…" in page
    assert page.count("<tr>") < 30 * 9


def test_errors_name_explain():
    X, W_q, W_k, W_v = _inputs()
    with pytest.raises(ValueError, match=r"^explain: X has d_model=6 .*W_q.*looks transposed"):
        selfattn.explain(X, W_q.T, W_k, W_v)
    with pytest.raises(ValueError, match=r"explain: tokens has 3 labels but X has 4 tokens"):
        selfattn.explain(X, W_q, W_k, W_v, tokens=["a", "b", "c"])
    with pytest.raises(TypeError, match="not a single string"):
        selfattn.explain(X, W_q, W_k, W_v, tokens="abcd")
    with pytest.raises(TypeError, match=r"^explain: tokens must be a list of 4 labels, one per "
                                        r"token \(row of X\), got 4$"):
        selfattn.explain(X, W_q, W_k, W_v, tokens=4)
    with pytest.raises(ValueError, match=r"explain shows one sequence.*X\[0\]"):
        selfattn.explain(np.stack([X, X]), W_q, W_k, W_v)
    with pytest.raises(TypeError, match=r"^explain: X has dtype complex"):
        selfattn.explain(X.astype(complex), W_q, W_k, W_v)


def test_inputs_untouched():
    args = _inputs()
    copies = [a.copy() for a in args]
    selfattn.explain(*args, is_causal=True)
    for a, c in zip(args, copies):
        np.testing.assert_array_equal(a, c)


def test_zero_tokens_is_a_clear_error():
    X, W_q, W_k, W_v = _inputs()
    with pytest.raises(ValueError, match=r"explain: X has 0 tokens \(X.shape=\(0, 6\)\); explain "
                                         r"needs at least one token"):
        selfattn.explain(X[:0], W_q, W_k, W_v)


def test_text_form_labels_rows_and_columns_with_the_tokens():
    X, W_q, W_k, W_v = _inputs()
    tokens = ["the", "cat", "sat", "down"]
    text = str(selfattn.explain(X, W_q, W_k, W_v, tokens=tokens))
    weights = text.split("weights (4, 4) =\n")[1].splitlines()
    assert weights[0].split() == tokens                      # the keys as column headers
    assert [line.split()[0] for line in weights[1:5]] == tokens  # the queries as row labels
    output = text.split("output (4, 2) =\n")[1].splitlines()
    assert [line.split()[0] for line in output[:4]] == tokens


def test_hidden_keys_are_mentioned_only_when_something_hides_them():
    X, W_q, W_k, W_v = _inputs()
    assert "hidden" not in str(selfattn.explain(X, W_q, W_k, W_v))
    text = " ".join(str(selfattn.explain(X, W_q, W_k, W_v, is_causal=True)).split())
    assert "a hidden key (score -inf) exactly 0" in text and "is_causal hides the keys" in text
    assert "a row whose keys are all hidden" not in text  # causal: every row sees a key


def test_masks_as_the_mask_helpers_make_them_and_rows_that_see_nothing():
    """padding_mask's (1, 1, n) mask (a batch of one) gave 3-D steps and an HTML view that
    raised; a batch of several is refused by name. A row whose keys are all hidden is 0 in the
    exponentials, weights and output, and the steps' text says so (it said 'exactly 1' and
    'summing to 1'); a NaN stays NaN in its row, as np.exp(scores - row_max) makes it."""
    X, W_q, W_k, W_v = _inputs()
    n = X.shape[0]
    t = selfattn.explain(X, W_q, W_k, W_v, mask=selfattn.padding_mask([3], n),
                         tokens=[f"t{i}" for i in range(n)])
    assert t.scores.shape == t.weights.shape == (n, n) and "<table>" in t._repr_html_()
    np.testing.assert_allclose(t.output, selfattn.self_attention_layer(
        X, W_q, W_k, W_v, mask=selfattn.padding_mask([3], n)[0]), rtol=1e-12)
    with pytest.raises(ValueError, match=r"explain: mask has shape \(2, 4, 4\), with batch "
                                         r"dimensions \(2,\); explain shows one sequence"):
        selfattn.explain(X, W_q, W_k, W_v, mask=np.ones((2, n, n), bool))
    blind = np.ones((n, n), bool)
    blind[1] = False
    t = selfattn.explain(X, W_q, W_k, W_v, mask=blind)
    assert (t.exponentials[1] == 0).all() and (t.weights[1] == 0).all() and (t.output[1] == 0).all()
    text = " ".join(str(t).split())
    assert "a row whose keys are all hidden (row_max -inf) is shifted by 0 instead" in text
    assert "a row that sees no key gets weights 0" in text
    X_nan = X.copy()
    X_nan[0, 0] = np.nan
    t = selfattn.explain(X_nan, W_q, W_k, W_v)
    assert np.isnan(t.exponentials[0]).all() and np.isnan(t.weights[0]).all()


def test_the_text_form_has_one_number_format_with_or_without_tokens():
    """Without tokens the matrices were NumPy's print (8.8e-12 shown as 0., other elisions):
    both forms now show 4 significant digits and elide past 12 rows alike."""
    X, W_q, W_k, W_v = _inputs()
    X = X * 1e-6
    plain = str(selfattn.explain(X, W_q, W_k, W_v))
    labelled = str(selfattn.explain(X, W_q, W_k, W_v, tokens=list("abcd")))
    q = selfattn.explain(X, W_q, W_k, W_v).Q
    assert f"{q[0, 0]:.4g}" in plain and f"{q[0, 0]:.4g}" in labelled
    assert all(len(line) <= 110 for line in plain.splitlines())


def test_non_finite_inputs_are_explained_without_numpy_warnings():
    """inf and NaN follow the layer's rules, silently, as the layer computes them: NumPy's
    "invalid value encountered in matmul" (inf times 0 in the projections) and "in subtract"
    (a +inf mask: inf - inf) escaped, and under -W error were exceptions."""
    X, W_q, W_k, W_v = _inputs()
    X[0, 0] = np.inf
    W_q[1, :] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trace = selfattn.explain(X, W_q, W_k, W_v)
        np.testing.assert_array_equal(trace.output, selfattn.self_attention_layer(X, W_q, W_k, W_v))
        trace = selfattn.explain(_inputs()[0], W_q, W_k, W_v, mask=np.inf)
    assert np.isnan(trace.output).all()     # a +inf in the mask makes the row NaN


def test_rows_made_nan_by_the_inputs_are_named_where_the_steps_promise_0_to_1():
    X, W_q, W_k, W_v = _inputs()
    text = " ".join(str(selfattn.explain(X, W_q, W_k, W_v)).split())
    assert "which hold NaN" not in text
    X[1, 0] = np.nan    # every query sees token 1's key: every row is NaN
    text = " ".join(str(selfattn.explain(X, W_q, W_k, W_v)).split())
    assert "exactly 1 (but not in rows 0, 1, 2" in text
    assert text.count("which hold NaN: NaN or inf in X made their scores NaN or inf") == 2
    # a causal mask keeps the NaN key from the rows before it
    trace = selfattn.explain(X, W_q, W_k, W_v, is_causal=True)
    assert "(but not in rows 1, 2" in " ".join(str(trace).split())
    assert not np.isnan(trace.weights[0]).any()
    # the NaN of a mask built as (1 - allowed) * -inf (0 * -inf) is the mask's, not the inputs'
    X, W_q, W_k, W_v = _inputs()
    n = X.shape[0]
    with np.errstate(invalid="ignore"):
        mask = (1 - np.tril(np.ones((n, n)))) * -np.inf
    mask[1:] = np.where(np.tril(np.ones((n, n)))[1:] > 0, 0.0, -np.inf)   # only row 0 is NaN
    text = " ".join(str(selfattn.explain(X, W_q, W_k, W_v, mask=mask)).split())
    assert ("(but not in row 0, which holds NaN: NaN or +inf in the mask (0 * -inf is NaN: build a "
            "float mask with np.where(allowed, 0.0, -np.inf)) made its scores") in text
    assert "in X" not in text


def test_a_float_mask_is_said_to_be_added_and_minus_inf_named_only_where_scores_are():
    """A -1e9 mask (and ALiBi's bias as a mask) was told "those scores are -inf" and "a hidden
    key (score -inf) exactly 0", above scores that held no -inf."""
    X, W_q, W_k, W_v = _inputs()
    n = X.shape[0]
    allowed = selfattn.causal_mask(n)
    texts = {kind: " ".join(str(selfattn.explain(X, W_q, W_k, W_v, mask=mask)).split())
             for kind, mask in (("bool", allowed), ("-1e9", np.where(allowed, 0.0, -1e9)),
                                ("-inf", np.where(allowed, 0.0, -np.inf)))}
    assert "the mask hides the keys where it is False: those scores are -inf" in texts["bool"]
    assert "a hidden key (score -inf) exactly 0" in texts["bool"]
    for kind in ("-1e9", "-inf"):
        assert "the mask's values are added to the scores (a -inf hides a key)" in texts[kind]
        assert "those scores are -inf" not in texts[kind]
    assert "(score -inf)" not in texts["-1e9"] and "(score -inf)" in texts["-inf"]


def test_float16_inputs_are_explained_in_float32_as_the_layer_computes_them():
    """float16 inputs: the steps ran in float16, where scores of 147456 were inf and the weights
    NaN, and a warning blamed the float16 result; the layer computes them in float32 and its
    result is finite. The steps now run in float32 and the output is float16, as the layer's."""
    X = np.array([[16., 1, 0, 0], [1, 16, 0, 0]], dtype=np.float16)
    W = (np.eye(4) * 24).astype(np.float16)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        t = selfattn.explain(X, W, W, W)
    assert t.scores.dtype == t.weights.dtype == t.Q.dtype == np.float32
    assert t.scores[0, 0] == np.float32((384.0 ** 2 + 24.0 ** 2) / 2.0)   # 74016: inf in float16
    np.testing.assert_array_equal(t.weights, np.eye(2, dtype=np.float32))
    assert t.output.dtype == np.float16
    np.testing.assert_array_equal(t.output, selfattn.self_attention_layer(X, W, W, W))


@pytest.mark.parametrize("d_k, d_v", [(2, 0), (0, 2)])
def test_zero_width_projections_print(d_k, d_v):
    """d_k or d_v of 0 is a layer explain accepts; printing its trace raised "max() arg is an
    empty sequence" from inside the table's layout."""
    t = selfattn.explain(np.ones((3, 4)), np.ones((4, d_k)), np.ones((4, d_k)), np.ones((4, d_v)))
    text = str(t)
    empty = "Q (3, 0)" if d_k == 0 else "V (3, 0)"
    assert f"{empty} =\n    0\n    1\n    2\n" in text
    assert "weights (3, 3) =\n    0  0.3333 0.3333 0.3333\n" in text


def test_a_window_of_numpy_integers_is_shown_as_plain_numbers():
    """window=np.array([1, 1]) was shown as "window=(np.int64(1), np.int64(1))" in the scores'
    step (NumPy 2's repr of its integers; a reviewer's case)."""
    t = selfattn.explain(np.eye(3), np.eye(3), np.eye(3), np.eye(3), window=np.array([1, 1]))
    text = " ".join(str(t).split())
    assert ("the band (window=(1, 1)) hides from query i every key j but i - 1 <= j <= i + 1"
            in text)
    assert "int64" not in text


def test_long_and_multiline_tokens_keep_the_tables_readable():
    """One 60-character token made every column of every (n, n) table that wide, and a token
    holding a newline split the table's rows; both are shown on one line, cut at 20 characters
    (as plot_attention's labels)."""
    tokens = ["a" * 60, "b\nc", "d"]
    text = str(selfattn.explain(*_inputs(n=3), tokens=tokens))
    tables = text[text.index("\n\n"):]         # past the line that lists the tokens
    assert "a" * 21 not in tables and "a" * 19 + "…" in tables and "b↵c" in tables
    weights = tables[tables.index("weights (3, 3) ="):].splitlines()
    assert max(len(line) for line in weights[1:5]) < 100      # 249 with the whole token
    page = selfattn.explain(*_inputs(n=3), tokens=tokens)._repr_html_()
    assert "a" * 21 not in page and "<th>b↵c</th>" in page


def test_elided_html_tables_are_labelled_with_indices_without_tokens():
    """Without tokens the HTML tables had no headers, so an elided one (6 values, "…", 6 values)
    could not be placed; the text form labels its rows with indices."""
    page = selfattn.explain(*_inputs(n=14))._repr_html_()
    weights = page[page.index("<i>weights</i>"):]
    weights = weights[:weights.index("</table>")]
    assert "<tr><th></th><th>0</th>" in weights and "<th>13</th></tr>" in weights
    assert "<tr><th>13</th>" in weights


def test_one_token_is_one_token():
    trace = selfattn.explain(*_inputs(n=1))
    assert str(trace).startswith("Self-attention, step by step: n=1 token, d_model=6, d_k=3")
    assert ": n=1 token, d_model=6" in trace._repr_html_()
    assert str(selfattn.explain(*_inputs(n=2))).startswith("Self-attention, step by step: n=2 "
                                                           "tokens,")
