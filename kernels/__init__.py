"""mambabook.kernels: hand-written Triton kernels (chapter 7).

`selective_scan` (forward and backward; kernels in scan_loop, scan_lanes, scan_states and
scan_backward, shared device helpers in common), `selective_state_update` (one decoding
step), `ssd_chunk_scan` (Mamba-2's state space duality, chapter 9) and `decode_attention`
(one query against the filled part of a KV cache: chapter 8's Transformer). Each kernel
file reads top to bottom: the @triton.jit kernel, then the wrapper that launches it. Every kernel has a plain-PyTorch `*_ref` twin in mambabook (lib/) that the
tests compare against. Without a GPU the kernels run under Triton's interpreter
(TRITON_INTERPRET=1 set before triton is imported).
"""

from .common import check_runnable
from .decode_attention import decode_attention
from .selective_scan import selective_scan
from .ssd import ssd_chunk_scan
from .state_update import selective_state_update

__all__ = ["check_runnable", "decode_attention", "selective_scan", "selective_state_update",
           "ssd_chunk_scan"]
