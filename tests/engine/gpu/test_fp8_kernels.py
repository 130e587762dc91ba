"""The FP8 kernels (MoE experts, dense linear) and split-KV decode attention on CUDA, against the
reference on dequantized weights; CUDA-graph replay against eager; the FP8 engine's greedy
tokens against the CPU reference path.

Inputs are random (never zeros) and every output buffer the kernels take from the caching
allocator is poisoned with NaN first (`poisoned_pool`), so an element a kernel fails to write
shows up. Tolerances, as relative error of the whole output (||got - ref|| / ||ref||): fp32
activations 1e-5 (exact fp32 products, sums in another order); bf16 activations 2e-2 (8
significant bits; the kernels round the SwiGLU activations to bf16 as the reference does, but
in other places).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from m2agent.engine import LLM, SamplingParams
from m2agent.engine.kernels import reference
from m2agent.engine.kernels.reference import ExpertWeights

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
BLOCK = (128, 128)


def poisoned_pool(megabytes: int = 512) -> None:
    """Fill free cached memory with NaN so the next allocations start poisoned."""
    chunks = [
        torch.full((size * 2**18,), float("nan"), device="cuda")
        for size in (megabytes // 2, megabytes // 4, 16, 4, 1)
    ]
    del chunks


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    assert got.shape == expected.shape
    assert torch.isfinite(got).all(), "unwritten (NaN-poisoned) or non-finite output"
    return (
        (got.float() - expected.float()).norm() / expected.float().norm().clamp(min=1e-30)
    ).item()


def tolerance(dtype: torch.dtype) -> float:
    return 1e-5 if dtype == torch.float32 else 2e-2


_EXPERTS: dict[tuple[int, int, int], ExpertWeights] = {}


def fp8_experts(experts: int, hidden: int, inter: int, gen: torch.Generator) -> ExpertWeights:
    """Random FP8 experts (cached per shape: the full-size set takes seconds to quantize)."""
    key = (experts, hidden, inter)
    if key not in _EXPERTS:
        parts = []
        for rows, cols in ((2 * inter, hidden), (hidden, inter)):
            weight = torch.empty(experts, rows, cols, dtype=reference.FP8_DTYPE, device="cuda")
            scale = torch.empty(experts, -(-rows // 128), -(-cols // 128), device="cuda")
            for e in range(experts):
                dense = torch.randn(rows, cols, generator=gen, device="cuda") * 0.05
                weight[e], scale[e] = reference.quantize_fp8_block(dense, BLOCK)
            parts += [weight, scale]
        _EXPERTS[key] = ExpertWeights(parts[0], parts[2], parts[1], parts[3], BLOCK)
    return _EXPERTS[key]


def routed(tokens: int, hidden: int, experts: int, top_k: int, dtype: torch.dtype, seed: int):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=gen, device="cuda").to(dtype)
    gate = torch.randn(experts, hidden, generator=gen, device="cuda")
    bias = torch.randn(experts, generator=gen, device="cuda")
    weights, ids = reference.route(x, gate, bias, top_k)
    return x, weights, ids


def moe_oracle(x, weights, ids, experts: ExpertWeights) -> torch.Tensor:
    """The reference in float64, dequantizing only the experts the tokens use."""
    assert experts.w13_scale is not None and experts.w2_scale is not None
    out = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    for e in torch.unique(ids).tolist():
        token, slot = torch.where(ids == e)
        w13 = reference.dequantize_fp8_block(
            experts.w13[e], experts.w13_scale[e], BLOCK, torch.float64
        )
        w2 = reference.dequantize_fp8_block(
            experts.w2[e], experts.w2_scale[e], BLOCK, torch.float64
        )
        gate, up = (x[token].double() @ w13.T).chunk(2, dim=-1)
        y = (torch.nn.functional.silu(gate) * up) @ w2.T
        out.index_add_(0, token, y * weights[token, slot, None].double())
    return out


SHAPES = [(3072, 1536, 256, 8), (384, 256, 16, 4), (200, 128, 7, 3)]


def captured_graph(step):
    """`step` run once on a side stream (kernels compiled outside capture), then captured:
    (the graph, the outputs its replays write)."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    return graph, captured


def _split_everywhere():
    """Per-pair MMA tiles that split the down projection's reduction as far as it goes (its
    pieces are left for the consumer to sum)."""
    from m2agent.engine.kernels import fp8_moe

    tiles = fp8_moe.KernelTiles(32, 64, 4, 3, programs_per_sm=64)
    return fp8_moe.TileConfig(False, 16, tiles, tiles)


def _gemv_configs():
    """Per-pair GEMV tiles: steps of two scale blocks; and one that splits both reductions
    (the down kernel then forms SiLU(gate)*up from the gate/up pieces)."""
    from m2agent.engine.kernels import fp8_moe

    kt = fp8_moe.KernelTiles
    return [
        fp8_moe.TileConfig(False, 16, kt(32, 256, 4, 2), kt(64, 256, 4, 2), gemv=True),
        fp8_moe.TileConfig(False, 16, kt(16, 128, 4, 2, 64), kt(32, 64, 2, 1, 64), gemv=True),
    ]


SPLIT_EVERYWHERE = _split_everywhere() if torch.cuda.is_available() else None
GEMV_CONFIGS = _gemv_configs() if torch.cuda.is_available() else []


@pytest.mark.parametrize("tokens", [0, 1, 3, 17, 64, 300])
@pytest.mark.parametrize(("hidden", "inter", "num_experts", "top_k"), SHAPES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fp8_moe_matches_reference_on_both_paths(
    tokens: int, hidden: int, inter: int, num_experts: int, top_k: int, dtype: torch.dtype
) -> None:
    from m2agent.engine.kernels import fp8_moe

    if hidden == 3072 and (tokens > 64 or dtype == torch.float32):
        pytest.skip("full-size experts: bf16 up to 64 tokens (each tile config compiles anew)")
    gen = torch.Generator(device="cuda").manual_seed(tokens + hidden)
    experts = fp8_experts(num_experts, hidden, inter, gen)
    x, weights, ids = routed(tokens, hidden, num_experts, top_k, dtype, seed=tokens)
    expected = moe_oracle(x, weights, ids, experts)
    configs = [
        fp8_moe.TileConfig.uniform(grouped, block_m, block_n, 128, 4, 3)
        for grouped, block_m, block_n in [(False, 16, 64), (False, 16, 32), (True, 16, 64)]
    ]
    configs += [SPLIT_EVERYWHERE, fp8_moe.TileConfig.uniform(True, 64, 128, 128, 4, 3)]
    configs += GEMV_CONFIGS
    for tiles in configs:
        poisoned_pool()
        got = fp8_moe.moe_experts(x, weights, ids, experts, tiles=tiles)
        assert got.dtype == dtype
        if tokens:
            assert relative_error(got, expected) < tolerance(dtype), tiles
        else:
            assert got.shape == (0, hidden)


@pytest.mark.parametrize("grouped", [False, True])
def test_fp8_moe_expert_map_skips_unowned_experts(grouped: bool) -> None:
    from m2agent.engine.kernels import fp8_moe

    num_experts, hidden, inter, top_k = 16, 384, 256, 4
    gen = torch.Generator(device="cuda").manual_seed(7)
    experts = fp8_experts(num_experts, hidden, inter, gen)
    x, weights, ids = routed(33, hidden, num_experts, top_k, torch.float32, seed=7)
    owned = torch.arange(num_experts, device="cuda") % 2 == 0  # this rank owns the even ones
    expert_map = torch.where(owned, torch.arange(num_experts, device="cuda"), -1)
    poisoned_pool()
    tiles = fp8_moe.TileConfig.uniform(grouped, 16, 64, 128, 4, 3)
    got = fp8_moe.moe_experts(x, weights, ids, experts, expert_map=expert_map, tiles=tiles)
    expected = moe_oracle(x, weights * owned[ids], ids, experts)
    assert relative_error(got, expected) < 1e-5


@pytest.mark.parametrize("gemv", [False, True])
@pytest.mark.parametrize("rows", [0, 1, 17, 100])
@pytest.mark.parametrize(("n", "k"), [(8192, 3072), (3072, 6144), (200, 300)])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fp8_linear_matches_reference(
    rows: int, n: int, k: int, dtype: torch.dtype, gemv: bool
) -> None:
    from m2agent.engine.kernels.fp8_linear import LinearTiles, fp8_linear

    gen = torch.Generator(device="cuda").manual_seed(rows + n + k)
    weight, scale = reference.quantize_fp8_block(
        torch.randn(n, k, generator=gen, device="cuda") * 0.05, BLOCK
    )
    x = torch.randn(rows, k, generator=gen, device="cuda").to(dtype)
    expected = x.double() @ reference.dequantize_fp8_block(weight, scale, BLOCK, torch.float64).T
    poisoned_pool()
    tiles = LinearTiles(1, 32, 256, 4, 2, 16, gemv=True) if gemv else None  # (split: o_proj)
    got = fp8_linear(x, weight, scale, BLOCK, tiles)
    assert got.dtype == dtype and got.shape == (rows, n)
    if rows:
        assert relative_error(got, expected) < tolerance(dtype)


@pytest.mark.parametrize("rows", [1, 17])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_split_k_pieces_are_summed_by_their_consumers(rows: int, dtype: torch.dtype) -> None:
    """The producers leave split-K pieces (`PartialSums`); the fused add + RMSNorm and the
    QK-norm kernel sum them as they read. Against the same consumers on the summed tensor."""
    from m2agent.engine.kernels import fp8_moe
    from m2agent.engine.kernels.fp8_linear import LinearTiles, fp8_linear_parts
    from m2agent.engine.kernels.fused_small_ops import add_rms_norm, qk_norm_rope_store

    gen = torch.Generator(device="cuda").manual_seed(rows)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device="cuda").to(dtype)

    split_linear = LinearTiles(16, 64, 128, 4, 3, programs_per_sm=64)
    hidden, heads, kv_heads, head_dim = 384, 6, 2, 128
    weight, scale = reference.quantize_fp8_block(
        torch.randn(hidden, 1024, generator=gen, device="cuda") * 0.05, BLOCK
    )
    experts = fp8_experts(16, hidden, 256, gen)
    x, weights, ids = routed(rows, hidden, 16, 4, dtype, seed=rows)
    producers = [
        fp8_linear_parts(randn(rows, 1024), weight, scale, BLOCK, split_linear),
        fp8_moe.moe_experts_parts(x, weights, ids, experts, tiles=SPLIT_EVERYWHERE),
    ]
    norm_weight = randn(hidden)
    for parts in producers:
        assert parts.parts.shape[0] > 1  # really split
        residual = randn(rows, hidden)
        expected = reference.add_rms_norm(residual.clone(), parts.materialize(), norm_weight, 1e-6)
        for arrivals in (None, torch.zeros(8, dtype=torch.int32, device="cuda")):
            poisoned_pool()
            got = add_rms_norm(residual.clone(), parts, norm_weight, 1e-6, arrivals)
            for g, e in zip(got, expected, strict=True):
                assert relative_error(g, e) < tolerance(dtype) / 4

    widths = [heads * head_dim, kv_heads * head_dim, kv_heads * head_dim]
    qkv_weight, qkv_scale = reference.quantize_fp8_block(
        torch.randn(sum(widths), 1024, generator=gen, device="cuda") * 0.05, BLOCK
    )
    parts = fp8_linear_parts(randn(rows, 1024), qkv_weight, qkv_scale, BLOCK, split_linear)
    assert parts.parts.shape[0] > 1
    starts = [0, widths[0], widths[0] + widths[1]]
    pieces = [parts.columns(a, w) for a, w in zip(starts, widths, strict=True)]
    dense = [p.materialize() for p in pieces]
    q_weight, k_weight = randn(widths[0]), randn(widths[1])
    positions = torch.randint(0, 100_000, (rows,), generator=gen, device="cuda")
    cos, sin = reference.rope_cos_sin(positions, 64, 5e6, dtype)
    slots = torch.randperm(640, generator=gen, device="cuda")[:rows]
    caches = [randn(40, 16, kv_heads, head_dim) for _ in range(2)]
    ref_caches = [c.clone() for c in caches]
    expected = reference.qk_norm_rope_store(
        *dense, q_weight, k_weight, cos, sin, *ref_caches, slots, 1e-6, head_dim
    )
    poisoned_pool()
    got = qk_norm_rope_store(*pieces, q_weight, k_weight, cos, sin, *caches, slots, 1e-6, head_dim)
    assert relative_error(got, expected) < tolerance(dtype) / 4
    for cache, ref in zip(caches, ref_caches, strict=True):
        assert relative_error(cache, ref) < tolerance(dtype) / 4


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_split_kv_attention_matches_reference_at_long_context(dtype: torch.dtype) -> None:
    from m2agent.engine.kernels.paged_attention_triton import paged_decode_attention

    heads, kv_heads, head_dim, page = 48, 8, 128, 16
    gen = torch.Generator(device="cuda").manual_seed(3)
    lengths = [1, 63, 64, 65, 5000, 20011]
    blocks = sum(-(-n // page) for n in lengths) + 3
    k_cache = torch.randn(blocks, page, kv_heads, head_dim, generator=gen, device="cuda").to(dtype)
    v_cache = torch.randn(blocks, page, kv_heads, head_dim, generator=gen, device="cuda").to(dtype)
    order = torch.randperm(blocks, generator=torch.Generator().manual_seed(0)).tolist()
    tables = []
    for n in lengths:
        tables.append([order.pop() for _ in range(-(-n // page))])
    width = max(len(t) for t in tables)
    block_tables = torch.tensor(
        [t + [0] * (width - len(t)) for t in tables], dtype=torch.int32, device="cuda"
    )
    seq_lens = torch.tensor(lengths, dtype=torch.int32, device="cuda")
    q = torch.randn(len(lengths), heads, head_dim, generator=gen, device="cuda").to(dtype)
    expected = reference.paged_attention(
        q.double(), k_cache.double(), v_cache.double(), [1] * len(lengths), lengths, tables,
        head_dim**-0.5,
    )  # fmt: skip
    for splits in (1, 2, 7, 32):
        poisoned_pool()
        got = paged_decode_attention(
            q, k_cache, v_cache, block_tables, seq_lens, head_dim**-0.5, splits=splits
        )
        assert relative_error(got, expected) < tolerance(dtype), splits


def test_graph_replay_equals_eager_for_the_new_kernels() -> None:
    from m2agent.engine.kernels import fp8_moe
    from m2agent.engine.kernels.fp8_linear import fp8_linear
    from m2agent.engine.kernels.fused_small_ops import add_rms_norm
    from m2agent.engine.kernels.paged_attention_triton import paged_decode_attention

    gen = torch.Generator(device="cuda").manual_seed(11)
    experts = fp8_experts(16, 384, 256, gen)
    weight, scale = reference.quantize_fp8_block(
        torch.randn(512, 384, generator=gen, device="cuda") * 0.05, BLOCK
    )
    k_cache = torch.randn(64, 16, 2, 64, generator=gen, device="cuda").bfloat16()
    v_cache = torch.randn(64, 16, 2, 64, generator=gen, device="cuda").bfloat16()
    table = torch.randperm(64, device="cuda", dtype=torch.int32)[None].repeat(4, 1)
    lens = torch.tensor([1, 100, 700, 1024], dtype=torch.int32, device="cuda")
    static = {"x": torch.empty(4, 384, device="cuda", dtype=torch.bfloat16)}
    static["q"] = torch.empty(4, 8, 64, device="cuda", dtype=torch.bfloat16)
    gate = torch.randn(16, 384, generator=gen, device="cuda")
    bias = torch.randn(16, generator=gen, device="cuda")

    norm_weight = torch.randn(384, generator=gen, device="cuda").bfloat16()

    def step() -> list[torch.Tensor]:
        x = static["x"]
        weights, ids = reference.route(x, gate, bias, 4)
        outs = [fp8_linear(x, weight, scale, BLOCK)]
        for grouped in (False, True):
            tiles = fp8_moe.TileConfig.uniform(grouped, 16, 64, 128, 4, 3)
            outs.append(fp8_moe.moe_experts(x, weights, ids, experts, tiles=tiles))
        # Split-K pieces summed by their consumer (fixed order: replay == eager, bit for bit).
        parts = fp8_moe.moe_experts_parts(x, weights, ids, experts, tiles=SPLIT_EVERYWHERE)
        outs += add_rms_norm(x.clone(), parts, norm_weight, 1e-6)
        outs.append(paged_decode_attention(static["q"], k_cache, v_cache, table, lens, 0.125))
        return outs

    static["x"].copy_(torch.randn(4, 384, generator=gen, device="cuda"))
    static["q"].copy_(torch.randn(4, 8, 64, generator=gen, device="cuda"))
    graph, captured = captured_graph(step)
    for seed in (1, 2):
        new = torch.Generator(device="cuda").manual_seed(seed)
        static["x"].copy_(torch.randn(4, 384, generator=new, device="cuda"))
        static["q"].copy_(torch.randn(4, 8, 64, generator=new, device="cuda"))
        graph.replay()
        eager = step()
        for replayed, direct in zip(captured, eager, strict=True):
            assert torch.equal(replayed, direct)


def test_fp8_engine_greedy_64_tokens_match_cpu_reference(tiny_fp8_checkpoint: Path) -> None:
    """The whole FP8 model through the CUDA kernels (graphs included) against the CPU path,
    which dequantizes; fp32 activations, so greedy tokens must agree exactly."""
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    prompts = ["]~!b[]~b]user\nhello[e~[\n]~b]ai\n<think>\n", "def add(a, b):\n    return"]
    gpu_llm = LLM(tiny_fp8_checkpoint, device="cuda", dtype="float32")
    resident = {p.dtype for p in gpu_llm.model.parameters()}
    assert torch.float8_e4m3fn in resident  # stored FP8: no dequantized copy replaces it
    gpu = gpu_llm.generate(prompts, params)
    cpu = LLM(tiny_fp8_checkpoint, device="cpu", dtype="float32").generate(prompts, params)
    assert [o.token_ids for o in gpu] == [o.token_ids for o in cpu]


def test_fp8_engine_one_sequence_with_pending_norms_matches_cpu_reference(
    tmp_path: Path,
) -> None:
    """One sequence on a model wide enough for sliced norms (so each decode step leaves its
    norms to the q/k/v GEMV and the router, `PendingNorm`), graphs included, against the CPU
    path; fp32 activations, so greedy tokens must agree exactly."""
    from dataclasses import replace

    from m2agent.engine.models.tiny import FP8_SPEC, write_tiny_checkpoint

    path = write_tiny_checkpoint(tmp_path / "wide", replace(FP8_SPEC, hidden=512), fp8=True)
    params = SamplingParams(temperature=0, max_tokens=64, ignore_eos=True)
    prompt = ["def add(a, b):\n    return"]
    gpu_llm = LLM(path, device="cuda", dtype="float32")
    layer = gpu_llm.model.model.layers[0]
    row = torch.empty(1, 512, device="cuda")
    assert layer.self_attn.takes_pending_norm(row)
    assert layer.block_sparse_moe.takes_pending_norm(row)
    gpu = gpu_llm.generate(prompt, params)
    cpu = LLM(path, device="cpu", dtype="float32").generate(prompt, params)
    assert gpu[0].token_ids == cpu[0].token_ids


@pytest.mark.parametrize("rows", [0, 1, 7, 300])
@pytest.mark.parametrize("width", [3072, 200])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("with_delta", [True, False])
@pytest.mark.parametrize("sliced", [True, False])
def test_fused_add_rms_norm_matches_reference(
    rows: int, width: int, dtype: torch.dtype, with_delta: bool, sliced: bool
) -> None:
    """`sliced`: with the norm's arrival counters, up to 8 rows are cut into column slices
    over several programs (the last to finish normalises); the counters end at zero."""
    from m2agent.engine.kernels.fused_small_ops import add_rms_norm

    gen = torch.Generator(device="cuda").manual_seed(rows + width)
    x = torch.randn(rows, width, generator=gen, device="cuda").to(dtype)
    delta = torch.randn(rows, width, generator=gen, device="cuda").to(dtype) if with_delta else None
    weight = torch.randn(width, generator=gen, device="cuda").to(dtype)
    expected_x, expected = reference.add_rms_norm(x.clone(), delta, weight, 1e-6)
    arrivals = torch.zeros(8, dtype=torch.int32, device="cuda") if sliced else None
    poisoned_pool()
    got_x, got = add_rms_norm(x.clone(), delta, weight, 1e-6, arrivals)
    if arrivals is not None:
        assert not arrivals.any()
    if rows:
        assert relative_error(got_x, expected_x) < tolerance(dtype) / 4
        assert relative_error(got, expected) < tolerance(dtype) / 4


@pytest.mark.parametrize("tokens", [0, 1, 5, 130])
@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim", "rotary"), [(48, 8, 128, 64), (6, 2, 32, 16), (2, 1, 128, 64)]
)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_qk_norm_rope_store_matches_reference(
    tokens: int,
    heads: int,
    kv_heads: int,
    head_dim: int,
    rotary: int,
    dtype: torch.dtype,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from m2agent.engine.kernels import fused_small_ops
    from m2agent.engine.kernels.fused_small_ops import qk_norm_rope_store

    gen = torch.Generator(device="cuda").manual_seed(tokens + heads)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device="cuda").to(dtype)

    qkv = randn(tokens, (heads + 2 * kv_heads) * head_dim)  # strided views, as a fused q/k/v
    q, k, v = qkv.split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dim=1)
    q_weight, k_weight = randn(heads * head_dim), randn(kv_heads * head_dim)
    positions = torch.randint(0, 100_000, (tokens,), generator=gen, device="cuda")
    cos, sin = reference.rope_cos_sin(positions, rotary, 5e6, dtype)
    blocks, page = 40, 16
    slots = torch.randperm(blocks * page, generator=gen, device="cuda")[:tokens]
    caches = [randn(blocks, page, kv_heads, head_dim) for _ in range(2)]
    ref_caches = [c.clone() for c in caches]
    expected = reference.qk_norm_rope_store(
        q.clone(), k, v, q_weight, k_weight, cos, sin, *ref_caches, slots, 1e-6, head_dim
    )
    got = qk_norm_rope_store(
        q.clone(), k, v, q_weight, k_weight, cos, sin, *caches, slots, 1e-6, head_dim
    )
    if tokens:
        assert relative_error(got, expected) < tolerance(dtype) / 4
    for cache, ref in zip(caches, ref_caches, strict=True):
        assert relative_error(cache, ref) < tolerance(dtype) / 4
    # A few tokens run a program per k/v head, each summing the whole row's squares itself:
    # the same bits as one program per token.
    single_caches = [c.clone() for c in ref_caches]
    monkeypatch.setattr(fused_small_ops, "QK_NORM_PARTS_MAX_TOKENS", 0)
    single = qk_norm_rope_store(
        q.clone(), k, v, q_weight, k_weight, cos, sin, *single_caches, slots, 1e-6, head_dim
    )
    assert torch.equal(single, got)
    for cache, one in zip(caches, single_caches, strict=True):
        assert torch.equal(cache, one)


@pytest.mark.parametrize("tokens", [0, 1, 3, 9, 16, 17, 1000])
@pytest.mark.parametrize(("experts", "top_k"), [(256, 8), (7, 3), (16, 4)])
def test_fused_router_matches_reference(tokens: int, experts: int, top_k: int) -> None:
    """Up to 16 tokens the one-launch router (its own fp32 logits, summed in another order
    than cuBLAS: weights within 1e-5 relative, the picked experts identical on this data);
    more tokens take cuBLAS logits and the top-k kernel. Run twice on the same counters: they
    are left at zero and the result repeats bit for bit."""
    from m2agent.engine.kernels.fused_small_ops import new_router_arrivals, route

    gen = torch.Generator(device="cuda").manual_seed(tokens + experts)
    x = torch.randn(tokens, 512, generator=gen, device="cuda").bfloat16()
    gate = torch.randn(experts, 512, generator=gen, device="cuda")
    bias = torch.randn(experts, generator=gen, device="cuda") * 0.1
    arrivals = new_router_arrivals("cuda")
    expected_w, expected_ids = reference.route(x, gate, bias, top_k)
    poisoned_pool()
    got_w, got_ids = route(x, gate, bias, top_k, arrivals)
    again_w, again_ids = route(x, gate, bias, top_k, arrivals)
    assert torch.equal(got_w, again_w) and torch.equal(got_ids, again_ids)
    assert not arrivals.any()
    assert got_ids.shape == (tokens, top_k) and got_w.dtype == torch.float32
    assert got_ids.dtype == torch.int64
    expected_ids, order = expected_ids.sort(dim=1)
    got_ids, got_order = got_ids.sort(dim=1)
    assert torch.equal(got_ids, expected_ids)
    torch.testing.assert_close(
        got_w.gather(1, got_order), expected_w.gather(1, order), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("tokens", [1, 3, 17, 1000])
@pytest.mark.parametrize(
    ("experts", "top_k"), [(256, 8), (7, 3), (16, 4), (64, 6), (16, 1), (2, 2)]
)
def test_router_top_k_ways_agree(
    tokens: int, experts: int, top_k: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The router's top-k as one bitonic top-k (the default) and as TOP_K rounds of a max:
    the same picks in the same order and the same weights, bit for bit, exact ties included
    (two experts with equal scores and biases: the lower id first), through the one-launch
    router (up to 16 tokens) and the top-k kernel after cuBLAS logits."""
    from m2agent.engine.kernels import fused_small_ops

    gen = torch.Generator(device="cuda").manual_seed(tokens * 7 + experts)
    x = torch.randn(tokens, 256, generator=gen, device="cuda").bfloat16()
    gate = torch.randn(experts, 256, generator=gen, device="cuda")
    bias = torch.randn(experts, generator=gen, device="cuda") * 0.1
    gate[experts - 1], bias[experts - 1] = gate[0], bias[0]  # an exact tie in every row
    results = []
    for sort in (True, False):
        monkeypatch.setattr(fused_small_ops, "ROUTER_SORT", sort)
        poisoned_pool()
        results.append(fused_small_ops.route(x, gate, bias, top_k))
    (sorted_w, sorted_ids), (select_w, select_ids) = results
    assert torch.equal(sorted_ids, select_ids) and torch.equal(sorted_w, select_w)
    low, high = sorted_ids == 0, sorted_ids == experts - 1
    both = low.any(1) & high.any(1)
    assert bool((~both | (low.int().argmax(1) < high.int().argmax(1))).all())


def _decode_chain(seed: int, defer: bool = False, tokens: int | None = None):
    """The kernels of one FP8 decode layer at small shapes, in the step's order (norm, q/k/v,
    QK-norm + RoPE + KV write, split-KV attention + combine, o_proj, norm, router, MoE GEMVs,
    norm): returns the inputs it reads (refill them between runs) and the step. With
    `defer` (one token) the first two norms are left to their consumers (`PendingNorm`: the
    q/k/v GEMV and the router finish them)."""
    from m2agent.engine.kernels import fp8_moe
    from m2agent.engine.kernels.fp8_linear import LinearTiles, fp8_linear_parts
    from m2agent.engine.kernels.fused_small_ops import (
        add_rms_norm,
        new_router_arrivals,
        qk_norm_rope_store,
        route,
        route_normed,
    )
    from m2agent.engine.kernels.paged_attention_triton import paged_decode_attention
    from m2agent.engine.kernels.partial_sums import PendingNorm

    gen = torch.Generator(device="cuda").manual_seed(seed)
    hidden, heads, kv_heads, head_dim = 512, 4, 2, 128
    tokens = tokens or (1 if defer else 2)

    def randn(*shape: int, scale: float = 1.0) -> torch.Tensor:
        return torch.randn(shape, generator=gen, device="cuda") * scale

    def fp8(rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        return reference.quantize_fp8_block(randn(rows, cols, scale=0.05), BLOCK)

    qkv_w = fp8((heads + 2 * kv_heads) * head_dim, hidden)
    o_w = fp8(hidden, heads * head_dim)
    # Its own generator: `fp8_experts` caches per shape, so drawing it from `gen` would
    # shift every draw after it between the first chain built in a process and the next.
    experts = fp8_experts(16, hidden, 256, torch.Generator(device="cuda").manual_seed(seed))
    gate, bias = randn(16, hidden), randn(16, scale=0.1)
    norms = [randn(hidden).bfloat16() for _ in range(3)]
    q_norm, k_norm = randn(heads * head_dim).bfloat16(), randn(kv_heads * head_dim).bfloat16()
    caches = [randn(32, 16, kv_heads, head_dim).bfloat16() for _ in range(2)]
    table = torch.randperm(32, generator=gen, device="cuda", dtype=torch.int32)
    table = table[None].repeat(tokens, 1)
    lens = torch.tensor([300, 17], dtype=torch.int32, device="cuda")
    positions = torch.tensor([299, 16], device="cuda")
    cos, sin = reference.rope_cos_sin(positions, 64, 5e6, torch.bfloat16)
    slots = (table[:, 0].long() * 16 + (lens.long() - 1) % 16).contiguous()
    arrivals = [torch.zeros(8, dtype=torch.int32, device="cuda") for _ in range(3)]
    router_arrivals = new_router_arrivals("cuda")
    gemv = LinearTiles(1, 32, 256, 4, 2, 4, gemv=True)
    moe_tiles = fp8_moe.pick_tiles(tokens, 128)
    inputs = {"x": randn(tokens, hidden).bfloat16()}

    def step() -> list[torch.Tensor]:
        x, h = add_rms_norm(inputs["x"].clone(), None, norms[0], 1e-6, arrivals[0], defer)
        assert isinstance(h, PendingNorm) == defer
        qkv = fp8_linear_parts(h, *qkv_w, BLOCK, gemv)
        q, k, v = (qkv.columns(a, w) for a, w in ((0, 512), (512, 256), (768, 256)))
        q = qk_norm_rope_store(q, k, v, q_norm, k_norm, cos, sin, *caches, slots, 1e-6, head_dim)
        attn = paged_decode_attention(q, *caches, table, lens, head_dim**-0.5)
        o = fp8_linear_parts(attn.reshape(tokens, -1), *o_w, BLOCK, gemv)
        x, h = add_rms_norm(x, o, norms[1], 1e-6, arrivals[1], defer)
        if isinstance(h, PendingNorm):
            weights, ids, h = route_normed(h, gate, bias, 4, router_arrivals)
        else:
            weights, ids = route(h, gate, bias, 4, router_arrivals)
        moe = fp8_moe.moe_experts_parts(h, weights, ids, experts, tiles=moe_tiles)
        x, h = add_rms_norm(x, moe, norms[2], 1e-6, arrivals[2])
        return [q, attn, weights, ids, x, h, *(c.clone() for c in caches)]

    return inputs, step


def test_pending_norms_match_finished_norms() -> None:
    """One token through a decode layer with the norms left to their consumers (the q/k/v
    GEMV, the router) against the same layer with every norm finished by its own kernel:
    the same experts, and every output equal up to the order of the 2 slices' sums of
    squares (bf16: one rounding step at most; fp32 sums of the same products otherwise)."""
    _, plain_step = _decode_chain(6, defer=False, tokens=1)
    _, deferred_step = _decode_chain(6, defer=True)
    plain, deferred = plain_step(), deferred_step()
    names = ["q", "attn", "weights", "ids", "x", "h", "k_cache", "v_cache"]
    for name, got, expected in zip(names, deferred, plain, strict=True):
        if name == "ids":
            assert torch.equal(got, expected)
            continue
        error = relative_error(got, expected)
        assert error < 1e-2, f"{name}: relative error {error}"


@pytest.mark.parametrize("defer", [False, True])
def test_pdl_on_and_off_agree_bit_for_bit(monkeypatch: pytest.MonkeyPatch, defer: bool) -> None:
    """A decode layer's kernels chained with programmatic dependent launch (the default on
    sm90+), eagerly and replayed from a CUDA graph, against the same chain launched plainly:
    every output equal bit for bit (a kernel that read its inputs before they were written
    would differ)."""
    from m2agent.engine.kernels import pdl

    if torch.cuda.get_device_capability()[0] < 9:
        pytest.skip("programmatic dependent launch needs sm90+")
    monkeypatch.setenv(pdl.ENV_VAR, "0")
    assert not pdl.enabled(torch.device("cuda"))
    inputs, step = _decode_chain(5, defer)
    x0 = inputs["x"].clone()
    plain = step()
    monkeypatch.setenv(pdl.ENV_VAR, "1")
    assert pdl.enabled(torch.device("cuda"))
    for _ in range(3):
        inputs["x"].copy_(x0)
        for got, expected in zip(step(), plain, strict=True):
            assert torch.equal(got, expected)
    graph, captured = captured_graph(step)
    for _ in range(3):
        inputs["x"].copy_(x0)
        graph.replay()
        torch.cuda.synchronize()
        for got, expected in zip(captured, plain, strict=True):
            assert torch.equal(got, expected)
