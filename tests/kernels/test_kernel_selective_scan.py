"""mambabook.kernels.selective_scan against selective_scan_ref: outputs, last state, gradients.

On CPU the kernels run under TRITON_INTERPRET=1 at small sizes (small chunks force several
chunks, so the carried state and the backward's carried gradient are exercised); the
`gpu` tests repeat the checks at real sizes and run L = 1,000,000.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
# the device of the non-gpu tests: CUDA when present (compiled kernels), else the interpreter
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

import pytest  # noqa: E402
import triton  # noqa: E402
from conftest import tol  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import mambabook.kernels  # noqa: E402
import mambabook.kernels.selective_scan_kernel as ss  # noqa: E402
from mambabook.selective import selective_scan_ref  # noqa: E402

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def make_inputs(bsz, dim, length, dstate, layout="BNL", groups=1, has_D=True, has_z=True,
                has_bias=True, dtype=torch.float32, device=DEVICE):
    """Random inputs in the ranges Mamba uses: delta > 0 small, A < 0."""
    u = torch.randn(bsz, dim, length, device=device).to(dtype)
    delta = (0.5 * torch.rand(bsz, dim, length, device=device) - 0.2).to(dtype)
    A = -(0.5 + torch.rand(dim, dstate, device=device))
    if layout == "DN":
        B, C = torch.randn(dim, dstate, device=device), torch.randn(dim, dstate, device=device)
    elif layout == "BNL":
        B = torch.randn(bsz, dstate, length, device=device).to(dtype)
        C = torch.randn(bsz, dstate, length, device=device).to(dtype)
    else:
        B = torch.randn(bsz, groups, dstate, length, device=device).to(dtype)
        C = torch.randn(bsz, groups, dstate, length, device=device).to(dtype)
    D = torch.randn(dim, device=device) if has_D else None
    z = torch.randn(bsz, dim, length, device=device).to(dtype) if has_z else None
    bias = 0.3 * torch.randn(dim, device=device) if has_bias else None
    return dict(u=u, delta=delta, A=A, B=B, C=C, D=D, z=z, delta_bias=bias)


class LaunchSpy:
    """Stands in for a Triton kernel: records each launch's grid and keyword arguments (the
    meta-parameters), then launches it."""

    def __init__(self, kernel):
        self.kernel, self.grids, self.meta = kernel, [], []

    def __getitem__(self, grid):
        self.grids.append(grid)
        launch = self.kernel[grid]

        def call(*args, **kwargs):
            self.meta.append(kwargs)
            return launch(*args, **kwargs)
        return call


def grads_of(fn, inputs, dout):
    """The gradient of every input (all given) of fn(**inputs, delta_softplus=True) . dout,
    on fresh leaves."""
    leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
    return torch.autograd.grad(fn(**leaves, delta_softplus=True), list(leaves.values()), dout)


def small_chunks(chunk):
    """A _config replacement that forces CHUNK (so short sequences span several chunks)."""
    def config(dstate, backward):
        return dict(BLOCK_D=4, BLOCK_N=triton.next_power_of_2(dstate), CHUNK=chunk, num_warps=4)
    return config


def check_against_ref(inputs, softplus, dtype, grads=True):
    """Kernel vs ref: out, last state, and the gradient of every input given."""
    leaves = {k: (v.detach().clone().requires_grad_(grads) if v is not None else None)
              for k, v in inputs.items()}
    leaves_ref = {k: (v.detach().clone().requires_grad_(grads) if v is not None else None)
                  for k, v in inputs.items()}
    out, last = ss.selective_scan(**leaves, delta_softplus=softplus, return_last_state=True)
    out_ref, last_ref = selective_scan_ref(**leaves_ref, delta_softplus=softplus,
                                           return_last_state=True)
    assert out.dtype == out_ref.dtype and last.dtype == torch.float32
    torch.testing.assert_close(out, out_ref, **tol(dtype))
    torch.testing.assert_close(last, last_ref, **tol(dtype))
    if not grads:
        return
    dout = torch.randn_like(out)
    names = [k for k in NAMES if leaves[k] is not None]
    got = torch.autograd.grad(out, [leaves[k] for k in names], dout)
    want = torch.autograd.grad(out_ref, [leaves_ref[k] for k in names], dout)
    for name, g, w in zip(names, got, want):
        assert g.shape == w.shape and g.dtype == w.dtype, name
        torch.testing.assert_close(g, w, **tol(dtype), msg=lambda m, n=name: f"d{n}: {m}")


# The shapes and options hypothesis draws for every kernel-vs-ref property test:
# L = 1 and odd L, D not a multiple of the block, all three B/C layouts, each flag on and off.
CASES = dict(
    bsz=st.integers(1, 2),
    dim=st.integers(1, 7),
    length=st.one_of(st.just(1), st.integers(2, 40)),
    dstate=st.integers(1, 6),
    layout=st.sampled_from(["BNL", "BGNL", "DN"]),
    has_D=st.booleans(), has_z=st.booleans(), has_bias=st.booleans(), softplus=st.booleans(),
)


@settings(max_examples=20, deadline=None)
@given(**CASES, chunk=st.sampled_from([4, 8, 16]), backward=st.sampled_from(["chunk", "rows"]))
def test_selective_scan_matches_ref(bsz, dim, length, dstate, layout, has_D, has_z, has_bias,
                                    softplus, chunk, backward):
    groups = next(g for g in (3, 2, 1) if dim % g == 0) if layout == "BGNL" else 1
    inputs = make_inputs(bsz, dim, length, dstate, layout, groups, has_D, has_z, has_bias)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ss.BACKWARD_ENV, backward)
        mp.setattr(ss, "_config", small_chunks(chunk))
        check_against_ref(inputs, softplus, torch.float32)


def test_selective_scan_default_config_forward_only():
    """The library's own block sizes, without autograd (no checkpoints), D not a multiple of
    the block and L not a multiple of the chunk."""
    inputs = make_inputs(2, 5, 23, 16)
    check_against_ref(inputs, True, torch.float32, grads=False)


def test_selective_scan_default_config_with_grad():
    inputs = make_inputs(1, 6, 9, 3, layout="BGNL", groups=2)
    check_against_ref(inputs, True, torch.float32)


@pytest.mark.parametrize("pre", [True, False])
def test_selective_scan_segments(pre):
    """The forward cut into segments (run side by side, then stitched through each segment's
    map h -> exp(A S) h + H) equals the ref, gradients included; with and without the
    staged per-channel values (PRE)."""
    inputs = make_inputs(1, 3, 520, 2, layout="BGNL", groups=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ss, "_INTERPRET_PRE", pre)
        mp.setattr(ss, "_config", small_chunks(16))
        mp.setattr(ss, "SEGMENT_TARGET", 10**9)
        assert ss._segments(3 * 2, 520, 16)[1] == 3
        check_against_ref(inputs, True, torch.float32)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_selective_scan_half_inputs(dtype):
    inputs = make_inputs(2, 5, 19, 4, dtype=dtype)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ss, "_config", small_chunks(8))
        check_against_ref(inputs, True, dtype)


@pytest.mark.parametrize("layout", ["BNL", "BGNL", "DN"])
def test_selective_scan_assoc_matches_ref(layout):
    """The chunked tl.associative_scan forward (several chunks of 8) equals the ref too."""
    inputs = make_inputs(2, 6, 21, 5, layout=layout, groups=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ss, "_config", small_chunks(8))
        out, last = ss.selective_scan_assoc(**inputs, delta_softplus=True, return_last_state=True)
    out_ref, last_ref = selective_scan_ref(**inputs, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(out, out_ref, **tol(torch.float32))
    torch.testing.assert_close(last, last_ref, **tol(torch.float32))


def test_selective_scan_package_attribute_is_callable():
    inputs = make_inputs(1, 3, 5, 2)
    out = mambabook.kernels.selective_scan(**inputs)
    torch.testing.assert_close(out, selective_scan_ref(**inputs), **tol(torch.float32))


def test_selective_scan_bad_inputs():
    good = make_inputs(1, 4, 6, 3, device="cpu")  # validation runs before any kernel
    with pytest.raises(ValueError, match="u"):  # not contiguous along L
        ss.selective_scan(**{**good, "u": torch.randn(1, 6, 4).transpose(1, 2)})
    with pytest.raises(ValueError, match="B"):  # not contiguous along L
        ss.selective_scan(**{**good, "B": torch.randn(1, 6, 3).transpose(1, 2)})
    with pytest.raises(ValueError, match="N <= 64"):
        ss.selective_scan(**{**good, "A": -torch.rand(4, 65), "B": torch.randn(1, 65, 6),
                             "C": torch.randn(1, 65, 6)})
    with pytest.raises(ValueError, match="delta"):  # L mismatch
        ss.selective_scan(**{**good, "delta": torch.rand(1, 4, 7)})
    with pytest.raises(ValueError, match="C"):  # N mismatch
        ss.selective_scan(**{**good, "C": torch.randn(1, 2, 6)})
    with pytest.raises(ValueError, match="A"):  # D mismatch
        ss.selective_scan(**{**good, "A": -torch.rand(5, 3)})
    with pytest.raises(ValueError, match="u"):  # wrong rank
        ss.selective_scan(**{**good, "u": torch.randn(4, 6)})
    with pytest.raises(TypeError, match="u"):  # float64 is not a kernel dtype
        ss.selective_scan(**{**good, "u": good["u"].double()})
    with pytest.raises(ValueError, match="device"):
        ss.selective_scan(**{**good, "D": torch.randn(4, device="meta")})


# ----------------------------------------------------------------------------- the tile forward
def use_forward(mp, name, block_d=4, tile=16):
    """Route selective_scan's forward to "tile", "rows" or "lanes" with the interpreter's
    (BLOCK_D, T) (lanes: BLOCK_D channels per warp, runs of T steps)."""
    mp.setenv(ss.FORWARD_ENV, name)
    if name == "lanes":
        mp.setattr(ss, "_INTERPRET_LANES", dict(CPW=block_d, T=tile))
        return
    if name == "states":  # block_d: rows (lanes) per channel
        mp.setattr(ss, "_INTERPRET_STATES", dict(NL=block_d, T=tile))
        return
    mp.setattr(ss, {"tile": "_INTERPRET_TILE", "rows": "_INTERPRET_ROWS"}[name],
               dict(BLOCK_D=block_d, T=tile))


@settings(max_examples=16, deadline=None)
@given(**CASES, block_d=st.sampled_from([2, 4]), tile=st.sampled_from([4, 8, 16]),
       grads=st.booleans())
def test_selective_scan_tile_matches_ref(bsz, dim, length, dstate, layout, has_D, has_z,
                                         has_bias, softplus, block_d, tile, grads):
    """The tile forward (T steps per iteration, one 2-D associative scan per state, the carry
    of each state between tiles) equals the ref: out and last state for every layout and
    option, L = 1, L not a multiple of T, D not a multiple of BLOCK_D. With grads the tile is
    the backward's CHUNK and the checkpoints it saves feed the (unchanged) backward."""
    groups = next(g for g in (3, 2, 1) if dim % g == 0) if layout == "BGNL" else 1
    inputs = make_inputs(bsz, dim, length, dstate, layout, groups, has_D, has_z, has_bias)
    with pytest.MonkeyPatch.context() as mp:
        use_forward(mp, "tile", block_d, tile)
        mp.setattr(ss, "_config", small_chunks(tile))
        check_against_ref(inputs, softplus, torch.float32, grads=grads)


def test_selective_scan_tile_state_size_16():
    """N = 16 as in Mamba (the unrolled loop over states), D not a multiple of BLOCK_D."""
    inputs = make_inputs(2, 5, 23, 16)
    with pytest.MonkeyPatch.context() as mp:
        use_forward(mp, "tile", 4, 8)
        check_against_ref(inputs, True, torch.float32, grads=False)


# ----------------------------------------------------------------------------- the rows forward
@settings(max_examples=12, deadline=None)
@given(**CASES, block_d=st.sampled_from([2, 4]), tile=st.sampled_from([2, 4]),
       segments=st.sampled_from([1, 2, 3]), grads=st.booleans())
def test_selective_scan_rows_matches_ref(bsz, dim, length, dstate, layout, has_D, has_z,
                                         has_bias, softplus, block_d, tile, segments, grads):
    """The rows forward (a row's T steps in one thread, the state folded into the first step,
    the next tile loaded first, L cut into segments joined by a first pass) equals the ref for
    every layout and option, with and without masks (L or D not a multiple of the tile), and
    its checkpoints feed the backward."""
    groups = next(g for g in (3, 2, 1) if dim % g == 0) if layout == "BGNL" else 1
    inputs = make_inputs(bsz, dim, length, dstate, layout, groups, has_D, has_z, has_bias)
    with pytest.MonkeyPatch.context() as mp:
        use_forward(mp, "rows", block_d, tile)
        mp.setattr(ss, "ROWS_SEGMENTS", segments)
        mp.setattr(ss, "_config", small_chunks(4))
        check_against_ref(inputs, softplus, torch.float32, grads=grads)


@pytest.mark.parametrize("layout", ["BNL", "BGNL", "DN"])
@pytest.mark.parametrize("method, length, segments", [
    ("tile", 45, None), ("rows", 45, 1), ("rows", 48, 1), ("rows", 45, 3), ("rows", 48, 2),
    ("lanes", 45, None), ("lanes", 48, None), ("states", 45, None), ("states", 48, None)])
def test_selective_scan_checkpoints_equal_loop(layout, method, length, segments):
    """With checkpoints, the tile, rows and lanes forwards save the loop forward's states
    (before every CHUNK steps), out and last state; the rows and lanes forwards masked
    (L = 45) and unmasked (L = 48, D = 6 = 3 blocks of 2; lanes: chunks of 16 steps of 2
    channels), the rows forward in one segment or several."""
    inputs = make_inputs(2, 6, length, 5, layout=layout, groups=3)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ss, "_config", small_chunks(8))
        if method == "rows":
            mp.setattr(ss, "_INTERPRET_ROWS", dict(BLOCK_D=2, T=4))
            mp.setattr(ss, "ROWS_SEGMENTS", segments)
        if method == "lanes":  # 4 lanes of 4 steps per channel, 8 channels per warp
            mp.setattr(ss, "_INTERPRET_LANES", dict(CPW=8, T=4))
        if method == "states":  # 4 rows per channel (2 states each), chunks of 8 steps
            mp.setattr(ss, "_INTERPRET_STATES", dict(NL=4, T=8))
        got = ss._scan_fwd(**inputs, softplus=True, save_ckpt=True, method=method)
        want = ss._scan_fwd(**inputs, softplus=True, save_ckpt=True, method="loop")
    assert got[2].shape == want[2].shape == (2, 6, 6, 5)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, **tol(torch.float32))


@pytest.mark.parametrize("dstate", [5, 8])
@pytest.mark.parametrize("length, chunk", [(45, 2), (48, 4), (37, 4)])
def test_selective_scan_lanes_checkpoints_inside_runs(dstate, length, chunk):
    """A checkpoint interval shorter than the lanes forward's runs (8 steps, 4 pieces of 2
    under the interpreter): each run saves the states entering every chunk / 2-th piece, 4
    states per store where N is a multiple of 4 (N = 8) and one at a time otherwise (N = 5),
    equal to the loop forward's; the backward from them matches the ref."""
    inputs = make_inputs(2, 6, length, dstate, layout="BNL")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ss, "_config", small_chunks(chunk))
        mp.setattr(ss, "_INTERPRET_LANES", dict(CPW=2, T=8))
        got = ss._scan_fwd(**inputs, softplus=True, save_ckpt=True, method="lanes")
        want = ss._scan_fwd(**inputs, softplus=True, save_ckpt=True, method="loop")
        assert got[2].shape == want[2].shape == (2, 6, -(-length // chunk), dstate)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **tol(torch.float32))
        mp.setenv(ss.FORWARD_ENV, "lanes")
        mp.setenv(ss.BACKWARD_ENV, "rows")
        check_against_ref(inputs, True, torch.float32)


@pytest.mark.parametrize("backward", ["rows", "chunk", "lanes"])
def test_selective_scan_padded_rows(backward):
    """u, delta and z as views of longer rows (stride L + 8, last dimension contiguous): the
    gradients are written at their own (contiguous) strides, not the views' (which once
    wrote past the end of du, dz: heap corruption), and equal the ref's."""
    b, d, length, n = 2, 4, 24, 4
    inputs = make_inputs(b, d, length, n)
    padded = {k: torch.randn(b, d, length + 8) for k in ("u", "delta", "z")}
    for k, big in padded.items():
        big[..., :length] = inputs[k]
    dout = torch.randn(b, d, length)
    want = grads_of(selective_scan_ref, inputs, dout)
    bigs = {k: v.requires_grad_() for k, v in padded.items()}
    leaves = {k: (bigs[k][..., :length] if k in bigs else v.clone().requires_grad_())
              for k, v in inputs.items()}
    assert leaves["u"].stride(1) == length + 8
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ss.BACKWARD_ENV, backward)
        mp.setattr(ss, "_config", small_chunks(8))
        out = ss.selective_scan(**leaves, delta_softplus=True)
        wrt = [bigs[k] if k in bigs else v for k, v in leaves.items()]
        got = torch.autograd.grad(out, wrt, dout)
    for name, g, w in zip(leaves, got, want):
        if name in bigs:  # the padding gets no gradient
            assert torch.all(g[..., length:] == 0), name
            g = g[..., :length]
        torch.testing.assert_close(g, w, **tol(torch.float32), msg=lambda m, n=name: f"d{n}: {m}")


def test_selective_scan_lanes_checkpoint_interval_refused():
    """An interval that neither divides the runs in whole loads nor is a multiple of them is
    refused by name, not saved at the wrong steps."""
    inputs = make_inputs(1, 4, 24, 4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ss, "_config", small_chunks(6))
        mp.setattr(ss, "_INTERPRET_LANES", dict(CPW=2, T=8))
        with pytest.raises(ValueError, match="checkpoint interval"):
            ss._scan_fwd(**inputs, softplus=True, save_ckpt=True, method="lanes")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("forward, dstate", [("tile", 4), ("rows", 16), ("lanes", 16)])
def test_selective_scan_tile_rows_half_inputs(dtype, forward, dstate):
    inputs = make_inputs(2, 5, 19, dstate, dtype=dtype)
    with pytest.MonkeyPatch.context() as mp:
        use_forward(mp, forward, 4, 8)
        mp.setattr(ss, "_config", small_chunks(8))
        check_against_ref(inputs, True, dtype)


def test_selective_scan_forward_choice(monkeypatch):
    """MAMBABOOK_SCAN_FORWARD picks the forward; auto is "loop" off CUDA; others are refused."""
    inputs = make_inputs(1, 3, 5, 2, device="cpu")
    args = (*inputs.values(), True, False)
    monkeypatch.delenv(ss.FORWARD_ENV, raising=False)
    assert ss._pick_forward(*args) == "loop"
    for name in ("loop", "tile", "rows", "lanes", "states"):
        monkeypatch.setenv(ss.FORWARD_ENV, name)
        assert ss._pick_forward(*args) == name
    monkeypatch.setenv(ss.FORWARD_ENV, "fast")
    with pytest.raises(ValueError, match=ss.FORWARD_ENV):
        ss.selective_scan(**inputs)


# ----------------------------------------------------------------------------- the lanes forward
def watch_pairs_rule(mp):
    """Wrap ss._lanes_pairs so each launch's decision is recorded: (the real rule, decisions)."""
    rule, seen = ss._lanes_pairs, []
    mp.setattr(ss, "_lanes_pairs", lambda a: seen.append(rule(a)) or seen[-1])
    return rule, seen


@settings(max_examples=14, deadline=None)
@given(**CASES, cpw=st.sampled_from([2, 8, 16, 32]), run=st.sampled_from([2, 4]),
       grads=st.booleans())
def test_selective_scan_lanes_matches_ref(bsz, dim, length, dstate, layout, has_D, has_z,
                                          has_bias, softplus, cpw, run, grads):
    """The lanes forward (CPW channels per warp, 32 / CPW lanes along time per channel, a run
    of T steps per lane scanned in registers, the runs' summaries scanned across lanes, the
    state carried from chunk to chunk) equals the ref for every layout and option, masked
    (L, D not multiples of the chunk and of CPW) and not, one lane per channel (CPW = 32)
    included; with grads its checkpoints feed the backward."""
    groups = next(g for g in (3, 2, 1) if dim % g == 0) if layout == "BGNL" else 1
    inputs = make_inputs(bsz, dim, length, dstate, layout, groups, has_D, has_z, has_bias)
    with pytest.MonkeyPatch.context() as mp:
        use_forward(mp, "lanes", cpw, run)
        mp.setattr(ss, "_config", small_chunks(4))
        check_against_ref(inputs, softplus, torch.float32, grads=grads)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_selective_scan_lanes_bf16_pairs(dtype, monkeypatch):
    """Unmasked bfloat16 inputs are read as int32 pairs (two values widened by one shift and
    one AND); the result equals the ref and the plain conversion. float32 never is."""
    inputs = make_inputs(2, 4, 64, 3, dtype=dtype)  # 2 warps of 2 channels, 16 lanes x 4 steps
    use_forward(monkeypatch, "lanes", 2, 4)
    rule, seen = watch_pairs_rule(monkeypatch)
    check_against_ref(inputs, True, dtype, grads=False)
    assert seen == [True]  # decided per launch; only bfloat16 pointers take the int32 path
    paired = ss._scan_fwd(**inputs, softplus=True, save_ckpt=False, method="lanes")[0]
    monkeypatch.setattr(ss, "_lanes_pairs", lambda a: False)
    plain = ss._scan_fwd(**inputs, softplus=True, save_ckpt=False, method="lanes")[0]
    torch.testing.assert_close(paired, plain, rtol=0, atol=0)
    even = dict(L=64, dpg=4, CPW=2, T=4, s_u_b=256, s_u_d=64)
    assert rule(even)
    assert not rule({**even, "L": 63})  # masked: the pairs path has no masks
    assert not rule({**even, "dpg": 3})
    assert not rule({**even, "s_u_b": 255})  # an odd stride: a pair would straddle two rows
    shifted = torch.zeros(129, dtype=torch.bfloat16)[1:]  # starts 2 bytes into its storage
    assert not rule({**even, "u_ptr": shifted})
    assert rule({**even, "u_ptr": shifted.float()})  # only bfloat16 is read as pairs


def test_selective_scan_lanes_bf16_view_at_odd_offset(monkeypatch):
    """bfloat16 inputs that start at an odd element of their storage (so not 4-byte
    aligned) are read value by value, not as int32 pairs, and still equal the ref."""
    inputs = make_inputs(2, 4, 65, 3, dtype=torch.bfloat16)
    shifted = {k: (v[..., 1:] if v is not None and v.dim() == 3 else v) for k, v in inputs.items()}
    assert shifted["u"].data_ptr() % 4 == 2 and shifted["u"].shape[-1] == 64
    use_forward(monkeypatch, "lanes", 2, 4)
    _, seen = watch_pairs_rule(monkeypatch)
    out, last, _ = ss._scan_fwd(**shifted, softplus=True, save_ckpt=False, method="lanes")
    assert seen == [False]
    out_ref, last_ref = selective_scan_ref(**shifted, delta_softplus=True, return_last_state=True)
    torch.testing.assert_close(out, out_ref, **tol(torch.bfloat16))
    torch.testing.assert_close(last, last_ref, **tol(torch.bfloat16))


@pytest.mark.parametrize("dstate, want", [(16, "lanes"), (ss.LANES_AUTO_MAX_N + 1, "rows")])
def test_selective_scan_auto_forward_times_each(dstate, want, monkeypatch):
    """On CUDA, "auto" times every forward once per key and keeps the fastest; the lanes
    and states forwards only up to LANES_AUTO_MAX_N states (the timings here are stand-ins: a CUDA
    tensor is faked, and each forward's "time" is a fixed number)."""
    from types import SimpleNamespace

    import mambabook.bench

    fake_ms = {"loop": 4.0, "tile": 3.0, "rows": 2.0, "lanes": 1.0, "states": 1.5}
    timed = []

    def time_fn(fn, device, **kw):
        method = fn.__defaults__[0]  # the forward the lambda launches
        timed.append(method)
        return fake_ms[method]

    monkeypatch.setattr(mambabook.bench, "time_fn", time_fn)
    monkeypatch.delenv(ss.FORWARD_ENV, raising=False)
    monkeypatch.setattr(ss, "_FORWARD_CHOICE", {})
    u = SimpleNamespace(shape=(2, 8, 100), dtype=torch.float32,
                        device=SimpleNamespace(type="cuda", index=0))
    A, B = torch.zeros(8, dstate), torch.zeros(2, dstate, 100)
    args = (u, u, A, B, B, None, None, None, True, False)
    assert ss._pick_forward(*args) == want
    assert timed == ["loop", "tile", "rows"] + (["lanes", "states"] if want == "lanes" else [])
    assert ss._pick_forward(*args) == want and len(timed) == 3 + 2 * (want == "lanes")  # cached


def test_selective_scan_lanes_rejects_bad_runs(monkeypatch):
    """Runs that are not whole 16-byte loads, or that neither divide the checkpoint interval
    nor hold it a whole number of times (in whole loads), are refused with a ValueError
    naming both (an interval of 2 with runs of 4 is allowed: checkpoints inside runs)."""
    inputs = make_inputs(1, 2, 16, 2)
    use_forward(monkeypatch, "lanes", 2, 3)
    with pytest.raises(ValueError, match="16-byte load"):
        ss.selective_scan(**inputs)
    use_forward(monkeypatch, "lanes", 2, 4)
    monkeypatch.setattr(ss, "_config", small_chunks(6))
    with pytest.raises(ValueError, match="checkpoint interval"):
        ss.selective_scan(**{k: v.requires_grad_() if k == "u" else v
                             for k, v in inputs.items()})


# ----------------------------------------------------------------------------- the rows backward
@settings(max_examples=12, deadline=None)
@given(**CASES, block_d=st.sampled_from([2, 4, 8, 16]), tile=st.sampled_from([2, 4, 8]),
       pieces=st.sampled_from([1, 2, 4]), chunk=st.sampled_from([4, 8, 16]),
       segments=st.sampled_from([1, 2, 3]), split=st.sampled_from([1, 2, 4]),
       prefetch=st.booleans(), bfly=st.booleans(), wide=st.booleans(),
       hints=st.sampled_from([("", ""), ("evict_first", "evict_last")]))
def test_selective_scan_rows_backward_matches_ref(bsz, dim, length, dstate, layout, has_D, has_z,
                                                  has_bias, softplus, block_d, tile, pieces,
                                                  chunk, segments, split, prefetch, bfly, wide,
                                                  hints):
    """The rows backward (tiles of R pieces of T steps in one thread, the gradient's carry
    a g between tiles, chunks recomputed from the checkpoints, L cut into segments joined
    by a first pass over sub-segments, dB and dC summed over the block's channels by tl.sum
    or by a butterfly, each state's columns loaded during the state before or not, the
    gradients stored per piece or a tile of 2 pieces at once, with eviction policies or
    not) gives every gradient of the ref, for every layout and option, masked (L, D not
    multiples of the tile) and not."""
    tile = min(tile, chunk)
    groups = next(g for g in (3, 2, 1) if dim % g == 0) if layout == "BGNL" else 1
    inputs = make_inputs(bsz, dim, length, dstate, layout, groups, has_D, has_z, has_bias)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ss.BACKWARD_ENV, "rows")
        mp.setattr(ss, "_INTERPRET_BWD_ROWS", dict(BLOCK_D=block_d, T=tile, R=pieces,
                                                   PREFETCH=prefetch, BFLY=bfly, WIDE=wide,
                                                   STORE_EV=hints[0], SCRATCH_EV=hints[1]))
        mp.setattr(ss, "BWD_SEGMENTS", segments)
        mp.setattr(ss, "BWD_SPLIT", split)
        mp.setattr(ss, "_config", small_chunks(chunk))
        check_against_ref(inputs, softplus, torch.float32)


def rows_runs(launches: dict, grads, chunk: int) -> dict:
    """For each interpreter launch of the rows backward (2 segments, checkpoints every
    `chunk` steps): (grads(), the keyword arguments of its kernel launches)."""
    out = {}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ss.BACKWARD_ENV, "rows")
        mp.setattr(ss, "BWD_SEGMENTS", 2)
        mp.setattr(ss, "_config", small_chunks(chunk))
        for key, launch in launches.items():
            mp.setattr(ss, "_INTERPRET_BWD_ROWS", launch)
            spy = LaunchSpy(ss._selective_scan_bwd_rows_kernel)
            mp.setattr(ss, "_selective_scan_bwd_rows_kernel", spy)
            out[key] = (grads(), spy.meta)
            mp.setattr(ss, "_selective_scan_bwd_rows_kernel", spy.kernel)
    return out


@pytest.mark.parametrize("dstate, length", [(3, 40), (4, 37)])
def test_selective_scan_rows_backward_bc_shuffled(dstate, length):
    """B and C of all states loaded once per tile and handed to the rows by shuffles (BCL;
    under the interpreter by a masked sum) give the gradients of the ref and of one load per
    (state, piece): N R = 6 and 8 of 8 rows, L a multiple of the tile and not."""
    inputs = make_inputs(2, 10, length, dstate, "BGNL", 2, True, True, True)
    dout = torch.randn(2, 10, length)
    want = grads_of(selective_scan_ref, inputs, dout)
    runs = rows_runs({bcl: dict(BLOCK_D=8, T=2, R=2, PREFETCH=True, BFLY=True, BCL=bcl)
                      for bcl in (True, False)}, lambda: grads_of(ss.selective_scan, inputs, dout), 8)
    for bcl, (_, meta) in runs.items():
        assert [m["BCL"] for m in meta] == [False, bcl]  # PASS 1 never, PASS 2 as asked
    for g, o, w in zip(runs[True][0], runs[False][0], want):
        torch.testing.assert_close(g, w, **tol(torch.float32))
        torch.testing.assert_close(g, o, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dim, length", [(16, 64), (13, 45)])
def test_selective_scan_rows_backward_wide_stores(dtype, dim, length):
    """A tile's gradients stored as (2 BLOCK_D, T) rows at once (WIDE, two pieces of a
    channel in adjacent lanes) equal those stored piece by piece, in fp32 and bf16, with
    whole tiles and blocks (D = 16, L = 64) and masked ones (D = 13, L = 45); and the ref's.
    Tiles of one piece ignore WIDE."""
    inputs = make_inputs(2, dim, length, 4, "BNL", 1, True, True, True)
    inputs = {k: v.to(dtype) if k in ("u", "delta", "z", "B", "C") else v
              for k, v in inputs.items()}
    dout = torch.randn(2, dim, length).to(dtype)
    runs = rows_runs({(pieces, wide): dict(BLOCK_D=8, T=4, R=pieces, PREFETCH=True, BFLY=True,
                                           WIDE=wide)
                      for pieces, wide in ((2, True), (2, False), (1, True))},
                     lambda: grads_of(ss.selective_scan, inputs, dout), 16)
    for (_, wide), (_, meta) in runs.items():
        assert [m["WIDE"] for m in meta] == [wide, wide]
    want = grads_of(selective_scan_ref, inputs, dout)
    got = {key: grads for key, (grads, _) in runs.items()}
    for g, o, one, w in zip(got[2, True], got[2, False], got[1, True], want):
        torch.testing.assert_close(g, o, rtol=0, atol=0)  # the same values, stored otherwise
        torch.testing.assert_close(g.float(), one.float(), **tol(dtype))
        torch.testing.assert_close(g.float(), w.float(), **tol(dtype))


@pytest.mark.parametrize("case", ["bf16", "bf16 odd address", "bf16 masked", "fp32"])
def test_selective_scan_rows_backward_bc_pairs(case):
    """B and C shuffled as bfloat16 pairs packed in int32 (BCLP) give the gradients of the
    unpacked shuffles bit for bit, and run only where every pair starts at a 4-byte address:
    bfloat16, unmasked tiles, even strides and base address (B 2 bytes past a boundary),
    never in PASS 1 or in float32; where they cannot run, a launch that asks for them
    shuffles nothing (one load per state)."""
    dtype = torch.float32 if case == "fp32" else torch.bfloat16
    length = 45 if case == "bf16 masked" else 64
    inputs = make_inputs(2, 16, length, 4, "BNL", 1, True, True, True)
    inputs = {k: v.to(dtype) if k in ("u", "delta", "z", "B", "C") else v
              for k, v in inputs.items()}
    dout = torch.randn(2, 16, length).to(dtype)

    def grads(fn):
        leaves = {k: v.detach().clone().requires_grad_() for k, v in inputs.items()}
        if case == "bf16 odd address":  # B 2 bytes past a 4-byte boundary (clone would align)
            flat = torch.empty(inputs["B"].numel() + 1, dtype=dtype)
            flat[1:] = inputs["B"].flatten()
            leaves["B"] = flat[1:].view_as(inputs["B"]).detach().requires_grad_()
            assert leaves["B"].data_ptr() % 4 == 2
        out = fn(**leaves, delta_softplus=True)
        return torch.autograd.grad(out, list(leaves.values()), dout)

    runs = rows_runs({pairs: dict(BLOCK_D=8, T=4, R=2, PREFETCH=True, BFLY=True, BCL=True,
                                  BCLP=pairs) for pairs in (True, False)},
                     lambda: grads(ss.selective_scan), 16)
    for pairs, (_, meta) in runs.items():
        packed = pairs and case == "bf16"
        assert [m["BCL"] for m in meta] == [False, packed or not pairs]
        assert [m["BCLP"] for m in meta] == [False, packed]
    want = grads(selective_scan_ref)
    for g, o, w in zip(runs[True][0], runs[False][0], want):
        torch.testing.assert_close(g, o, rtol=0, atol=0)
        torch.testing.assert_close(g.float(), w.float(), **tol(dtype))


@pytest.mark.parametrize("length, split, runs", [(61, 2, 2), (61, 4, 3), (64, 3, 3), (37, 4, 4)])
def test_selective_scan_rows_backward_sub_segments(length, split, runs):
    """PASS 1 over sub-segments gives the gradients of the ref and those of one sub-segment
    per segment: PASS 2 composes the sub-segments' maps in order. 3 segments of 24 steps
    (16 at L = 37, where the last is short and two of its sub-segments are empty) in tiles of
    4 steps; 4 sub-segments of 6 steps would cut tiles, so 3 run instead."""
    inputs = make_inputs(2, 6, length, 4, "BGNL", 2, True, True, True)
    dout = torch.randn(2, 6, length)

    def grads(mp, split):
        mp.setattr(ss, "BWD_SPLIT", split)
        return grads_of(ss.selective_scan, inputs, dout)

    want = grads_of(selective_scan_ref, inputs, dout)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ss.BACKWARD_ENV, "rows")
        mp.setattr(ss, "_INTERPRET_BWD_ROWS", dict(BLOCK_D=4, T=2, R=2, PREFETCH=True, BFLY=True))
        mp.setattr(ss, "BWD_SEGMENTS", 3)
        mp.setattr(ss, "_config", small_chunks(8))
        one = grads(mp, 1)
        spy = LaunchSpy(ss._selective_scan_bwd_rows_kernel)
        mp.setattr(ss, "_selective_scan_bwd_rows_kernel", spy)
        got = grads(mp, split)
    assert spy.grids[0][2] == 2 * runs  # PASS 1: `runs` sub-segments in each of segments 1, 2
    for g, o, w in zip(got, one, want):
        torch.testing.assert_close(g, w, **tol(torch.float32))
        torch.testing.assert_close(g, o, rtol=1e-5, atol=1e-6)


@settings(max_examples=12, deadline=None)
@given(**CASES, cpw=st.sampled_from([2, 8, 16]), run=st.sampled_from([2, 4]),
       warps=st.sampled_from([1, 2]), chunk=st.sampled_from([2, 4]))
def test_selective_scan_lanes_backward_matches_ref(bsz, dim, length, dstate, layout, has_D,
                                                   has_z, has_bias, softplus, cpw, run, warps,
                                                   chunk):
    """The lanes backward (CPW channels per warp, warps x CPW channels per program, runs of
    T steps per lane; the forward recomputed from each chunk's checkpoint, g by the same
    three phases backwards, dB and dC summed over the program's channels) gives every
    gradient of the ref, for every layout and option, masked and not."""
    groups = next(g for g in (3, 2, 1) if dim % g == 0) if layout == "BGNL" else 1
    inputs = make_inputs(bsz, dim, length, dstate, layout, groups, has_D, has_z, has_bias)
    spy = LaunchSpy(ss._selective_scan_bwd_lanes_kernel)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(ss.BACKWARD_ENV, "lanes")
        mp.setattr(ss, "_INTERPRET_BWD_LANES", dict(CPW=cpw, T=run, num_warps=warps))
        mp.setattr(ss, "_config", small_chunks(chunk))
        mp.setattr(ss, "_selective_scan_bwd_lanes_kernel", spy)
        check_against_ref(inputs, softplus, torch.float32)
    assert len(spy.grids) == 1  # the lanes backward ran (its chunks start at checkpoints)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_selective_scan_lanes_backward_half_inputs(dtype, monkeypatch):
    inputs = make_inputs(2, 5, 37, 16, dtype=dtype)
    monkeypatch.setenv(ss.BACKWARD_ENV, "lanes")
    monkeypatch.setattr(ss, "_config", small_chunks(8))
    check_against_ref(inputs, True, dtype)


def test_selective_scan_lanes_backward_needs_whole_chunks(monkeypatch):
    """Where the lanes backward's chunks (32 / CPW x T steps) do not start at checkpoints,
    the rows backward runs instead, with the same gradients."""
    inputs = make_inputs(1, 3, 20, 2)
    monkeypatch.setenv(ss.BACKWARD_ENV, "lanes")
    monkeypatch.setattr(ss, "_INTERPRET_BWD_LANES", dict(CPW=16, T=2, num_warps=1))  # 4 steps
    monkeypatch.setattr(ss, "_config", small_chunks(8))
    spy = LaunchSpy(ss._selective_scan_bwd_lanes_kernel)
    monkeypatch.setattr(ss, "_selective_scan_bwd_lanes_kernel", spy)
    check_against_ref(inputs, True, torch.float32)
    assert spy.grids == []


def test_selective_scan_backward_choice(monkeypatch):
    """MAMBABOOK_SCAN_BACKWARD picks the backward (rows by default); others are refused."""
    monkeypatch.delenv(ss.BACKWARD_ENV, raising=False)
    assert ss._pick_backward() == "rows"
    for name in ("chunk", "rows", "lanes"):
        monkeypatch.setenv(ss.BACKWARD_ENV, name)
        assert ss._pick_backward() == name
    monkeypatch.setenv(ss.BACKWARD_ENV, "fast")
    inputs = make_inputs(1, 3, 5, 2)
    leaves = {k: v.requires_grad_() if v is not None else None for k, v in inputs.items()}
    out = ss.selective_scan(**leaves)
    with pytest.raises(ValueError, match=ss.BACKWARD_ENV):
        out.sum().backward()


# ----------------------------------------------------------------------------- the states forward
# (rows per channel NL, chunk T): T a multiple of NL and of the interpreter's 2-step loads,
# dividing the checkpoint interval (16); NL = 1 (all states in one row) to 16 (one state a row)
STATES_LAUNCHES = [(1, 4), (2, 4), (4, 4), (4, 8), (8, 8), (2, 8), (16, 16)]


@settings(max_examples=16, deadline=None)
@given(**CASES, launch=st.sampled_from(STATES_LAUNCHES), pref=st.booleans(),
       pipe=st.sampled_from([0, 1, 2]), uwhole=st.booleans(), grads=st.booleans())
def test_selective_scan_states_matches_ref(bsz, dim, length, dstate, layout, has_D, has_z,
                                           has_bias, softplus, launch, pref, pipe, uwhole,
                                           grads):
    """The states forward (a channel's states across NL rows of a warp, each row's states
    walked through time in registers; delta and delta u gathered from the rows that computed
    them, y summed over the rows by a reduce-scatter) equals the ref for every layout and
    option: masked (L not a multiple of T, D not of 32 / NL, N not of NL) and not, NL clipped
    to N's power of 2; loads issued a chunk or a state early (PREF) or not; two chunks in
    flight (PIPE 1: u and z held for the output, 2: loaded again, with or without u loaded
    whole by every row, UWHOLE) or one; with grads its checkpoints feed the backward."""
    groups = next(g for g in (3, 2, 1) if dim % g == 0) if layout == "BGNL" else 1
    inputs = make_inputs(bsz, dim, length, dstate, layout, groups, has_D, has_z, has_bias)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ss, "_INTERPRET_STATES", dict(NL=launch[0], T=launch[1], PREF=pref, PIPE=pipe,
                                                 UWHOLE=uwhole and pipe == 2))
        mp.setenv(ss.FORWARD_ENV, "states")
        mp.setattr(ss, "_config", small_chunks(16))
        check_against_ref(inputs, softplus, torch.float32, grads=grads)


@pytest.mark.parametrize("nl, tile, pref, pipe, poly, uwhole", [
    (8, 8, False, 0, 0, False), (4, 16, True, 0, 0, False), (16, 16, True, 0, 0, False),
    (4, 16, False, 1, 0, False), (4, 16, False, 2, 0, False), (4, 16, False, 2, 1, False),
    (4, 16, False, 2, 0, True), (8, 8, False, 2, 0, True)])
def test_selective_scan_states_mamba_shape(nl, tile, pref, pipe, poly, uwhole):
    """N = 16 as in Mamba: 2 states per row (NL = 8), 4 (NL = 4, chunks of 16 with 4 steps of
    inputs per row), 1 (NL = 16), one or two chunks in flight, one state's exp2 by the
    polynomial (POLY), u loaded whole by every row (UWHOLE); unmasked (L = 64, D = 8) and masked (L = 37, D = 3), out, last state
    and checkpoints equal to the loop forward's."""
    for dim, length in ((8, 64), (3, 37)):
        inputs = make_inputs(2, dim, length, 16)
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(ss, "_INTERPRET_STATES",
                       dict(NL=nl, T=tile, PREF=pref, PIPE=pipe, POLY=poly, UWHOLE=uwhole))
            got = ss._scan_fwd(**inputs, softplus=True, save_ckpt=True, method="states")
            want = ss._scan_fwd(**inputs, softplus=True, save_ckpt=True, method="loop")
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, **tol(torch.float32))


def test_ex2_poly_matches_exp2():
    """The FMA-pipe exp2 (`_ex2_poly`): relative error below 3e-7 from 2^-125 to 2^125 (the
    fractions near +-1/2 and integers included); clipped outside."""
    import triton
    import triton.language as tl

    @triton.jit
    def ex2(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        m = offs < n
        tl.store(y_ptr + offs, ss._ex2_poly(tl.load(x_ptr + offs, mask=m)), mask=m)

    x = torch.cat([torch.linspace(-125, 125, 997), torch.tensor([-0.5, 0.5, 0.0, -1e-8, 3.7,
                                                                 -20.5, -124.5, 7.5, -130.0])])
    y = torch.empty_like(x)
    ex2[(1,)](x, y, x.numel(), BLOCK=1024)
    want = torch.exp2(x.double().clamp(-125, 125))
    assert ((y.double() - want) / want).abs().max() < 3e-7


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_selective_scan_states_half_inputs(dtype, monkeypatch):
    """bfloat16 B and C of unmasked chunks are read as int32 pairs (bit-identical to the
    plain conversion); float16 never is, nor a bfloat16 view at an odd element; both equal
    the ref."""
    inputs = make_inputs(2, 8, 64, 8, dtype=dtype)
    use_forward(monkeypatch, "states", 4, 8)
    rule, seen = ss._states_pairs, []
    monkeypatch.setattr(ss, "_states_pairs", lambda *a: seen.append(rule(*a)) or seen[-1])
    check_against_ref(inputs, True, dtype, grads=False)
    assert seen == [dtype == torch.bfloat16]
    paired = ss._scan_fwd(**inputs, softplus=True, save_ckpt=False, method="states")[0]
    monkeypatch.setattr(ss, "_states_pairs", lambda *a: False)
    plain = ss._scan_fwd(**inputs, softplus=True, save_ckpt=False, method="states")[0]
    torch.testing.assert_close(paired, plain, rtol=0, atol=0)
    B = inputs["B"]
    assert not rule(B, B, False)  # masked
    assert not rule(B[..., 1:], B[..., 1:], True) or dtype != torch.bfloat16  # odd address
    assert rule(B, B, True) == (dtype == torch.bfloat16)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_selective_scan_states_whole_u(dtype, monkeypatch):
    """u loaded whole by every row (UWHOLE) computes delta u from the gathered delta and the
    row's own u, the product the gather moved before: outputs, last state and checkpoints
    bit-identical to the launch without it, bfloat16 u read as int32 pairs when unmasked
    (and not when masked); launches that cannot load whole chunks of u are refused."""
    for dim, length in ((8, 64), (5, 37)):
        inputs = make_inputs(2, dim, length, 16, dtype=dtype)
        got = {}
        for uw in (False, True):
            monkeypatch.setattr(ss, "_INTERPRET_STATES", dict(NL=4, T=8, PIPE=2, UWHOLE=uw))
            got[uw] = ss._scan_fwd(**inputs, softplus=True, save_ckpt=True, method="states")
        for a, b in zip(got[False], got[True]):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        want = ss._scan_fwd(**inputs, softplus=True, save_ckpt=True, method="loop")
        for g, w in zip(got[True], want):
            torch.testing.assert_close(g.float(), w.float(), **tol(dtype))
    spy = LaunchSpy(ss._selective_scan_fwd_states_kernel)
    monkeypatch.setattr(ss, "_selective_scan_fwd_states_kernel", spy)
    for length in (64, 37):
        ss._scan_fwd(**make_inputs(1, 8, length, 16, dtype=dtype), softplus=True,
                     save_ckpt=False, method="states")
    assert [kw["PAIRS_U"] for kw in spy.meta] == [dtype == torch.bfloat16, False]
    monkeypatch.setattr(ss, "_INTERPRET_STATES", dict(NL=4, T=8, PIPE=0, UWHOLE=True))
    with pytest.raises(ValueError, match="UWHOLE"):
        ss._scan_fwd(**make_inputs(1, 8, 16, 16), softplus=True, save_ckpt=False,
                     method="states")


def test_selective_scan_states_rejects_bad_chunks(monkeypatch):
    """Chunks that are not whole loads, not a multiple of the rows per channel, or that do
    not divide the checkpoint interval are refused with a ValueError naming them."""
    inputs = make_inputs(1, 2, 16, 8)
    use_forward(monkeypatch, "states", 4, 6)
    with pytest.raises(ValueError, match="states forward"):
        ss.selective_scan(**inputs)
    use_forward(monkeypatch, "states", 8, 4)
    with pytest.raises(ValueError, match="rows per channel"):
        ss.selective_scan(**inputs)
    use_forward(monkeypatch, "states", 4, 8)
    monkeypatch.setattr(ss, "_config", small_chunks(4))
    leaves = {k: v.requires_grad_() if v is not None else None for k, v in inputs.items()}
    with pytest.raises(ValueError, match="checkpoint interval"):
        ss.selective_scan(**leaves)


def test_selective_scan_states_compiles_for_sm90():
    """The states forward compiles for sm_90 (no interpreter): float32 with checkpoints,
    unmasked, 2 states a row; bfloat16 pairs with 4 states a row and 4 steps of inputs per
    row; masked with N not a multiple of the rows (N = 5 on 8 rows), (D, N) B and C; with
    and without the prefetch (PREF); two chunks in flight (PIPE 1 and 2); one state's exp2
    by the polynomial (POLY); u loaded whole by every row (UWHOLE), bfloat16 pairs unmasked
    and float32 masked."""
    half = ["u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "out_ptr"]
    compile_for_sm90("_selective_scan_fwd_states_kernel", [
        dict(FLAGS, SAVE_CKPT=True, N=16, CHUNK=32, NL=8, T=8, V=4, EVEN=True, PAIRS=False,
             ASM=True, PREF=False, PIPE=0),
        dict(FLAGS, SAVE_CKPT=True, N=16, CHUNK=16, NL=4, T=16, V=8, EVEN=True, PAIRS=True,
             ASM=True, PREF=True, PIPE=0, _bf16=half),
        dict(FLAGS, SAVE_CKPT=False, N=5, CHUNK=32, NL=8, T=8, V=4, EVEN=False, PAIRS=False,
             ASM=True, PREF=True, PIPE=0),
        dict(FLAGS, VARYING_BC=False, SAVE_CKPT=True, N=16, CHUNK=32, NL=8, T=8, V=4,
             EVEN=False, PAIRS=False, ASM=False, PREF=True, PIPE=0),
        dict(FLAGS, SAVE_CKPT=True, N=16, CHUNK=16, NL=4, T=16, V=8, EVEN=True, PAIRS=True,
             ASM=True, PREF=False, PIPE=1, POLY=1, _bf16=half),
        dict(FLAGS, SAVE_CKPT=False, N=5, CHUNK=32, NL=8, T=8, V=4, EVEN=False, PAIRS=False,
             ASM=True, PREF=False, PIPE=2, _bf16=half),
        dict(FLAGS, SAVE_CKPT=True, N=16, CHUNK=16, NL=4, T=16, V=8, EVEN=True, PAIRS=True,
             ASM=True, PREF=False, PIPE=2, VU=8, PAIRS_U=True, _bf16=half),
        dict(FLAGS, SAVE_CKPT=True, N=5, CHUNK=32, NL=8, T=8, V=4, EVEN=False, PAIRS=False,
             ASM=True, PREF=False, PIPE=2, VU=4, PAIRS_U=False)])


# ----------------------------------------------------------------------------- GPU, real sizes
@pytest.mark.gpu
@pytest.mark.parametrize("backward", ["chunk", "rows", "lanes"])
@pytest.mark.parametrize("layout", ["BNL", "BGNL", "DN"])
def test_selective_scan_gpu_fp32(layout, backward, monkeypatch):
    monkeypatch.setenv(ss.BACKWARD_ENV, backward)
    inputs = make_inputs(2, 768, 2053, 16, layout=layout, groups=4, device="cuda")
    check_against_ref(inputs, True, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_selective_scan_gpu_half(dtype):
    inputs = make_inputs(2, 512, 4096, 16, dtype=dtype, device="cuda")
    check_against_ref(inputs, True, dtype)


@pytest.mark.gpu
def test_selective_scan_gpu_no_dsz_odd_sizes():
    inputs = make_inputs(3, 97, 1001, 7, has_D=False, has_z=False, has_bias=False, device="cuda")
    check_against_ref(inputs, False, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("forward", ["tile", "rows", "lanes", "auto"])
@pytest.mark.parametrize("layout", ["BNL", "BGNL", "DN"])
def test_selective_scan_gpu_tile(layout, forward, monkeypatch):
    """The tile forward (autotuned tiles without autograd, T = CHUNK with it) and the timed
    choice between the forwards, at real sizes, gradients included."""
    monkeypatch.setenv(ss.FORWARD_ENV, forward)
    inputs = make_inputs(2, 768, 2053, 16, layout=layout, groups=4, device="cuda")
    check_against_ref(inputs, True, torch.float32, grads=False)
    check_against_ref(inputs, True, torch.float32)


@pytest.mark.gpu
@pytest.mark.parametrize("forward", ["tile", "lanes"])
def test_selective_scan_gpu_tile_bf16_odd(forward, monkeypatch):
    monkeypatch.setenv(ss.FORWARD_ENV, forward)
    inputs = make_inputs(3, 97, 1001, 7, has_D=False, has_z=False, has_bias=False,
                         dtype=torch.bfloat16, device="cuda")
    check_against_ref(inputs, False, torch.bfloat16, grads=False)


@pytest.mark.gpu
@pytest.mark.parametrize("launch", [(8, 8, False, 0), (8, 16, True, 0), (4, 16, True, 0),
                                    (4, 8, False, 0), (4, 16, False, 1), (4, 16, False, 2),
                                    (4, 16, False, 2, True)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_scan_gpu_states(dtype, launch, monkeypatch):
    """The states forward at real sizes, with and without the prefetch, one or two chunks in
    flight, u loaded whole by every row: its shuffles as inline
    PTX (the compiled layout has one row per lane), the approximate special functions; unmasked (L = 4096, bfloat16
    pairs) and masked (L = 2053, D = 97, N = 7), groups, (D, N) B and C, gradients from its
    checkpoints."""
    monkeypatch.setenv(ss.FORWARD_ENV, "states")
    monkeypatch.setattr(ss, "STATES_FIXED", dict(NL=launch[0], T=launch[1], PREF=launch[2],
                                                 PIPE=launch[3], UWHOLE=launch[4:] == (True,)))
    ss._BFLY_LAYOUT_OK.clear()
    for layout in ("BNL", "BGNL", "DN"):
        inputs = make_inputs(2, 768, 4096, 16, layout=layout, groups=4, dtype=dtype,
                             device="cuda")
        check_against_ref(inputs, True, dtype)
    assert ss._BFLY_LAYOUT_OK and all(ss._BFLY_LAYOUT_OK.values())
    inputs = make_inputs(3, 97, 2053, 7, dtype=dtype, device="cuda")
    check_against_ref(inputs, True, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_selective_scan_gpu_one_million_steps(dtype):
    """L = 1,000,000: finite outputs, state and gradients; the first 4096 outputs equal those
    of the kernel run on the first 4096 steps alone (causality)."""
    length = 1_000_000
    inputs = make_inputs(1, 128, length, 16, dtype=dtype, device="cuda")
    leaves = {k: v.requires_grad_() if v is not None else None for k, v in inputs.items()}
    out, last = ss.selective_scan(**leaves, delta_softplus=True, return_last_state=True)
    assert torch.isfinite(out).all() and torch.isfinite(last).all()
    grads = torch.autograd.grad(out.float().square().mean(), list(leaves.values()))
    for name, g in zip(leaves, grads):
        assert torch.isfinite(g).all(), name
    with torch.no_grad():
        prefix = {k: (v[..., :4096].contiguous() if v.dim() >= 3 else v).detach()
                  for k, v in leaves.items()}
        head = ss.selective_scan(**prefix, delta_softplus=True)
    torch.testing.assert_close(out[..., :4096].detach(), head, **tol(dtype))


def test_scan_floor_counts_and_panels():
    """The roofline numbers of the suite: bytes and exponentials as counted in chapter 7, and
    the record selection behind the chapter's scaling widget."""
    from mambabook.bench import Record
    from mambabook.suites.selective_scan import (
        EXP_PER_S,
        HBM_BYTES_PER_S,
        floor_records,
        scaling_records,
        scan_floor,
    )

    f = scan_floor(8, 1536, 4096, 16, 4)
    assert f["bytes"] == (4 * 8 * 1536 * 4096 + 2 * 8 * 16 * 4096) * 4
    assert f["exps"] == 8 * 1536 * 4096 * 16
    assert f["floor_ms"] == max(f["bytes"] / HBM_BYTES_PER_S, f["exps"] / EXP_PER_S) * 1e3
    assert scan_floor(8, 1536, 4096, 16, 4, backward=True)["exps"] == 2 * f["exps"]
    recs = [Record("s", "triton", dict(L=2048, dtype="fp32", mode="fwd"), 1.0,
                   extra=dict(floor_floor_ms=0.1)),
            Record("s", "triton", dict(L=2048, dtype="bf16", mode="fwd"), 1.0),
            Record("s", "sdpa_causal_bf16", dict(L=2048, dtype="bf16", mode="fwd"), 0.5),
            Record("s", "triton", dict(L=2048, dtype="fp32", mode="fwd+bwd"), 3.0)]
    panel = scaling_records(recs, "fwd", "fp32")
    assert [r.provider for r in panel] == ["triton", "sdpa_causal_bf16"]
    assert [(r.provider, r.ms) for r in floor_records(recs, "fwd", "fp32")] == [("floor", 0.1)]


# ----------------------------------------------------------------------------- butterfly layout
ROWS = "#blocked1 = #ttg.blocked<{sizePerThread = [1, 4], threadsPerWarp = [32, 1], warpsPerCTA = [1, 1], order = [1, 0]}>"
SPREAD = "#blocked1 = #ttg.blocked<{sizePerThread = [1, 1], threadsPerWarp = [8, 4], warpsPerCTA = [1, 1], order = [1, 0]}>"
SHUFFLE = ('%y = tt.elementwise_inline_asm "shfl.sync.bfly.b32 $0, $1, $2, 0x1f, -1;" '
           '{constraints = "=r,r,r", packed_element = 1 : i32, pure = true} %x, %m : '
           'tensor<32x4xi32, #blocked1>, tensor<32x4xi32, #blocked1> -> tensor<32x4xi32, #blocked1>')


def test_butterfly_needs_rows_along_lanes():
    """The rows backward's shuffles run only where the TTGIR puts one row per lane (a blocked
    layout, or a linear one that is the same): a warp spread over steps, an unknown layout or
    no shuffle at all falls back to tl.sum."""
    assert ss._rows_layout_in(ROWS + "\n" + SHUFFLE)
    assert not ss._rows_layout_in(SPREAD + "\n" + SHUFFLE)
    assert not ss._rows_layout_in(ROWS + "\n" + SHUFFLE.replace("#blocked1>", "#linear>"))
    assert not ss._rows_layout_in(ROWS)
    split = ROWS.replace("warpsPerCTA = [1, 1]", "warpsPerCTA = [1, 2]")
    assert not ss._rows_layout_in(split + "\n" + SHUFFLE)
    # a linear layout that is one row per lane (as Triton 3.6 gives some butterfly tiles)
    linear = ("#linear = #ttg.linear<{register = [[0, 1]], lane = [[1, 0], [2, 0], [4, 0], "
              "[8, 0], [16, 0]], warp = [], block = []}>")
    on_linear = SHUFFLE.replace("tensor<32x4xi32, #blocked1> -> tensor<32x4xi32, #blocked1>",
                                "tensor<32x2xi32, #linear> -> tensor<32x2xi32, #linear>")
    assert ss._rows_layout_in(ROWS + "\n" + linear + "\n" + SHUFFLE + "\n" + on_linear)
    spread = linear.replace("[[0, 1]], lane = [[1, 0], [2, 0]", "[[1, 0]], lane = [[0, 1], [2, 0]")
    assert not ss._rows_layout_in(ROWS + "\n" + spread + "\n" + SHUFFLE + "\n" + on_linear)
    assert not ss._rows_layout_in(linear.replace("warp = []", "warp = [[16, 0]]") + "\n" + on_linear)


@pytest.mark.gpu
def test_selective_scan_gpu_butterfly_in_use(monkeypatch):
    """At sizes whose strides are multiples of 16 (L = 4096), Triton lays the rows backward's
    tiles one row per lane, so the butterfly runs (else dB, dC would cost 4x the shuffles)."""
    monkeypatch.setenv(ss.BACKWARD_ENV, "rows")
    ss._BFLY_LAYOUT_OK.clear()
    inputs = make_inputs(2, 512, 4096, 16, device="cuda")
    check_against_ref(inputs, True, torch.float32)
    assert ss._BFLY_LAYOUT_OK and all(ss._BFLY_LAYOUT_OK.values())



_SM90_COMPILE = """
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
import mambabook.kernels.selective_scan_kernel as ss

kernel = getattr(ss, sys.argv[1])
for spec in sys.argv[2:]:
    const = json.loads(spec)
    half = set(const.pop("_bf16", ()))  # pointers to bfloat16
    names = kernel.arg_names
    for p in kernel.params:  # constexprs left out take their defaults
        if p.is_constexpr and p.has_default and p.name not in const:
            const[p.name] = p.default
    sig = {n: "constexpr" if n in const else ("*bf16" if n in half else "*fp32")
           if n.endswith("_ptr") else "i32" for n in names}
    src = ASTSource(fn=kernel, signature=sig,
                    constexprs={(names.index(k),): v for k, v in const.items()})
    compiled = triton.compile(src, target=GPUTarget("cuda", 90, 32), options=dict(num_warps=1))
    assert kernel.__name__ in compiled.asm["ptx"], spec
    print("compiled")
"""


def compile_for_sm90(kernel_name, consts):
    """Compile a kernel of the module for sm_90 once per dict of constexprs, in a process
    without the interpreter (GPU or not); fails with the compiler's message."""
    import json
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", _SM90_COMPILE, kernel_name,
                           *(json.dumps(c) for c in consts)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["compiled"] * len(consts)


FLAGS = dict(HAS_D=True, HAS_Z=True, HAS_BIAS=True, SOFTPLUS=True, VARYING_BC=True)


def test_selective_scan_lanes_checkpoints_compile_for_sm90():
    """The lanes forward's checkpoint stores compile for sm_90 (no interpreter): 4 states per
    16-byte store (N = 8) with 2 checkpoints inside each run of 16 steps (every 8), masked, and
    one state per store (N = 5) at run starts, unmasked; and its output stored as rows in time
    order (unmasked chunks of R = 4 pieces, and of R = 2 without checkpoints)."""
    compile_for_sm90("_selective_scan_fwd_lanes_kernel", [
        dict(FLAGS, SAVE_CKPT=ckpt, N=n, CHUNK=chunk, CPW=cpw, T=16, V=v, EVEN=even, PAIRS=False)
        for ckpt, n, chunk, cpw, v, even in ((True, 8, 8, 4, 4, False), (True, 5, 32, 4, 4, True),
                                             (False, 16, 32, 2, 8, True))])


def test_selective_scan_rows_backward_compiles_for_sm90():
    """The rows backward compiles for an H100/H200 (sm_90) on this machine, GPU or not (in a
    process without the interpreter). The interpreter runs Python, so it does not see what
    only the compiler rejects (a loop-carried variable whose type changes, say); on the GPU
    the tl.sum path (no butterfly) runs only for shapes whose loads Triton cannot vectorise.
    PASS, BFLY, R, EVEN, BCL, WIDE: both passes, both paths for dB and dC, 1 and 2 pieces,
    masked and not, B and C loaded per state or shuffled from one load per tile, gradients
    stored per piece or per tile (with the eviction policies of the float32 launch)."""
    hints = dict(STORE_EV="evict_first", SCRATCH_EV="evict_last")
    compile_for_sm90("_selective_scan_bwd_rows_kernel", [
        dict(FLAGS, CHUNK=32, BLOCK_D=32, T=4, R=pieces, PASS=pass_, EVEN=even, PREFETCH=True,
             BFLY=bfly, ASM=True, BCL=bcl, WIDE=wide, BCLP=False,
             **(hints if wide else dict(STORE_EV="", SCRATCH_EV="")))
        for pass_, bfly, pieces, even, bcl, wide in (
            (1, 0, 2, False, False, False), (2, 0, 2, False, True, True),
            (2, 32, 2, True, True, True), (2, 32, 2, True, False, False),
            (2, 0, 1, True, False, True))])
    # bfloat16 inputs, B and C shuffled as packed pairs (the bfloat16 launch), masked and not
    half = ["u_ptr", "delta_ptr", "B_ptr", "C_ptr", "z_ptr", "dout_ptr", "du_ptr",
            "ddelta_ptr", "dz_ptr"]
    compile_for_sm90("_selective_scan_bwd_rows_kernel", [
        dict(FLAGS, CHUNK=16, BLOCK_D=32, T=8, R=2, PASS=2, EVEN=even, PREFETCH=True, BFLY=32,
             ASM=True, BCL=True, WIDE=False, BCLP=even, **hints, _bf16=half)
        for even in (True, False)])


def test_states_ablations_edits_apply():
    """benchmarks/experiments/states_ablations.py's edits still find the kernel text they
    replace (each once) and leave a module that parses: the script rebuilds the recorded
    ablations from the kernel as it is, so a kernel change must not silently break it."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks" / "experiments"))
    try:
        import states_ablations
    finally:
        sys.path.pop(0)
    original = Path(ss.__file__).read_text()
    for name in states_ablations.EDITS:
        src = states_ablations.variant_source(name)
        assert src != original
        compile(src, f"ablation_{name}.py", "exec")
