"""Two small language models of equal size: Mamba (Gu & Dao, 2023, section 3.4) and a Transformer.

`MambaBlock` merges H3's SSM block and the Transformer's gated MLP into one block: in_proj to
two branches, a causal depthwise conv and the selective scan (S6) on one, SiLU(z) on the
other, their product through out_proj. Both LMs decode token by token (Mamba with a
constant-size state, the Transformer with a preallocated KV cache). Used in chapter 08.
`Mamba2Block` (chapter 9) is Mamba-2's block: the SSD with one decay per head.

Mamba's decoding step (`MambaLM.step`), launches per block on CUDA, counted from the code:
in_proj, `causal_conv1d_update` (window shift, conv, bias, SiLU), x_proj, dt_proj,
`selective_state_update` (A = -exp(A_log), dt bias, softplus, D skip, gate), out_proj,
`add_rms_norm` (residual add and the next block's RMSNorm): 7. Written with PyTorch operations the same step took 14 plus RMSNorm's (the conv
window alone 6: cat, copy, mul, sum, add, SiLU), 17 plus RMSNorm's in bfloat16.
Its floor (`decode_step_bytes`): every weight read once and each block's state read and
written once. At the paper's 1.4B row in bfloat16 that is 2.54 GB of weights and 27.5 MB
of state per sequence: 2.57 GB a step at batch 1, 6.06 GB at batch 128.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checks import check_positive_int
from .conv import conv_state_after
from .dispatch import add_norm_function, check_path, conv_functions, wants_kernels
from .selective import S6, dt_bias_init, dt_rank_rule, fold_batch, unfold_batch
from .ssd import ssd_chunked, ssd_step
from .ssm import S4D

# ----------------------------------------------------------------------------- configs
SSMS = ("s6", "s4d")


@dataclass
class MambaConfig:
    vocab_size: int = 256  # tokens (bytes here)
    d_model: int = 128  # residual stream width
    n_layer: int = 4  # Mamba blocks (two per Transformer layer for equal size)
    d_state: int = 16  # N: SSM state per channel
    d_conv: int = 4  # K: width of the causal depthwise convolution
    expand: int = 2  # D = expand * d_model channels inside the block
    dt_rank: int | None = None  # rank R of the delta projection; None = ceil(d_model / 16)
    dt_min: float = 0.001  # delta is initialised log-uniform in [dt_min, dt_max]
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4  # smallest initial delta
    norm_eps: float = 1e-5  # RMSNorm epsilon
    ssm: str = "s6"  # "s6" (selective) or "s4d" (time-invariant: chapter 5's baseline)
    path: str = "auto"  # scan: "auto" (kernels on CUDA), "kernel" or "ref" (selective.scan_functions)

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layer", "d_state", "d_conv", "expand"):
            check_positive_int(name, getattr(self, name))
        if self.dt_rank is None:
            self.dt_rank = dt_rank_rule(self.d_model)
        check_positive_int("dt_rank", self.dt_rank)
        if not 0 < self.dt_min <= self.dt_max:
            raise ValueError(f"dt_min, dt_max must satisfy 0 < dt_min <= dt_max, got "
                             f"{self.dt_min}, {self.dt_max}")
        if self.ssm not in SSMS:
            raise ValueError(f"ssm must be one of {SSMS}, got {self.ssm!r}")
        check_path(self.path)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model


@dataclass
class TransformerConfig:
    vocab_size: int = 256  # tokens (bytes here)
    d_model: int = 128  # residual stream width
    n_layer: int = 2  # decoder layers (attention + MLP each)
    n_head: int = 4  # H: attention heads; head dim P = d_model / n_head
    d_ff: int = 512  # hidden width of the MLP
    positions: str = "rotary"  # "rotary" (RoPE on q, k) or "learned" (absolute embeddings)
    max_seq_len: int = 4096  # longest sequence for learned positions (rotary has no limit)
    rope_base: float = 10000.0  # RoPE frequency base
    norm_eps: float = 1e-5  # RMSNorm epsilon
    path: str = "auto"  # decoding attention: "auto" (the kernel on CUDA), "kernel" or "ref"

    def __post_init__(self):
        for name in ("vocab_size", "d_model", "n_layer", "n_head", "d_ff", "max_seq_len"):
            check_positive_int(name, getattr(self, name))
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ValueError(f"d_model must be n_head times an even head dim, got d_model = "
                             f"{self.d_model}, n_head = {self.n_head}")
        if self.positions not in ("rotary", "learned"):
            raise ValueError(f"positions must be 'rotary' or 'learned', got {self.positions!r}")
        check_path(self.path)


def paper_scale_mamba_config(**overrides) -> MambaConfig:
    """The Mamba paper's 1.4B row (Gu & Dao, 2023, Table 12; Fig. 8 times its generation):
    d_model 2048, 48 blocks, N = 16, expand 2. The vocabulary stays bytes (256), so the
    model has about 1.3B parameters (the paper's count holds a 50K-token embedding)."""
    return MambaConfig(**{**dict(d_model=2048, n_layer=48, d_state=16, expand=2), **overrides})


def matched_transformer_config(cfg: MambaConfig, n_head: int | None = None,
                               positions: str = "rotary") -> TransformerConfig:
    """A Transformer of the same width with n_layer / 2 layers (one attention + MLP layer
    per two Mamba blocks), heads of 64 channels unless n_head is given, and d_ff chosen so
    that its parameter count equals the MambaLM's (up to rounding d_ff to a multiple of 8).
    At the Mamba paper's 1.4B (d_model 2048, 48 blocks): 24 layers, 32 heads, d_ff 8816."""
    d = cfg.d_model
    n_head = n_head or max(1, d // 64)
    n_layer = max(1, cfg.n_layer // 2)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        target = cfg.n_layer * count_parameters(_Residual(cfg))  # the embeddings are equal
    # per layer: qkv + out (4 d^2) + fc1, fc2 (2 d d_ff) + 2 norms (2 d)
    d_ff = (target / n_layer - 4 * d * d - 2 * d) / (2 * d)
    d_ff = max(8, int(round(d_ff / 8)) * 8)
    return TransformerConfig(vocab_size=cfg.vocab_size, d_model=d, n_layer=n_layer,
                             n_head=n_head, d_ff=d_ff, positions=positions)


def equal_size_pair(d_model: int, n_layer: int, device, dtype, d_state: int = 16) -> dict:
    """{"mamba": MambaLM, "transformer": TransformerLM} of equal parameter count, built on
    `device` (a GPU initialises 1.3B parameters fast; "meta" allocates nothing) in `dtype`,
    eval mode; the Transformer has n_layer / 2 layers (matched_transformer_config)."""
    cfg = MambaConfig(d_model=d_model, n_layer=n_layer, d_state=d_state)
    with torch.device(device):
        models = {"mamba": MambaLM(cfg),
                  "transformer": TransformerLM(matched_transformer_config(cfg))}
    return {k: m.to(device=device, dtype=dtype).eval() for k, m in models.items()}


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, tied weights counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, over the last dimension."""

    def __init__(self, d: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)


# ----------------------------------------------------------------------------- Mamba
@dataclass
class MambaLayerState:
    """What one Mamba block carries from token to token: its size does not depend on L."""

    conv: torch.Tensor  # (B, D, K-1): the last K-1 inputs of the causal conv
    ssm: torch.Tensor  # (B, D, N): the SSM state h, float32


class MambaBlock(nn.Module):
    """in_proj -> [conv1d -> SiLU -> SSM] * SiLU(z) -> out_proj, on (B, L, d_model).

    The SSM is selective.S6 (the gate applied inside its scan) or, for chapter 5's
    time-invariant baseline, ssm.S4D (no recurrent step: forward only). The forward
    hands no layout copy from one stage to the next: in_proj writes (2D, B*L) rows, and
    x, z, the conv's output, delta, B, C and y are (B, D, L) views of such rows with time
    stride 1 (`selective.unfold_batch`), read as they are by the conv and scan kernels
    and by the next matmul. cfg.path picks the kernels or their twins ("auto": kernels
    on CUDA).
    """

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        d, D, N, K = cfg.d_model, cfg.d_inner, cfg.d_state, cfg.d_conv
        self.in_proj = nn.Linear(d, 2 * D, bias=False)  # -> x, z
        self.conv1d = nn.Conv1d(D, D, K, groups=D, padding=K - 1, bias=True)  # causal, depthwise
        self.ssm = (S6(D, N, cfg.dt_rank, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor, cfg.path)
                    if cfg.ssm == "s6" else S4D(D, N, cfg.dt_min, cfg.dt_max))
        self.out_proj = nn.Linear(D, d, bias=False)

    def inner(self, hidden):
        """hidden (B, L, d_model) -> the SSM input x (B, D, L) after the causal conv and SiLU,
        the gate z (B, D, L) and the conv input (B, D, L): views of (D, B*L) rows with time
        stride 1 (`unfold_batch`), what the conv and the scan read without a copy."""
        bsz, L, d = hidden.shape
        xz = self.in_proj.weight @ hidden.reshape(bsz * L, d).T  # (2D, B*L)
        x, z = unfold_batch(xz, bsz).chunk(2, dim=1)  # (B, D, L) each
        conv, _ = conv_functions(x, self.cfg.path)
        return conv(x, self.conv1d.weight[:, 0], self.conv1d.bias), z, x  # + SiLU

    def forward(self, hidden, return_state: bool = False):
        """hidden: (B, L, d_model) -> (B, L, d_model) [, MambaLayerState after the last token]."""
        if return_state:
            self._check_decodable()
        bsz, L, d = hidden.shape
        x_conv, z, x = self.inner(hidden)  # (B, D, L) x 3
        if isinstance(self.ssm, S4D):
            y = self.ssm(x_conv) * F.silu(z)  # (B, D, L)
        else:
            y = self.ssm(x_conv, z, return_last_state=return_state)
        y, h = y if return_state else (y, None)  # y: (B, D, L)
        out = F.linear(fold_batch(y).T, self.out_proj.weight)  # (B*L, d_model)
        out = out.view(bsz, L, d)
        if not return_state:
            return out
        conv_state = conv_state_after(x, self.cfg.d_conv)  # the last K-1 inputs
        return out, MambaLayerState(conv_state.contiguous(), h.float().contiguous())

    def _check_decodable(self):
        if not isinstance(self.ssm, S6):
            raise ValueError(f"decoding needs the selective SSM (ssm='s6'), got ssm={self.cfg.ssm!r}")

    def new_state(self, batch: int, device=None, dtype=None) -> MambaLayerState:
        self._check_decodable()
        w = self.in_proj.weight
        device, dtype = device or w.device, dtype or w.dtype
        D, N, K = self.cfg.d_inner, self.cfg.d_state, self.cfg.d_conv
        return MambaLayerState(torch.zeros(batch, D, K - 1, device=device, dtype=dtype),
                               torch.zeros(batch, D, N, device=device, dtype=torch.float32))

    def step(self, hidden, state: MambaLayerState):
        """One token: hidden (B, d_model) -> (B, d_model); state is updated in place."""
        x, z = self.in_proj(hidden).chunk(2, dim=-1)  # (B, D) each
        _, conv_step = conv_functions(x, self.cfg.path)
        # the window shifts in place: SiLU(conv of the K-1 past inputs and this one)
        x = conv_step(x, state.conv, self.conv1d.weight[:, 0], self.conv1d.bias)
        return self.out_proj(self.ssm.step(state.ssm, x, z))  # (B, d_model)


class _Residual(nn.Module):
    """x + mixer(RMSNorm(x)): the pre-norm residual wrapper around a MambaBlock."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.mixer = MambaBlock(cfg)


def _check_tokens(name: str, tokens, vocab_size: int):
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, L), got {type(tokens).__name__}")
    if tokens.dim() != 2 or tokens.shape[1] == 0 or tokens.shape[0] == 0:
        raise ValueError(f"{name} must have shape (B, L) with B, L >= 1, got shape {tuple(tokens.shape)}")
    if tokens.dtype not in (torch.int64, torch.int32, torch.uint8):
        raise TypeError(f"{name} must hold integer token ids, got {tokens.dtype}")


class MambaLM(nn.Module):
    """Embedding -> n_layer x (x + MambaBlock(RMSNorm(x))) -> RMSNorm -> tied head."""

    def __init__(self, cfg: MambaConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleList(_Residual(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        nn.init.normal_(self.embedding.weight, std=0.02)
        with torch.no_grad():  # GPT-2 style: residual outputs scaled down with depth
            for layer in self.layers:
                layer.mixer.out_proj.weight /= math.sqrt(cfg.n_layer)

    def _head(self, x):
        return F.linear(self.norm_f(x), self.embedding.weight)  # tied: logits = x E^T

    def forward(self, tokens):
        """tokens: (B, L) -> logits (B, L, vocab)."""
        _check_tokens("tokens", tokens, self.cfg.vocab_size)
        x = self.embedding(tokens.long())  # (B, L, d_model)
        for layer in self.layers:
            x = x + layer.mixer(layer.norm(x))
        return self._head(x)

    def new_cache(self, batch: int, max_len: int | None = None) -> list[MambaLayerState]:
        """A fresh inference state: (B, D, K) + (B, D, N) per layer, whatever max_len is."""
        return [layer.mixer.new_state(batch) for layer in self.layers]

    def prefill(self, tokens, max_len: int | None = None, cache=None):
        """Full forward over the prompt; returns logits (B, L, vocab) and the state after it
        (copied into `cache` when one is given, e.g. buffers a CUDA graph reads)."""
        _check_tokens("tokens", tokens, self.cfg.vocab_size)
        x = self.embedding(tokens.long())
        states = []
        for layer in self.layers:
            y, s = layer.mixer(layer.norm(x), return_state=True)
            x = x + y
            states.append(s)
        if cache is not None:
            for old, new in zip(cache, states):
                old.conv.copy_(new.conv)
                old.ssm.copy_(new.ssm)
            states = cache
        return self._head(x), states

    def step(self, token, cache: list[MambaLayerState]):
        """token: (B,) -> logits (B, vocab); the cache is updated in place.

        Between two blocks, one fused residual add + RMSNorm (`norm.add_rms_norm_ref` or
        its kernel): the new residual x and the next block's input h."""
        x = self.embedding(token.long())  # (B, d_model): the residual stream
        h = self.layers[0].norm(x)
        add_norm = add_norm_function(x, self.cfg.path)
        norms = [layer.norm for layer in self.layers[1:]] + [self.norm_f]
        for layer, state, norm in zip(self.layers, cache, norms):
            x, h = add_norm(x, layer.mixer.step(h, state), norm.weight, norm.eps)
        return F.linear(h, self.embedding.weight)  # tied head on norm_f(x)


def cache_bytes(cache) -> int:
    """Bytes held by an inference cache (Mamba states or a KV cache)."""
    if isinstance(cache, KVCache):
        return sum(t.numel() * t.element_size() for t in cache.k + cache.v)
    return sum(s.conv.numel() * s.conv.element_size() + s.ssm.numel() * s.ssm.element_size()
               for s in cache)


@dataclass
class StepBytes:
    """The fewest bytes one decoding step moves to and from memory: a floor on its time."""

    weights: int  # every parameter read once (a tied matrix once)
    cache_read: int  # KV cache: the filled keys and values; Mamba: conv and SSM states
    cache_written: int  # KV cache: the new token's key and value; Mamba: both states

    @property
    def total(self) -> int:
        return self.weights + self.cache_read + self.cache_written

    def seconds(self, bytes_per_s: float) -> float:
        """The floor's time at a memory bandwidth of bytes_per_s."""
        return self.total / bytes_per_s


def decode_step_bytes(model, batch: int, context: int) -> StepBytes:
    """Bytes a decoding step of `batch` sequences that hold `context` tokens must move, from
    the parameters and the cache's shapes (nothing is allocated; a model on the meta device
    will do). TransformerLM: weights + K and V of the context + 1 positions read (the new
    token's written, then read), 2 n_layer B H P each; MambaLM: weights + the conv state
    (B, D, K-1) and SSM state (B, D, N) per block, read and written."""
    if not isinstance(model, (MambaLM, TransformerLM)):
        raise TypeError(f"model must be a MambaLM or TransformerLM, got {type(model).__name__}")
    check_positive_int("batch", batch)
    if isinstance(context, bool) or not isinstance(context, int) or context < 0:
        raise ValueError(f"context must be an int >= 0, got {context!r}")
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    if isinstance(model, TransformerLM):
        c = model.cfg
        per_token = 2 * c.n_layer * batch * c.d_model * model.embedding.weight.element_size()
        return StepBytes(weights, per_token * (context + 1), per_token)
    states = [layer.mixer.new_state(batch, device="meta") for layer in model.layers]
    held = sum(t.numel() * t.element_size() for s in states for t in (s.conv, s.ssm))
    return StepBytes(weights, held, held)


# ----------------------------------------------------------------------------- Transformer
@dataclass
class KVCache:
    """Keys and values of every past token, preallocated to max_len; pos is a device tensor
    so that one decoding step can be captured in a CUDA graph and replayed (the decoding
    attention reads pos + 1 positions, not max_len). Chapter 2's attention.KVCache is the
    same idea written for reading (it grows, one token at a time); this one trades that for
    fixed buffers."""

    k: list  # per layer (B, H, max_len, P)
    v: list  # per layer (B, H, max_len, P)
    pos: torch.Tensor  # () long: tokens already in the cache

    @property
    def max_len(self) -> int:
        return self.k[0].shape[2]


def rotary(x, positions, base: float):
    """RoPE (rotate-half form): x (B, H, L, P), positions (L,) -> (B, H, L, P)."""
    P = x.shape[-1]
    inv_freq = base ** (-torch.arange(0, P, 2, device=x.device, dtype=torch.float32) / P)
    angles = positions.float()[:, None] * inv_freq[None]  # (L, P/2)
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., : P // 2], x[..., P // 2:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class TransformerLayer(nn.Module):
    """x + Attn(RMSNorm(x)); x + MLP(RMSNorm(x)): a pre-norm decoder layer."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.norm1 = RMSNorm(d, cfg.norm_eps)
        self.qkv = nn.Linear(d, 3 * d, bias=False)
        self.out = nn.Linear(d, d, bias=False)
        self.norm2 = RMSNorm(d, cfg.norm_eps)
        self.fc1 = nn.Linear(d, cfg.d_ff, bias=False)
        self.fc2 = nn.Linear(cfg.d_ff, d, bias=False)

    def qkv_heads(self, x, positions):
        """x (B, L, d) at positions (L,) -> q, k, v: (B, H, L, P), RoPE applied to q, k."""
        bsz, L, d = x.shape
        H = self.cfg.n_head
        q, k, v = self.qkv(self.norm1(x)).view(bsz, L, 3, H, d // H).permute(2, 0, 3, 1, 4)
        if self.cfg.positions == "rotary":  # q, k, v: (B, H, L, P)
            q, k = rotary(q, positions, self.cfg.rope_base), rotary(k, positions, self.cfg.rope_base)
        return q, k, v

    def _finish(self, x, att):
        bsz, H, L, P = att.shape
        x = x + self.out(att.transpose(1, 2).reshape(bsz, L, H * P))
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))

    def forward(self, x, positions, cache_k=None, cache_v=None):
        """Full causal pass over x (B, L, d); writes k, v into cache[:, :, :L] when given."""
        q, k, v = self.qkv_heads(x, positions)
        if cache_k is not None:
            cache_k[:, :, : k.shape[2]] = k
            cache_v[:, :, : v.shape[2]] = v
        return self._finish(x, F.scaled_dot_product_attention(q, k, v, is_causal=True))

    def step(self, x, pos, cache_k, cache_v):
        """x (B, 1, d) at position pos (a () tensor); attends to cache[:, :, :pos + 1].

        The kernel path (`mambabook.kernels.decode_attention`) reads only those pos + 1
        keys and values; the reference path attends to the whole cache under a mask (the
        same numbers: softmax gives the masked keys weight 0). Both take pos from the
        device, so the step can be captured in a CUDA graph and replayed."""
        q, k, v = self.qkv_heads(x, pos.view(1))  # (B, H, 1, P) each
        cache_k.index_copy_(2, pos.view(1), k)
        cache_v.index_copy_(2, pos.view(1), v)
        if self.decodes_with_kernel(x):
            from mambabook.kernels import decode_attention

            att = decode_attention(q[:, :, 0], cache_k, cache_v, pos + 1)[:, :, None]
        else:
            mask = torch.arange(cache_k.shape[2], device=x.device) <= pos  # (max_len,)
            att = F.scaled_dot_product_attention(q, cache_k, cache_v,
                                                 attn_mask=mask[None, None, None])
        return self._finish(x, att)  # att: (B, H, 1, P)

    def decodes_with_kernel(self, x) -> bool:
        """path "kernel", or "auto" on CUDA in float32, float16 or bfloat16."""
        return self.cfg.path == "kernel" or (wants_kernels(x, self.cfg.path) and x.dtype in
                                             (torch.float32, torch.float16, torch.bfloat16))


class TransformerLM(nn.Module):
    """Embedding (+ learned positions) -> n_layer pre-norm decoder layers -> RMSNorm -> tied head."""

    def __init__(self, cfg: TransformerConfig):
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos_embedding = (nn.Embedding(cfg.max_seq_len, cfg.d_model)
                              if cfg.positions == "learned" else None)
        self.layers = nn.ModuleList(TransformerLayer(cfg) for _ in range(cfg.n_layer))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps)
        nn.init.normal_(self.embedding.weight, std=0.02)
        if self.pos_embedding is not None:
            nn.init.normal_(self.pos_embedding.weight, std=0.02)
        with torch.no_grad():
            for layer in self.layers:
                layer.out.weight /= math.sqrt(2 * cfg.n_layer)
                layer.fc2.weight /= math.sqrt(2 * cfg.n_layer)

    def embed(self, tokens, positions):
        x = self.embedding(tokens.long())
        if self.pos_embedding is not None:
            x = x + self.pos_embedding(positions)
        return x

    def _head(self, x):
        return F.linear(self.norm_f(x), self.embedding.weight)

    def _check_len(self, L: int):
        if self.pos_embedding is not None and L > self.cfg.max_seq_len:
            raise ValueError(f"tokens must have L <= max_seq_len = {self.cfg.max_seq_len} with "
                             f"learned positions, got L = {L}")

    def forward(self, tokens):
        """tokens: (B, L) -> logits (B, L, vocab)."""
        _check_tokens("tokens", tokens, self.cfg.vocab_size)
        self._check_len(tokens.shape[1])
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed(tokens, positions)  # (B, L, d_model)
        for layer in self.layers:
            x = layer(x, positions)
        return self._head(x)

    def new_cache(self, batch: int, max_len: int) -> KVCache:
        """An empty KV cache for max_len tokens: 2 x (B, H, max_len, P) per layer."""
        check_positive_int("max_len", max_len)
        self._check_len(max_len)
        w = self.embedding.weight
        H, P = self.cfg.n_head, self.cfg.d_model // self.cfg.n_head
        shape = (batch, H, max_len, P)
        return KVCache([torch.zeros(shape, device=w.device, dtype=w.dtype) for _ in self.layers],
                       [torch.zeros(shape, device=w.device, dtype=w.dtype) for _ in self.layers],
                       torch.zeros((), device=w.device, dtype=torch.long))

    def prefill(self, tokens, max_len: int, cache: KVCache | None = None):
        """Full forward over the prompt; returns logits (B, L, vocab) and a cache for max_len
        (or `cache`, filled in place: e.g. buffers a CUDA graph reads)."""
        _check_tokens("tokens", tokens, self.cfg.vocab_size)
        bsz, L = tokens.shape
        if max_len < L:
            raise ValueError(f"max_len must be >= the prompt length {L}, got {max_len}")
        cache = cache if cache is not None else self.new_cache(bsz, max_len)
        positions = torch.arange(L, device=tokens.device)
        x = self.embed(tokens, positions)
        for layer, ck, cv in zip(self.layers, cache.k, cache.v):
            x = layer(x, positions, ck, cv)
        cache.pos.fill_(L)
        return self._head(x), cache

    def step(self, token, cache: KVCache):
        """token: (B,) -> logits (B, vocab); writes its k, v at cache.pos, then pos += 1.

        Positions past max_len are not checked here (that would need a host sync)."""
        x = self.embed(token[:, None], cache.pos.view(1))  # (B, 1, d_model)
        for layer, ck, cv in zip(self.layers, cache.k, cache.v):
            x = layer.step(x, cache.pos, ck, cv)
        cache.pos.add_(1)
        return self._head(x)[:, 0]


# ----------------------------------------------------------------------------- generation
def sample_next(logits, temperature: float = 1.0, top_k: int | None = None, generator=None):
    """logits (B, V) -> tokens (B,): greedy at temperature 0, else softmax(logits / T) over the
    top_k largest logits."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


@torch.no_grad()
def generate(model, prompt, n_tokens: int, temperature: float = 1.0, top_k: int | None = None,
             seed: int | None = None):
    """Prefill the prompt (B, L), then decode n_tokens one at a time -> (B, L + n_tokens).

    Works for MambaLM (constant-size state) and TransformerLM (KV cache of L + n_tokens).
    seed makes sampling reproducible (a torch.Generator on the prompt's device).
    """
    if not isinstance(model, (MambaLM, TransformerLM)):
        raise TypeError(f"model must be a MambaLM or TransformerLM, got {type(model).__name__}")
    _check_tokens("prompt", prompt, model.cfg.vocab_size)
    check_positive_int("n_tokens", n_tokens)
    if not isinstance(temperature, (int, float)) or temperature < 0:
        raise ValueError(f"temperature must be a number >= 0, got {temperature!r}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k <= 0):
        raise ValueError(f"top_k must be None or a positive int, got {top_k!r}")
    device = model.embedding.weight.device
    if prompt.device != device:
        raise ValueError(f"prompt must be on the model's device {device}, got {prompt.device}")
    gen = None
    if seed is not None:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
    was_training = model.training
    model.eval()
    bsz, L = prompt.shape
    out = torch.empty(bsz, L + n_tokens, dtype=torch.long, device=device)
    out[:, :L] = prompt
    logits, cache = model.prefill(prompt, max_len=L + n_tokens)
    token = sample_next(logits[:, -1], temperature, top_k, gen)
    for t in range(n_tokens):
        out[:, L + t] = token
        if t + 1 < n_tokens:
            token = sample_next(model.step(token, cache), temperature, top_k, gen)
    model.train(was_training)
    return out


def step_logits(model, tokens):
    """Logits (B, L, vocab) computed one token at a time from an empty cache: the decoding
    path, to compare with model(tokens)."""
    _check_tokens("tokens", tokens, model.cfg.vocab_size)
    bsz, L = tokens.shape
    cache = model.new_cache(bsz, L)
    return torch.stack([model.step(tokens[:, t], cache) for t in range(L)], dim=1)


# ----------------------------------------------------------------------------- Mamba-2
@dataclass
class Mamba2Config:
    d_model: int = 128  # residual stream width
    d_state: int = 64  # N: state size per head (Mamba-2 affords 64-256)
    d_conv: int = 4  # K: width of the causal depthwise convolution on x, B, C
    expand: int = 2  # d_inner = expand * d_model channels inside the block
    headdim: int = 32  # P: channels per head; H = d_inner / P heads, one decay each
    ngroups: int = 1  # G: groups of heads sharing B and C (H divisible by G)
    chunk_size: int = 64  # T: steps per block of the chunked SSD
    dt_min: float = 0.001  # dt is initialised log-uniform in [dt_min, dt_max]
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4  # smallest initial dt
    norm_eps: float = 1e-5  # the gated RMSNorm's epsilon
    path: str = "auto"  # SSD: "auto" (the kernel on CUDA), "kernel" or "ref" (ssd_chunked)

    def __post_init__(self):
        for name in ("d_model", "d_state", "d_conv", "expand", "headdim", "ngroups",
                     "chunk_size"):
            check_positive_int(name, getattr(self, name))
        if self.d_inner % self.headdim or self.nheads % self.ngroups:
            raise ValueError(f"headdim must divide d_inner = {self.d_inner} and ngroups the "
                             f"heads, got headdim={self.headdim}, ngroups={self.ngroups}")
        check_path(self.path)

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def nheads(self) -> int:
        return self.d_inner // self.headdim


def ssd_function(x: torch.Tensor, path: str):
    """ssd(x, dt_raw, A, B, C, chunk, D, dt_bias, initial_states) -> (y, final state): the
    kernel `mambabook.kernels.ssd_chunk_scan` on CUDA ("auto") or anywhere ("kernel"),
    else `mambabook.ssd.ssd_chunked` with dt = softplus(dt_raw + dt_bias) in PyTorch."""
    if wants_kernels(x, path):
        from mambabook.kernels import ssd_chunk_scan

        return lambda x, dt, A, B, C, T, D, bias, h0: ssd_chunk_scan(
            x, dt, A, B, C, T, D=D, dt_bias=bias, dt_softplus=True, initial_states=h0,
            return_final_states=True)
    return lambda x, dt, A, B, C, T, D, bias, h0: ssd_chunked(
        x, F.softplus(dt.float() + bias), A, B, C, T, D, initial_states=h0,
        return_final_states=True)


class Mamba2Block(nn.Module):
    """Mamba-2 (Dao & Gu, 2024, section 7): in_proj -> (z, xBC, dt); causal depthwise conv
    and SiLU on xBC = (x, B, C); the SSD with a scalar decay per head; RMSNorm(y * silu(z));
    out_proj. On (B, L, d_model); `step` decodes one token from a MambaLayerState whose
    conv holds the last K-1 xBC inputs and whose ssm is the state (B, H, P, N)."""

    def __init__(self, cfg: Mamba2Config):
        super().__init__()
        self.cfg = cfg
        D, H, GN = cfg.d_inner, cfg.nheads, cfg.ngroups * cfg.d_state
        self.conv_dim = D + 2 * GN  # x, B, C go through the conv together
        self.in_proj = nn.Linear(cfg.d_model, D + self.conv_dim + H, bias=False)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, cfg.d_conv,
                                groups=self.conv_dim, padding=cfg.d_conv - 1, bias=True)
        A = torch.empty(H).uniform_(1, 16)  # A = -exp(A_log) in [-16, -1], one per head
        self.A_log = nn.Parameter(torch.log(A))
        self.dt_bias = nn.Parameter(dt_bias_init(H, cfg.dt_min, cfg.dt_max, cfg.dt_init_floor))
        self.D = nn.Parameter(torch.ones(H))  # skip: y += D x
        self.norm = RMSNorm(D, cfg.norm_eps)
        self.out_proj = nn.Linear(D, cfg.d_model, bias=False)

    def _split(self, zxbcdt):
        """(..., in_proj out) -> z (..., D), xBC (..., conv_dim), dt (..., H)."""
        D = self.cfg.d_inner
        return zxbcdt.split([D, self.conv_dim, self.cfg.nheads], dim=-1)

    def _heads(self, xBC):
        """(..., conv_dim) -> x (..., H, P), B and C (..., G, N)."""
        c = self.cfg
        x, B, C = xBC.split([c.d_inner, c.ngroups * c.d_state, c.ngroups * c.d_state], -1)
        lead = xBC.shape[:-1]
        return (x.reshape(*lead, c.nheads, c.headdim), B.reshape(*lead, c.ngroups, c.d_state),
                C.reshape(*lead, c.ngroups, c.d_state))

    def _finish(self, y, z):
        """y (..., D) -> RMSNorm(y silu(z)) -> out_proj: (..., d_model)."""
        return self.out_proj(self.norm(y * F.silu(z)))

    def forward(self, hidden, return_state: bool = False):
        """hidden: (B, L, d_model) -> (B, L, d_model) [, MambaLayerState after the last token]."""
        bsz, L, _ = hidden.shape
        z, xBC_in, dt = self._split(self.in_proj(hidden))
        xBC = F.silu(self.conv1d(xBC_in.transpose(1, 2))[..., :L]).transpose(1, 2)
        x, B, C = self._heads(xBC)  # (B, L, H, P), (B, L, G, N) x 2
        ssd = ssd_function(x, self.cfg.path)
        A = -torch.exp(self.A_log.float())
        y, h = ssd(x, dt, A, B, C, self.cfg.chunk_size, self.D, self.dt_bias, None)
        out = self._finish(y.reshape(bsz, L, -1), z)
        if not return_state:
            return out
        K = self.cfg.d_conv
        conv = F.pad(xBC_in.transpose(1, 2), (max(K - 1 - L, 0), 0))  # (B, conv_dim, >= K-1)
        conv = conv[..., conv.shape[-1] - (K - 1):]  # the last K-1 inputs
        return out, MambaLayerState(conv.contiguous(), h.contiguous())  # h: float32 (64)

    def new_state(self, batch: int, device=None, dtype=None) -> MambaLayerState:
        w = self.in_proj.weight
        device, dtype = device or w.device, dtype or w.dtype
        c = self.cfg
        return MambaLayerState(
            torch.zeros(batch, self.conv_dim, c.d_conv - 1, device=device, dtype=dtype),
            torch.zeros(batch, c.nheads, c.headdim, c.d_state, device=device,
                        dtype=torch.float64 if dtype == torch.float64 else torch.float32))

    def step(self, hidden, state: MambaLayerState):
        """One token: hidden (B, d_model) -> (B, d_model); state is updated in place."""
        z, xBC, dt = self._split(self.in_proj(hidden))
        window = torch.cat([state.conv, xBC[..., None]], dim=-1)  # (B, conv_dim, K)
        state.conv.copy_(window[..., 1:])
        xBC = F.silu((window * self.conv1d.weight[:, 0]).sum(-1) + self.conv1d.bias)
        x, B, C = self._heads(xBC)  # (B, H, P), (B, G, N) x 2
        dt = F.softplus(dt.float() + self.dt_bias)  # (B, H)
        y, h = ssd_step(state.ssm, x, dt, -torch.exp(self.A_log.float()), B, C, self.D)
        state.ssm.copy_(h)
        return self._finish(y.reshape(hidden.shape[0], -1), z)
