"""mambabook.kernels: hand-written Triton kernels (chapter 7).

`selective_scan` (forward and backward; kernels in scan_loop, scan_lanes, scan_states and
scan_backward, shared device helpers in common), `selective_state_update` (one decoding
step), `ssd_chunk_scan` (Mamba-2's state space duality, chapter 9), `decode_attention`
(one query against the filled part of a KV cache: chapter 8's Transformer), and the Mamba
block's other fused pieces (chapter 8): `causal_conv1d` and `causal_conv1d_update` (the
causal depthwise conv with its SiLU), `add_rms_norm` (residual add + RMSNorm of a decoding
step). Each kernel file reads top to bottom: the @triton.jit kernel, then the wrapper that
launches it. Every kernel has a plain-PyTorch `*_ref` twin in mambabook (lib/) that the
tests compare against. Without a GPU the kernels run under Triton's interpreter
(TRITON_INTERPRET=1 set before triton is imported).
"""

from .add_norm import add_rms_norm
from .conv1d import causal_conv1d, causal_conv1d_update
from .decode_attention import decode_attention
from .selective_scan import selective_scan
from .ssd import ssd_chunk_scan
from .state_update import selective_state_update

__all__ = ["add_rms_norm", "causal_conv1d", "causal_conv1d_update", "decode_attention",
           "selective_scan", "selective_state_update", "ssd_chunk_scan"]
