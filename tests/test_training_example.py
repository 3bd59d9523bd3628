"""examples/train_reverse.py: a model trained with selfattn's gradients learns to reverse."""
import importlib.util
import pathlib

import numpy as np

EXAMPLE = pathlib.Path(__file__).resolve().parent.parent / "examples" / "train_reverse.py"


def load_example():
    spec = importlib.util.spec_from_file_location("train_reverse", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_loss_falls():
    history = load_example().main(steps=40, seed=1, verbose=False)
    assert len(history) == 40 and np.isfinite(history).all()
    start, end = np.mean(history[:3]), np.mean(history[-3:])
    # chance level is log(10) = 2.3; after 40 steps the model is well on its way
    assert start > 2.0
    assert end < 0.5 * start, (start, end)


def test_the_gradients_it_trains_with_are_right():
    ex = load_example()
    rng = np.random.default_rng(0)
    params = ex.init(rng)
    tokens = rng.integers(0, ex.VOCAB, size=(4, ex.LENGTH))
    _, grads, _ = ex.loss_and_grads(params, tokens)
    eps = 1e-6
    for name in ("W_q", "W_o", "P", "E"):
        idx = tuple(rng.integers(0, s) for s in params[name].shape)
        if name == "E":
            idx = (int(tokens[0, 0]), 3)
        plus = {k: v.copy() for k, v in params.items()}
        minus = {k: v.copy() for k, v in params.items()}
        plus[name][idx] += eps
        minus[name][idx] -= eps
        fd = (ex.loss_and_grads(plus, tokens)[0] - ex.loss_and_grads(minus, tokens)[0]) / (2 * eps)
        assert abs(fd - grads[name][idx]) <= 1e-6 * max(1.0, abs(fd)), (name, fd, grads[name][idx])
