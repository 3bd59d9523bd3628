"""Train a one-layer multi-head attention model to reverse sequences, with NumPy and selfattn.

The task: given tokens (t_0, ..., t_{n-1}), output (t_{n-1}, ..., t_0). Position i must copy the
token at position n-1-i, which is exactly what attention can learn: the query of position i comes
to match the key of position n-1-i, and the value carries that token.

The model, all plain NumPy arrays:

    X      = E[tokens] + P                                  token + position embeddings (n, d)
    H      = multi_head_attention(X, W_q, W_k, W_v, W_o)    one attention layer
    logits = H @ W_out                                      (n, vocab)
    loss   = cross-entropy(logits, reversed tokens)

The attention layer and its gradients come from selfattn.multi_head_attention_vjp (the forward,
whose backward reuses its projections and heads' output); the rest is three lines of NumPy; Adam
updates every parameter.

Run:  python examples/train_reverse.py [steps]
"""
import sys

import numpy as np

import selfattn

VOCAB, LENGTH, D_MODEL, HEADS, BATCH = 10, 8, 32, 4, 64


def init(rng):
    s = 1 / np.sqrt(D_MODEL)
    return {
        "E": rng.normal(0, 1, (VOCAB, D_MODEL)),
        "P": rng.normal(0, 1, (LENGTH, D_MODEL)),
        "W_q": rng.normal(0, s, (D_MODEL, D_MODEL)),
        "W_k": rng.normal(0, s, (D_MODEL, D_MODEL)),
        "W_v": rng.normal(0, s, (D_MODEL, D_MODEL)),
        "W_o": rng.normal(0, s, (D_MODEL, D_MODEL)),
        "W_out": rng.normal(0, s, (D_MODEL, VOCAB)),
    }


def loss_and_grads(params, tokens):
    """Cross-entropy of the reversal and the gradient of every parameter."""
    p = params
    target = tokens[:, ::-1]
    X = p["E"][tokens] + p["P"]                                     # (batch, n, d)
    weights = (p["W_q"], p["W_k"], p["W_v"], p["W_o"])
    H, attention_backward = selfattn.multi_head_attention_vjp(X, *weights, num_heads=HEADS)
    logits = H @ p["W_out"]                                         # (batch, n, vocab)

    logits = logits - logits.max(axis=-1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=-1, keepdims=True)
    picked = np.take_along_axis(probs, target[..., None], axis=-1)
    loss = -np.log(picked).mean()
    accuracy = float((probs.argmax(axis=-1) == target).mean())

    # backward: softmax cross-entropy, the output projection, then the attention layer in C
    d_logits = probs.copy()
    np.put_along_axis(d_logits, target[..., None], picked - 1, axis=-1)
    d_logits /= target.size
    grads = {"W_out": np.einsum("bnd,bnv->dv", H, d_logits)}
    dH = d_logits @ p["W_out"].T
    dX, grads["W_q"], grads["W_k"], grads["W_v"], grads["W_o"] = attention_backward(dH)
    grads["P"] = dX.sum(axis=0)
    grads["E"] = np.zeros_like(p["E"])
    np.add.at(grads["E"], tokens, dX)
    return float(loss), grads, accuracy


def main(steps=300, seed=0, lr=3e-3, verbose=True):
    """Trains for `steps` Adam steps and returns the loss after each one."""
    rng = np.random.default_rng(seed)
    params = init(rng)
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    history = []
    for step in range(1, steps + 1):
        tokens = rng.integers(0, VOCAB, size=(BATCH, LENGTH))
        loss, grads, accuracy = loss_and_grads(params, tokens)
        history.append(loss)
        for k in params:
            m[k] = beta1 * m[k] + (1 - beta1) * grads[k]
            v[k] = beta2 * v[k] + (1 - beta2) * grads[k] ** 2
            m_hat = m[k] / (1 - beta1 ** step)
            v_hat = v[k] / (1 - beta2 ** step)
            params[k] -= lr * m_hat / (np.sqrt(v_hat) + eps)
        if verbose and (step == 1 or step % 25 == 0 or step == steps):
            print(f"step {step:4d}   loss {loss:.4f}   accuracy {accuracy:.2f}")
    if verbose:
        tokens = rng.integers(0, VOCAB, size=(1, LENGTH))
        X = params["E"][tokens] + params["P"]
        H = selfattn.multi_head_attention(X, params["W_q"], params["W_k"], params["W_v"],
                                          params["W_o"], num_heads=HEADS)
        print("input   ", tokens[0].tolist())
        print("reversed", (H @ params["W_out"]).argmax(axis=-1)[0].tolist())
    return history


if __name__ == "__main__":
    main(steps=int(sys.argv[1]) if len(sys.argv) > 1 else 300)
