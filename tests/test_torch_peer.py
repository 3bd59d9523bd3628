"""The README's recipe for torch users: nn.MultiheadAttention's weights and masks as
multi_head_attention takes them. torch is a peer, never a dependency: skipped without it."""
import numpy as np
import pytest

import selfattn as sa

torch = pytest.importorskip("torch")


def test_multihead_attention_matches_torch_with_its_masks_inverted():
    B, n, E, H = 2, 5, 8, 2
    X = np.random.default_rng(0).normal(size=(B, n, E))
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(E, H, batch_first=True, dtype=torch.float64)
    blocked = np.triu(np.ones((n, n), bool), 1)                 # torch: True hides a key
    padding = np.array([[False] * 5, [False] * 3 + [True] * 2])  # torch: True ignores a key
    expected = mha(*[torch.tensor(X)] * 3, attn_mask=torch.tensor(blocked),
                   key_padding_mask=torch.tensor(padding), need_weights=False)[0].detach().numpy()
    W = mha.in_proj_weight.detach().numpy()
    b = mha.in_proj_bias.detach().numpy()
    weights = (W[:E].T, W[E:2 * E].T, W[2 * E:].T, mha.out_proj.weight.detach().numpy().T)
    biases = dict(b_q=b[:E], b_k=b[E:2 * E], b_v=b[2 * E:], b_o=mha.out_proj.bias.detach().numpy())
    both = sa.multi_head_attention(X, *weights, num_heads=H, mask=~blocked & ~padding[:, None, None, :],
                                   **biases)
    lengths = sa.multi_head_attention(X, *weights, num_heads=H, mask=~blocked, key_lengths=[5, 3],
                                      **biases)
    np.testing.assert_allclose(both, expected, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(lengths, expected, rtol=1e-12, atol=1e-13)
    # the same boolean array given to both is a different answer, as the README warns
    same = sa.multi_head_attention(X, *weights, num_heads=H, mask=blocked, **biases)
    assert not np.allclose(same, expected, atol=1e-3)


@pytest.mark.parametrize("kind", ["requires grad", "bfloat16"])
def test_a_tensor_numpy_cannot_read_is_a_named_type_error_everywhere(kind):
    """plot_attention and assert_attention_close's `desired` let torch's own RuntimeError or
    TypeError through, naming neither the call nor the argument (the array functions did)."""
    from selfattn.testing import assert_attention_close
    w = torch.softmax(torch.randn(4, 4, dtype=torch.float64), -1)
    bad = w.clone().requires_grad_() if kind == "requires grad" else w.bfloat16()
    fix = "detach" if kind == "requires grad" else "convert it to float32 first"
    with pytest.raises(TypeError, match=rf"^assert_attention_close: desired, a torch.Tensor, could "
                                        rf"not be converted to a NumPy array; .*{fix}"):
        assert_attention_close(w.numpy(), bad)
    pytest.importorskip("matplotlib")
    import matplotlib
    matplotlib.use("Agg")
    with pytest.raises(TypeError, match=rf"^plot_attention: weights, a torch.Tensor, .*{fix}"):
        sa.plot_attention(bad)
    with pytest.raises(TypeError, match=rf"^plot_attention: mask, a torch.Tensor, .*{fix}"):
        sa.plot_attention(w.numpy(), mask=bad)


def test_a_0d_tensor_is_an_options_number_as_a_0d_array_is():
    # scale=torch.tensor(0.5) (or jax's 1 / jnp.sqrt(d)) was refused: "scale must be a real
    # number or None, got tensor(0.5000)", where np.array(0.5) and np.float32(0.5) were taken
    rng = np.random.default_rng(0)
    Q, K, V = rng.standard_normal((3, 5, 4))
    options = dict(scale=0.5, is_causal=True, softcap=30.0, dropout_p=0.25, seed=3)
    want = sa.scaled_dot_product_attention(Q, K, V, **options)
    as_tensors = {k: torch.tensor(v) for k, v in options.items()}
    np.testing.assert_array_equal(sa.scaled_dot_product_attention(Q, K, V, **as_tensors), want)
    with pytest.raises(TypeError, match=r"scale must be a real number or None, got tensor\(\[0.5"):
        sa.scaled_dot_product_attention(Q, K, V, scale=torch.tensor([0.5]))
    with pytest.raises(TypeError, match=r"softcap must be a positive real number or None, got "
                                        r"tensor\(True\)"):
        sa.scaled_dot_product_attention(Q, K, V, softcap=torch.tensor(True))
