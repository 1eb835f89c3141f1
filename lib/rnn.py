"""Recurrent networks written step by step: the Elman RNN and the LSTM (chapter 1).

h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh) (Elman, 1990) and the LSTM of Hochreiter &
Schmidhuber (1997) with torch's gate order (i, f, g, o). A Python loop over L, the batch in
parallel; `from_torch` copies the weights of torch.nn.RNN / torch.nn.LSTM so the outputs
can be compared. `gradient_norms` measures how far back a gradient reaches (BPTT).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from .checks import check_positive_int, check_same_device, check_tensor

ACTIVATIONS = {"tanh": torch.tanh, "relu": torch.relu}


# ----------------------------------------------------------------------------- validation
def _check_cell_args(x, W_ih, W_hh, b_ih, b_hh, h0, gates: int):
    """x: (B, L, D_in); W_ih: (G*D, D_in); W_hh: (G*D, D); b_*: (G*D,); h0: (B, D)."""
    check_tensor("x", x, 3, dims="(B, L, D_in)")
    bsz, length, d_in = x.shape
    if length == 0:
        raise ValueError("x must have shape (B, L, D_in) with L >= 1, got L = 0")
    check_tensor("W_hh", W_hh, 2, dims="(G*D, D)")
    d = W_hh.shape[1]
    if W_hh.shape[0] != gates * d:
        raise ValueError(f"W_hh must have shape (G*D, D) = {(gates * d, d)}, got shape {tuple(W_hh.shape)}")
    check_tensor("W_ih", W_ih, 2, shape=(gates * d, d_in), dims="(G*D, D_in)")
    for name, b in (("b_ih", b_ih), ("b_hh", b_hh)):
        if b is not None:
            check_tensor(name, b, 1, shape=(gates * d,), dims="(G*D,)")
    if h0 is not None:
        check_tensor("h0", h0, 2, shape=(bsz, d), dims="(B, D)")
    check_same_device(x=x, W_ih=W_ih, W_hh=W_hh, b_ih=b_ih, b_hh=b_hh, h0=h0)
    return bsz, length, d


def _affine(x, W, b):
    return x @ W.T if b is None else torch.addmm(b, x, W.T)


def elman_step(h, xW_t, W_hh, b_hh=None, act=torch.tanh):
    """h_t = act(xW_t + W_hh h_{t-1} + b_hh); h: (B, D), xW_t = W_ih x_t + b_ih: (B, D)."""
    return act(xW_t + _affine(h, W_hh, b_hh))  # (B, D)


def lstm_step(h, c, xW_t, W_hh, b_hh=None):
    """One LSTM step; h, c: (B, D), xW_t = W_ih x_t + b_ih: (B, 4D). Returns (h_t, c_t)."""
    gates = xW_t + _affine(h, W_hh, b_hh)  # (B, 4D)
    i, f, g, o = gates.chunk(4, dim=-1)  # each (B, D)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # (B, D): additive memory
    h = torch.sigmoid(o) * torch.tanh(c)  # (B, D)
    return h, c


# ----------------------------------------------------------------------------- Elman RNN
def elman_rnn(x, W_ih, W_hh, b_ih=None, b_hh=None, h0=None, nonlinearity="tanh"):
    """h_t = act(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh), one step at a time.

    x: (B, L, D_in); W_ih: (D, D_in); W_hh: (D, D); b_ih, b_hh: (D,); h0: (B, D) or None
    (zeros). Returns out: (B, L, D) (out[:, t] = h_t) and h_L: (B, D).
    """
    bsz, length, d = _check_cell_args(x, W_ih, W_hh, b_ih, b_hh, h0, gates=1)
    if nonlinearity not in ACTIVATIONS:
        raise ValueError(f"nonlinearity must be one of {sorted(ACTIVATIONS)}, got {nonlinearity!r}")
    act = ACTIVATIONS[nonlinearity]
    h = x.new_zeros(bsz, d) if h0 is None else h0  # (B, D): the whole memory of the past
    xW = _affine(x.reshape(bsz * length, -1), W_ih, b_ih).view(bsz, length, d)  # (B, L, D)
    outs = []
    for t in range(length):  # sequential in time; each step is parallel over the batch
        h = elman_step(h, xW[:, t], W_hh, b_hh, act)  # (B, D)
        outs.append(h)
    return torch.stack(outs, dim=1), h  # (B, L, D), (B, D)


# ----------------------------------------------------------------------------- LSTM
def lstm(x, W_ih, W_hh, b_ih=None, b_hh=None, h0=None, c0=None):
    """The LSTM, torch's gate order (i, f, g, o):

    i, f, o = sigmoid(.), g = tanh(.) of W_ih x_t + b_ih + W_hh h_{t-1} + b_hh;
    c_t = f * c_{t-1} + i * g;  h_t = o * tanh(c_t).
    x: (B, L, D_in); W_ih: (4D, D_in); W_hh: (4D, D); b_ih, b_hh: (4D,); h0, c0: (B, D).
    Returns out: (B, L, D) and (h_L, c_L).
    """
    bsz, length, d = _check_cell_args(x, W_ih, W_hh, b_ih, b_hh, h0, gates=4)
    if c0 is not None:
        check_tensor("c0", c0, 2, shape=(bsz, d), dims="(B, D)")
        check_same_device(x=x, c0=c0)
    h = x.new_zeros(bsz, d) if h0 is None else h0  # (B, D)
    c = x.new_zeros(bsz, d) if c0 is None else c0  # (B, D): the cell, an additive memory
    xW = _affine(x.reshape(bsz * length, -1), W_ih, b_ih).view(bsz, length, 4 * d)  # (B, L, 4D)
    outs = []
    for t in range(length):
        h, c = lstm_step(h, c, xW[:, t], W_hh, b_hh)  # (B, D), (B, D)
        outs.append(h)
    return torch.stack(outs, dim=1), (h, c)  # (B, L, D), ((B, D), (B, D))


# ----------------------------------------------------------------------------- modules
class _Stepwise(nn.Module):
    """Stacked layers of a step-by-step cell, with weights named as in torch.nn.RNN/LSTM."""

    gates = 1

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True):
        super().__init__()
        check_positive_int("input_size", input_size)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("num_layers", num_layers)
        self.hidden_size, self.num_layers, self.bias = hidden_size, num_layers, bias
        g, d = self.gates, hidden_size
        for layer in range(num_layers):
            d_in = input_size if layer == 0 else d
            self.register_parameter(f"weight_ih_l{layer}", nn.Parameter(torch.empty(g * d, d_in)))
            self.register_parameter(f"weight_hh_l{layer}", nn.Parameter(torch.empty(g * d, d)))
            if bias:
                self.register_parameter(f"bias_ih_l{layer}", nn.Parameter(torch.zeros(g * d)))
                self.register_parameter(f"bias_hh_l{layer}", nn.Parameter(torch.zeros(g * d)))
        bound = hidden_size ** -0.5
        for p in self.parameters():  # torch's initialisation: U(-1/sqrt(D), 1/sqrt(D))
            nn.init.uniform_(p, -bound, bound)

    def layer_weights(self, layer: int):
        """(W_ih, W_hh, b_ih, b_hh) of one layer (biases None without bias)."""
        get = lambda n: getattr(self, f"{n}_l{layer}", None)
        return get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")

    @classmethod
    def from_torch(cls, module: nn.Module):
        """Copy the weights of a batch_first, unidirectional torch.nn.RNN / torch.nn.LSTM."""
        if not isinstance(module, cls.torch_class):
            raise TypeError(f"module must be a {cls.torch_class.__name__}, got {type(module).__name__}")
        if module.bidirectional or not module.batch_first or getattr(module, "proj_size", 0):
            raise ValueError("module must be unidirectional, batch_first=True, without proj_size")
        new = cls(module.input_size, module.hidden_size, module.num_layers, module.bias,
                  **cls._extra_kwargs(module))
        p = next(module.parameters())
        new = new.to(device=p.device, dtype=p.dtype)
        new.load_state_dict(module.state_dict())
        return new

    @staticmethod
    def _extra_kwargs(module):
        return {}


class ElmanRNN(_Stepwise):
    """torch.nn.RNN(batch_first=True) as a loop: forward(x (B, L, D_in), h0 (layers, B, D))."""

    torch_class = nn.RNN

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, nonlinearity="tanh"):
        super().__init__(input_size, hidden_size, num_layers, bias)
        self.nonlinearity = nonlinearity

    @staticmethod
    def _extra_kwargs(module):
        return {"nonlinearity": module.nonlinearity}

    def forward(self, x, h0=None):
        """Returns out: (B, L, D) and h_n: (num_layers, B, D), as torch.nn.RNN does."""
        finals = []
        for layer in range(self.num_layers):
            x, h = elman_rnn(x, *self.layer_weights(layer), None if h0 is None else h0[layer],
                             nonlinearity=self.nonlinearity)
            finals.append(h)
        return x, torch.stack(finals)  # (B, L, D), (num_layers, B, D)


class LSTM(_Stepwise):
    """torch.nn.LSTM(batch_first=True) as a loop: forward(x, (h0, c0)) -> out, (h_n, c_n)."""

    torch_class = nn.LSTM
    gates = 4

    def forward(self, x, state=None):
        """Returns out: (B, L, D) and (h_n, c_n): each (num_layers, B, D)."""
        hs, cs = [], []
        for layer in range(self.num_layers):
            h0, c0 = (None, None) if state is None else (state[0][layer], state[1][layer])
            x, (h, c) = lstm(x, *self.layer_weights(layer), h0, c0)
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))


# ----------------------------------------------------------------------------- BPTT
def scale_to_spectral_radius(W: torch.Tensor, radius: float) -> torch.Tensor:
    """W * radius / rho(W), with rho the largest |eigenvalue| of the square matrix W."""
    rho = torch.linalg.eigvals(W.double()).abs().max()
    return (W.double() * (radius / rho)).to(W.dtype)


def gradient_norms(kind: str = "rnn", radius: float = 1.0, L: int = 64, D: int = 32,
                   batch: int = 4, forget_bias: float = 0.0, input_scale: float = 1.0,
                   seed: int = 0) -> torch.Tensor:
    """||d h_L / d s_t||_F for t = 0 .. L-1: how much the last output still feels state s_t.

    A random cell of width D (kind "rnn": tanh Elman; "lstm": s_t = (h_t, c_t)), its
    recurrent matrix scaled to spectral radius `radius` (each LSTM gate block separately),
    driven by N(0, input_scale^2) inputs. The Jacobian is exact: each of the D output coordinates gets
    its own copy of the sequence in the batch. Returns (L,) norms, index t = state after t
    steps, averaged over `batch` input sequences (float64, CPU).
    """
    if kind not in ("rnn", "lstm"):
        raise ValueError(f"kind must be 'rnn' or 'lstm', got {kind!r}")
    for name, v in (("L", L), ("D", D), ("batch", batch)):
        check_positive_int(name, v)
    gen = torch.Generator().manual_seed(seed)
    g = 1 if kind == "rnn" else 4
    W_hh = torch.cat([scale_to_spectral_radius(torch.randn(D, D, generator=gen, dtype=torch.float64),
                                               radius) for _ in range(g)])  # (G*D, D)
    W_ih = torch.randn(g * D, D, generator=gen, dtype=torch.float64) / D ** 0.5  # (G*D, D)
    b = torch.zeros(g * D, dtype=torch.float64)
    if kind == "lstm":
        b[D:2 * D] = forget_bias  # the forget gate's bias: sigmoid(forget_bias) ~ how much c_t keeps
    x = input_scale * torch.randn(batch, 1, L, D, generator=gen, dtype=torch.float64)
    x = x.expand(batch, D, L, D).reshape(batch * D, L, D)  # (batch*D, L, D): a copy per output coordinate
    xW = x @ W_ih.T + b  # (batch*D, L, G*D)
    state = [torch.zeros(batch * D, D, dtype=torch.float64)] * (1 if kind == "rnn" else 2)
    entering = []  # s_t as it enters step t+1, a fresh node: d h_L / d s_t is then the partial
    for t in range(L):  # (for the LSTM, autograd's d/dc_t would otherwise include the path via h_t)
        state = [s.clone().requires_grad_() if t == 0 else s.clone() for s in state]
        entering += state
        if kind == "rnn":
            state = [elman_step(state[0], xW[:, t], W_hh)]
        else:
            state = list(lstm_step(*state, xW[:, t], W_hh))
    h_L = state[0]  # (batch*D, D)
    pick = torch.eye(D, dtype=torch.float64).repeat(batch, 1)  # (batch*D, D): copy j -> coordinate j
    grads = torch.autograd.grad((h_L * pick).sum(), entering)
    sq = torch.stack([gr.pow(2).view(batch, D * D).sum(-1) for gr in grads])  # (L or 2L, batch)
    if kind == "lstm":
        sq = sq.view(L, 2, batch).sum(1)  # ||J_h||^2 + ||J_c||^2, (L, batch)
    return sq.sqrt().mean(-1).detach()  # (L,)
