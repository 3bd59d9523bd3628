def plot_attention(*a, **k): raise NotImplementedError
