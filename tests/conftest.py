import pytest
import torch
from torch import nn


class Attn(nn.Module):
    """Returns a tuple, like many attention modules."""

    def __init__(self, d):
        super().__init__()
        self.q = nn.Linear(d, d)

    def forward(self, x, scale=1.0):
        return self.q(x) * scale, x


class Layer(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.attn = Attn(d)
        self.mlp = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))

    def forward(self, x):
        x = x + self.attn(x)[0]
        return x + self.mlp(x)


class TinyMLP(nn.Module):
    def __init__(self, d=8, n=2):
        super().__init__()
        self.embed = nn.Linear(4, d)
        self.layers = nn.ModuleList(Layer(d) for _ in range(n))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        x = self.embed(x)
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


@pytest.fixture
def tiny_mlp():
    torch.manual_seed(0)
    return TinyMLP().eval()


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module's small tensors: no OpenMP spin-waits on a busy 2-core machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
