"""mambabook.models: step decoding == full forward for both LMs, parameter matching, the
Mamba block's initialisation and scan, generate(), the generation suites' helpers."""

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import needs_kernels, tol
from hypothesis import given, settings
from hypothesis import strategies as st

from mambabook.models import (
    MambaBlock,
    MambaConfig,
    MambaLM,
    TransformerConfig,
    TransformerLM,
    cache_bytes,
    count_parameters,
    generate,
    matched_transformer_config,
    step_logits,
)
from mambabook.selective import selective_scan_ref


def _models(positions="rotary", d_model=32, n_layer=2, d_state=4):
    mcfg = MambaConfig(d_model=d_model, n_layer=n_layer, d_state=d_state)
    tcfg = matched_transformer_config(mcfg, n_head=2, positions=positions)
    return MambaLM(mcfg).double().eval(), TransformerLM(tcfg).double().eval()


@pytest.mark.parametrize("L", [1, 2, 5, 17])
@pytest.mark.parametrize("kind", ["mamba", "rotary", "learned"])
def test_step_decoding_equals_full_forward(kind, L):
    mamba, transformer = _models("learned" if kind == "learned" else "rotary")
    model = mamba if kind == "mamba" else transformer
    tokens = torch.randint(0, 256, (3, L))
    with torch.no_grad():
        torch.testing.assert_close(step_logits(model, tokens), model(tokens), **tol(torch.float64))


@settings(max_examples=6, deadline=None)
@given(prompt=st.integers(1, 7), new=st.integers(1, 6), kind=st.sampled_from(["mamba", "transformer"]))
def test_prefill_then_steps_equal_full_forward(prompt, new, kind):
    """prefill(prompt) then step() for the rest: the logits of model(whole sequence)."""
    torch.manual_seed(prompt * 10 + new)
    mamba, transformer = _models(d_model=16, n_layer=2)
    model = mamba if kind == "mamba" else transformer
    tokens = torch.randint(0, 256, (2, prompt + new))
    with torch.no_grad():
        full = model(tokens)
        logits, cache = model.prefill(tokens[:, :prompt], max_len=prompt + new)
        torch.testing.assert_close(logits, full[:, :prompt], **tol(torch.float64))
        steps = [model.step(tokens[:, t], cache) for t in range(prompt, prompt + new)]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, prompt:], **tol(torch.float64))


@pytest.mark.parametrize("path", ["ref", pytest.param("kernel", marks=needs_kernels)])
def test_mamba_block_is_its_definition(path):
    """MambaBlock.forward == in_proj, causal conv, SiLU, selective_scan_ref, gate, out_proj
    written out by hand (and the conv is causal: the future does not change the past); on
    the twins (float64) and on the kernels (float32; on a CPU in Triton's interpreter)."""
    dtype = torch.float64 if path == "ref" else torch.float32
    cfg = MambaConfig(d_model=8, n_layer=1, d_state=4, d_conv=3, path=path)
    block = MambaBlock(cfg).to(dtype)
    x = torch.randn(2, 6, 8, dtype=dtype)
    xz = x @ block.in_proj.weight.T  # (B, L, 2D)
    u, z = xz[..., :16].transpose(1, 2), xz[..., 16:].transpose(1, 2)  # (B, D, L)
    padded = F.pad(u, (2, 0))
    w = block.conv1d.weight[:, 0]  # (D, K)
    conv = torch.stack([(padded[..., t:t + 3] * w).sum(-1) for t in range(6)], -1) + block.conv1d.bias[:, None]
    u = F.silu(conv)
    s6 = block.ssm
    dbl = u.transpose(1, 2) @ s6.x_proj.weight.T  # (B, L, R + 2N)
    R = cfg.dt_rank
    delta = (dbl[..., :R] @ s6.dt_proj.weight.T).transpose(1, 2)
    Bm, Cm = dbl[..., R:R + 4].transpose(1, 2), dbl[..., R + 4:].transpose(1, 2)
    y = selective_scan_ref(u, delta, -torch.exp(s6.A_log), Bm, Cm, s6.D, z=z,
                           delta_bias=s6.dt_proj.bias, delta_softplus=True)
    want = y.transpose(1, 2) @ block.out_proj.weight.T
    with torch.no_grad():
        got = block(x)
        torch.testing.assert_close(got, want, **tol(dtype))
        x2 = x.clone()
        x2[:, 4:] += 1.0
        torch.testing.assert_close(block(x2)[:, :4], got[:, :4], **tol(dtype))
        assert not torch.allclose(block(x2)[:, 4:], got[:, 4:])


@needs_kernels
def test_mamba_forward_hands_no_layout_copies():
    """On the kernel path, no copy of a (B, D, L) tensor between in_proj and out_proj:
    x, z, the conv output, delta, B, C and y are views of (rows, B*L) matmul outputs. Copies
    are read from the operations PyTorch dispatches (a Triton launch dispatches none; the
    interpreter's own one-dimensional host copies are not layout copies)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    copies = {"aten.clone.default", "aten.copy_.default", "aten._to_copy.default",
              "aten.cat.default", "aten.constant_pad_nd.default", "aten.stack.default"}

    class LayoutCopies(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if str(func) in copies and out.dim() > 1 and out.numel() >= bsz * dim * L:
                self.seen.append((str(func), tuple(out.shape)))
            return out

    bsz, dim, L = 2, 32, 7
    block = MambaBlock(MambaConfig(d_model=16, n_layer=1, d_state=4, path="kernel"))
    hidden = torch.randn(bsz, L, 16)
    x_conv, z, x = block.inner(hidden)
    assert x_conv.stride() == z.stride() == x.stride() == (L, bsz * L, 1)
    for ret in (False, True):
        with torch.no_grad(), LayoutCopies() as mode:
            block(hidden, return_state=ret)
        assert mode.seen == [], mode.seen
    block.cfg.path = block.ssm.path = "ref"  # the twins copy (and the check sees it)
    with torch.no_grad(), LayoutCopies() as mode:
        block(hidden)
    assert mode.seen


@needs_kernels
@pytest.mark.parametrize("prompt", [1, 2, 6])
def test_mamba_kernel_path_prefill_then_steps(prompt):
    """path="kernel" throughout (conv, scan, conv step, state update, add + RMSNorm): the
    prefill's logits and the steps after it equal the full forward on the twins, with
    prompts shorter than the conv window too (float32; on a CPU in the interpreter)."""
    torch.manual_seed(prompt)
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, d_state=4, path="ref")).eval()
    tokens = torch.randint(0, 256, (2, prompt + 3))
    with torch.no_grad():
        full = model(tokens)
        model.cfg.path = "kernel"  # one config: every block's conv and the LM's add + norm
        for layer in model.layers:
            layer.mixer.ssm.path = "kernel"
        logits, cache = model.prefill(tokens[:, :prompt])
        steps = [model.step(tokens[:, t], cache) for t in range(prompt, prompt + 3)]
    torch.testing.assert_close(logits, full[:, :prompt], **tol(torch.float32))
    torch.testing.assert_close(torch.stack(steps, 1), full[:, prompt:], **tol(torch.float32))


@pytest.mark.gpu
def test_mamba_step_in_one_cuda_graph_gpu():
    """Two blocks of the 1.4B row's width, bfloat16, batch 64, prompt 128: the prefill on
    the kernels, then MambaLM.step captured in one CUDA graph (no host sync, no allocation
    that depends on values); its replays equal the eager steps and the full forward."""
    from mambabook.models import MambaLayerState, paper_scale_mamba_config

    model = MambaLM(paper_scale_mamba_config(n_layer=2)).to("cuda", torch.bfloat16).eval()
    tokens = torch.randint(0, 256, (64, 132), device="cuda")
    token = tokens[:, 128].clone()
    with torch.no_grad():
        full = model(tokens)
        _, cache = model.prefill(tokens[:, :128])
        start = [MambaLayerState(s.conv.clone(), s.ssm.clone()) for s in cache]
        eager = []
        for t in range(128, 132):
            token.copy_(tokens[:, t])
            eager.append(model.step(token, cache))
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):  # warm-up off the graph (compiles the kernels)
            model.step(token, cache)
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = model.step(token, cache)
        for s, s0 in zip(cache, start):
            s.conv.copy_(s0.conv)
            s.ssm.copy_(s0.ssm)
        replayed = []
        for t in range(128, 132):
            token.copy_(tokens[:, t])
            graph.replay()
            replayed.append(logits.clone())
    torch.testing.assert_close(torch.stack(replayed, 1), torch.stack(eager, 1))
    torch.testing.assert_close(torch.stack(eager, 1), full[:, 128:], **tol(torch.bfloat16))


def test_paper_scale_config():
    """The 1.4B row at byte vocabulary: about 1.3B parameters (counted on the meta device,
    nothing allocated), and the step's floor that models' docstring quotes in bfloat16:
    2.54 GB of weights, 27.5 MB of state per sequence read and written."""
    from mambabook.models import decode_step_bytes, paper_scale_mamba_config

    cfg = paper_scale_mamba_config()
    assert (cfg.d_model, cfg.n_layer, cfg.d_state, cfg.expand, cfg.vocab_size) == (
        2048, 48, 16, 2, 256)
    with torch.device("meta"):
        model = MambaLM(cfg).to(torch.bfloat16)
    assert 1.2e9 < count_parameters(model) < 1.35e9, count_parameters(model)
    floor = decode_step_bytes(model, 128, 2048)
    assert round(floor.weights / 1e9, 2) == 2.54
    assert round((floor.cache_read + floor.cache_written) / 128 / 1e6, 1) == 27.5
    assert round(floor.total / 1e9, 2) == 6.06
    assert round(decode_step_bytes(model, 1, 2048).total / 1e9, 2) == 2.57
    assert paper_scale_mamba_config(n_layer=2).n_layer == 2


def test_mamba_initialisation():
    """A = -(1..N) per channel (S4D-Real); softplus(dt bias) log-uniform in [dt_min, dt_max]."""
    cfg = MambaConfig(d_model=64, n_layer=1, d_state=8, dt_min=0.001, dt_max=0.1)
    block = MambaBlock(cfg).ssm
    assert cfg.dt_rank == 4 and block.dt_rank == 4  # ceil(d_model / 16), as mamba_ssm
    A = -torch.exp(block.A_log)
    torch.testing.assert_close(A, -torch.arange(1, 9.0).repeat(128, 1))
    dt = F.softplus(block.dt_proj.bias.detach())
    assert dt.min() >= 0.001 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    log_dt = dt.log()
    mid = (math.log(0.001) + math.log(0.1)) / 2  # log-uniform: the mean of log dt is the midpoint
    assert abs(log_dt.mean().item() - mid) < 0.5
    assert torch.all(block.D == 1)


@pytest.mark.parametrize("d_model, n_layer", [(32, 2), (64, 4), (128, 6), (256, 8), (768, 24)])
def test_parameter_counts_within_10_percent(d_model, n_layer):
    mcfg = MambaConfig(d_model=d_model, n_layer=n_layer)
    tcfg = matched_transformer_config(mcfg)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        n_m, n_t = count_parameters(MambaLM(mcfg)), count_parameters(TransformerLM(tcfg))
    assert abs(n_m - n_t) / n_m < 0.10, (n_m, n_t)
    assert tcfg.n_layer == max(1, n_layer // 2)


def test_tied_head_counted_once():
    m, t = _models()
    for model in (m, t):
        total = sum(p.numel() for p in model.parameters())
        assert count_parameters(model) == total
        assert model.embedding.weight.data_ptr() == model.embedding.weight.data_ptr()
        logits = model(torch.tensor([[1, 2]]))
        assert logits.shape == (1, 2, 256)


def test_mamba_state_is_constant_size_kv_cache_grows():
    m, t = _models()
    assert cache_bytes(m.new_cache(2, 10)) == cache_bytes(m.new_cache(2, 1000))
    assert cache_bytes(t.new_cache(2, 1000)) == 100 * cache_bytes(t.new_cache(2, 10))


def test_paper_scale_pair_has_equal_size():
    """The Mamba paper's 1.4B shape (d_model 2048, 48 blocks, N = 16, expand 2; vocab 256
    here): the matched Transformer has 24 layers of 32 heads x 64 and the same parameter
    count within 0.1% (about 1.27B each with a 256-token vocabulary)."""
    mcfg = MambaConfig(d_model=2048, n_layer=48, d_state=16, expand=2)
    tcfg = matched_transformer_config(mcfg)
    assert (tcfg.n_layer, tcfg.n_head, tcfg.d_model // tcfg.n_head) == (24, 32, 64)
    with torch.device("meta"):
        n_m, n_t = count_parameters(MambaLM(mcfg)), count_parameters(TransformerLM(tcfg))
    assert 1.2e9 < n_m < 1.35e9 and abs(n_t - n_m) / n_m < 1e-3, (n_m, n_t)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_step_bytes_are_weights_and_cache(dtype):
    """The floor counts each parameter once and the cache a step touches: the Transformer
    reads the K, V of context + 1 positions (a cache of that many slots) and writes one;
    Mamba reads and writes its whole state, whatever the context. The same numbers from
    a model on the meta device."""
    from mambabook.models import decode_step_bytes

    mamba, transformer = (m.to(dtype) for m in _models())
    for model in (mamba, transformer):
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        for batch, context in ((1, 0), (3, 9)):
            floor = decode_step_bytes(model, batch, context)
            assert floor.weights == weights
            assert floor.total == floor.weights + floor.cache_read + floor.cache_written
            assert floor.seconds(1e9) == pytest.approx(floor.total / 1e9)
            if model is transformer:
                assert floor.cache_read == cache_bytes(model.new_cache(batch, context + 1))
                assert floor.cache_written * (context + 1) == floor.cache_read
            else:
                assert floor.cache_read == floor.cache_written == cache_bytes(
                    model.new_cache(batch))
            with torch.device("meta"):
                meta = type(model)(model.cfg).to(dtype)
            assert decode_step_bytes(meta, batch, context) == floor
    with pytest.raises(TypeError, match="model"):
        decode_step_bytes(torch.nn.Linear(2, 2), 1, 1)
    with pytest.raises(ValueError, match="context"):
        decode_step_bytes(mamba, 1, -1)


@needs_kernels
@pytest.mark.parametrize("positions", ["rotary", "learned"])
def test_transformer_decoding_kernel_equals_ref(device, positions):
    """path="kernel" (mambabook.kernels.decode_attention reads the filled part of the
    cache) against path="ref" (the whole cache under a mask) and the full forward: prefill
    then steps, float32, in Triton's interpreter on a CPU."""
    torch.manual_seed(0)
    cfg = TransformerConfig(d_model=16, n_layer=2, n_head=2, d_ff=32, positions=positions,
                            path="ref")
    model = TransformerLM(cfg).to(device).eval()
    tokens = torch.randint(0, 256, (2, 7), device=device)
    with torch.no_grad():
        full = model(tokens)
        runs = {}
        for path in ("ref", "kernel"):
            model.cfg.path = path
            assert model.layers[0].decodes_with_kernel(full) == (path == "kernel")
            logits, cache = model.prefill(tokens[:, :3], max_len=9)
            runs[path] = torch.cat([logits, torch.stack(
                [model.step(tokens[:, t], cache) for t in range(3, 7)], 1)], 1)
    torch.testing.assert_close(runs["kernel"], runs["ref"], **tol(torch.float32))
    torch.testing.assert_close(runs["kernel"], full, **tol(torch.float32))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_transformer_step_replays_in_a_cuda_graph(dtype):
    """The decoding step (path "auto": the kernel on CUDA) captured once in a CUDA graph and
    replayed while the cache fills: the logits of the full forward, token after token (a
    host sync inside the step would fail the capture)."""
    from mambabook.suites.generation import _capture

    cfg = TransformerConfig(d_model=256, n_layer=2, n_head=4, d_ff=512)
    model = TransformerLM(cfg).to("cuda", dtype).eval()
    tokens = torch.randint(0, 256, (3, 300), device="cuda")
    token = torch.zeros(3, dtype=torch.long, device="cuda")
    out = torch.empty(3, 256, device="cuda", dtype=dtype)
    with torch.no_grad():
        full = model(tokens)
        _, cache = model.prefill(tokens[:, :290], max_len=300)

        def step():
            out.copy_(model.step(token, cache))

        replay = _capture(step, torch.device("cuda"), cuda_graph=True)  # 3 warm-up steps
        cache.pos.fill_(290)
        for t in range(290, 300):
            token.copy_(tokens[:, t])
            replay()
            torch.testing.assert_close(out, full[:, t], **tol(dtype))


@pytest.mark.parametrize("kind", ["mamba", "transformer"])
def test_generate_shapes_determinism(kind, device):
    mamba, transformer = _models()
    model = (mamba if kind == "mamba" else transformer).float().to(device)
    prompt = torch.randint(0, 256, (3, 4), device=device)
    a = generate(model, prompt, 6, temperature=1.0, top_k=5, seed=1)
    b = generate(model, prompt, 6, temperature=1.0, top_k=5, seed=1)
    assert a.shape == (3, 10) and a.dtype == torch.long
    assert torch.equal(a, b) and torch.equal(a[:, :4], prompt)
    c = generate(model, prompt, 6, temperature=1.0, seed=2)
    assert not torch.equal(a, c)
    greedy = generate(model, prompt, 3, temperature=0)
    want = model(greedy[:, :-1]).argmax(-1)[:, -3:]  # each greedy token is the argmax so far
    assert torch.equal(greedy[:, -3:], want)
    assert model.training is False


def test_top_k_restricts_samples():
    mamba, _ = _models()
    prompt = torch.randint(0, 256, (16, 3))
    out = generate(mamba, prompt, 1, temperature=1.0, top_k=1, seed=0)
    assert torch.equal(out[:, -1], mamba(prompt)[:, -1].argmax(-1))


@pytest.mark.parametrize("kwargs, match", [
    (dict(prompt=torch.zeros(3, dtype=torch.long)), "prompt"),
    (dict(prompt=torch.zeros(1, 3)), "prompt"),
    (dict(n_tokens=0), "n_tokens"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_k=0), "top_k"),
])
def test_generate_bad_inputs(kwargs, match):
    mamba, _ = _models()
    args = dict(model=mamba, prompt=torch.zeros(1, 3, dtype=torch.long), n_tokens=2)
    args.update(kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        generate(**args)


def test_config_and_forward_bad_inputs():
    with pytest.raises(ValueError, match="d_model"):
        MambaConfig(d_model=0)
    with pytest.raises(ValueError, match="dt_min"):
        MambaConfig(dt_min=0.2, dt_max=0.1)
    with pytest.raises(ValueError, match="path"):
        MambaConfig(path="cuda")
    with pytest.raises(ValueError, match="d_model"):
        TransformerConfig(d_model=30, n_head=4)
    with pytest.raises(ValueError, match="positions"):
        TransformerConfig(positions="alibi")
    with pytest.raises(ValueError, match="path must be one of"):
        TransformerConfig(path="flash")
    mamba, transformer = _models("learned")
    with pytest.raises(ValueError, match="tokens"):
        mamba(torch.zeros(2, 3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="tokens"):
        transformer(torch.zeros(2, 3))
    with pytest.raises(ValueError, match="max_len"):
        transformer.prefill(torch.zeros(1, 5, dtype=torch.long), max_len=3)
    with pytest.raises(ValueError, match="max_seq_len"):
        transformer(torch.zeros(1, transformer.cfg.max_seq_len + 1, dtype=torch.long))


def test_generation_suite_helpers_run():
    """The suites' building blocks on tiny models: records with positive times, ratios."""
    from mambabook.suites.generation import decode_costs, equal_size_models, generation_throughput

    models = equal_size_models(32, 2, "cpu")
    recs = decode_costs(models, [8, 32], [1], "cpu", min_run_time=0.01)
    assert len(recs) == 4 and all(r.status == "ok" and r.ms > 0 for r in recs)
    kv = {r.size["context"]: r.extra["cache_bytes"] for r in recs
          if r.provider == "transformer" and r.size["batch"] == 1}
    ss = {r.size["context"]: r.extra["cache_bytes"] for r in recs
          if r.provider == "mamba" and r.size["batch"] == 1}
    assert kv[32] > kv[8] and ss[32] == ss[8]
    thr = generation_throughput(models, 2, 8, 3, "cpu", min_run_time=0.01)
    assert {r.provider for r in thr} == {"mamba", "transformer"}
    m = next(r for r in thr if r.provider == "mamba")
    t = next(r for r in thr if r.provider == "transformer")
    assert m.extra["mamba_over_transformer_tokens_per_s"] == pytest.approx(
        m.extra["tokens_per_s"] / t.extra["tokens_per_s"])


@needs_kernels
def test_mamba_with_kernels_equals_refs(device):
    """The model's kernel path (path="kernel": the layout it hands to mambabook.kernels,
    forward with the last state, one decoding step, gradients) agrees with the reference
    path (on a CPU the kernels run in Triton's interpreter)."""
    torch.manual_seed(0)
    cfg = MambaConfig(d_model=16, n_layer=1, d_state=4, path="ref")
    model = MambaLM(cfg).to(device)
    tokens = torch.randint(0, 256, (1, 5), device=device)
    ref_logits = model(tokens)
    ref_logits.square().mean().backward()
    ref_grads = [p.grad.clone() for p in model.parameters()]
    with torch.no_grad():
        ref_steps = step_logits(model, tokens)
    model.zero_grad()
    model.cfg.path = "kernel"  # the same weights, the kernel path: conv, add + norm
    for layer in model.layers:  # and the scan
        layer.mixer.ssm.path = "kernel"
    logits = model(tokens)
    logits.square().mean().backward()
    torch.testing.assert_close(logits, ref_logits, **tol(torch.float32))
    for p, g in zip(model.parameters(), ref_grads):
        torch.testing.assert_close(p.grad, g, **tol(torch.float32))
    with torch.no_grad():
        torch.testing.assert_close(step_logits(model, tokens), ref_steps, **tol(torch.float32))
        _, cache = model.prefill(tokens[:, :3], max_len=5)
        nxt = model.step(tokens[:, 3], cache)
    torch.testing.assert_close(nxt, ref_steps[:, 3], **tol(torch.float32))


def test_s4d_blocks_train_but_do_not_decode():
    """ssm="s4d": the same block with chapter 5's time-invariant SSM; causal, no step."""
    model = MambaLM(MambaConfig(d_model=16, n_layer=2, d_state=4, ssm="s4d")).eval()
    x = torch.randint(0, 256, (2, 9))
    x2 = x.clone()
    x2[:, 6:] = (x2[:, 6:] + 1) % 256
    with torch.no_grad():
        torch.testing.assert_close(model(x2)[:, :6], model(x)[:, :6])
    with pytest.raises(ValueError, match="ssm='s6'"):
        model.new_cache(1)
    with pytest.raises(ValueError, match="ssm must be one of"):
        MambaConfig(ssm="s5")


@pytest.mark.parametrize("kind", ["mamba", "transformer"])
def test_benchmark_generation_path_equals_generate(kind):
    """The loop generation_throughput times (prefill into a preallocated cache, then steps
    on fixed buffers; CUDA-graph replays on a GPU) ends on the token generate() picks."""
    from mambabook.suites.generation import equal_size_models, generation_fn

    model = equal_size_models(32, 2, "cpu")[kind]
    gb = generation_fn(model, batch=3, prompt_len=5, n_new=4)
    gb.run()
    want = generate(model, gb.prompt, 4, temperature=0)
    assert torch.equal(gb.token, want[:, -1])
    if kind == "transformer":  # decode-only timing restarts after the prompt, every call
        for _ in range(2):
            gb.decode()
            assert int(gb.cache.pos) == 5 + 4 - 1


# ----------------------------------------------------------------------------- Mamba-2
def _mamba2(**kw):
    from mambabook.models import Mamba2Block, Mamba2Config

    cfg = Mamba2Config(d_model=16, d_state=6, headdim=8, ngroups=2, chunk_size=4, **kw)
    return Mamba2Block(cfg).double()


@pytest.mark.parametrize("L", [1, 3, 11])
def test_mamba2_step_by_step_equals_parallel_forward(L):
    """Decoding token by token from an empty state == the chunked forward, and the state
    the forward returns == the state after the last step."""
    block = _mamba2(path="ref")
    hidden = torch.randn(2, L, 16, dtype=torch.float64)
    y, st_par = block(hidden, return_state=True)
    st = block.new_state(2)
    steps = [block.step(hidden[:, t], st) for t in range(L)]
    torch.testing.assert_close(torch.stack(steps, 1), y, **tol(torch.float64))
    torch.testing.assert_close(st.ssm, st_par.ssm, **tol(torch.float64))
    torch.testing.assert_close(st.conv, st_par.conv, **tol(torch.float64))


def test_mamba2_prefill_then_decode_continues_the_sequence():
    block = _mamba2(path="ref")
    hidden = torch.randn(1, 9, 16, dtype=torch.float64)
    y_full = block(hidden)
    _, st = block(hidden[:, :6], return_state=True)
    tail = [block.step(hidden[:, t], st) for t in range(6, 9)]
    torch.testing.assert_close(torch.stack(tail, 1), y_full[:, 6:], **tol(torch.float64))


@needs_kernels
def test_mamba2_kernel_path_equals_ref_path():
    block = _mamba2(path="ref").float()
    hidden = torch.randn(2, 10, 16)
    y_ref = block(hidden)
    block.cfg.path = "kernel"
    hidden_k = hidden.clone().requires_grad_()
    y_k = block(hidden_k)
    torch.testing.assert_close(y_k, y_ref, **tol(torch.float32))
    y_k.sum().backward()
    assert torch.isfinite(hidden_k.grad).all()


def test_mamba2_config_checks():
    from mambabook.models import Mamba2Config

    with pytest.raises(ValueError, match="headdim must divide d_inner"):
        Mamba2Config(d_model=16, headdim=5)
    with pytest.raises(ValueError, match="path must be one of"):
        Mamba2Config(path="fast")
