"""The engine on CUDA: parity with transformers in fp32 (exact greedy) and bf16 (tolerance),
the grouped-GEMM MoE against the reference, FP8 checkpoints. Run on the GPU machine:
`pytest -m gpu`.

bf16 tolerance: bf16 keeps 8 significant bits (relative step 2^-8 ~ 0.4%). Two correct
implementations that round in different places drift by a few such steps per layer, so each
position's logits are compared relative to their own scale (max error under 5% of max |logit|).
The oracle's router runs in fp32 as ours does; even so, when two experts' scores nearly tie,
bf16 noise in the hidden state can flip which one is picked and change that token's output, so
the bound must hold on 95% of positions (not all), and the argmax must agree on 90% of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from m2agent.engine import LLM, SamplingParams
from m2agent.engine.kernels import grouped_moe, reference

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]
transformers = pytest.importorskip("transformers")


def oracle(folder: Path, dtype: torch.dtype) -> Any:
    model = transformers.MiniMaxM2ForCausalLM.from_pretrained(
        str(folder), dtype=dtype, attn_implementation="eager", device_map="cuda"
    ).eval()
    for layer in model.model.layers:  # M2's router runs in fp32 (its weight is stored fp32)
        layer.mlp.gate.float()
    return model


def all_logits(llm: LLM, ids: list[int]) -> torch.Tensor:
    return llm.prompt_logits(ids)


def test_fp32_greedy_matches_transformers_on_cuda(transformers_checkpoints: dict) -> None:
    folder = transformers_checkpoints["gqa2-e6-top3"]
    llm = LLM(folder, device="cuda", dtype="float32")
    prompt = llm.tokenizer.encode("]~!b[]~b]user\nhi[e~[\n]~b]ai\n<think>\n")
    with torch.inference_mode():
        expected = oracle(folder, torch.float32).generate(
            torch.tensor([prompt], device="cuda"),
            max_new_tokens=40, min_new_tokens=40, do_sample=False, pad_token_id=0,
        )[0, len(prompt):].tolist()  # fmt: skip
    (out,) = llm.generate([prompt], SamplingParams(temperature=0, max_tokens=40, ignore_eos=True))
    assert out.token_ids == expected


@pytest.mark.parametrize("checkpoint_id", ["gqa2-e6-top3", "gqa3-e5-top4", "mha-e8-top2-3layers"])
def test_bf16_logits_close_to_transformers(
    transformers_checkpoints: dict, checkpoint_id: str
) -> None:
    folder = transformers_checkpoints[checkpoint_id]
    llm = LLM(folder, device="cuda", dtype="bfloat16")
    model = oracle(folder, torch.bfloat16)
    ids = torch.randint(0, 512, (64,), generator=torch.Generator().manual_seed(0)).tolist()
    ours = all_logits(llm, ids)
    with torch.inference_mode():
        theirs = model(torch.tensor([ids], device="cuda")).logits[0].float()
    relative = (ours - theirs).abs().amax(-1) / theirs.abs().amax(-1)
    assert (relative <= 0.05).float().mean().item() >= 0.95, relative
    agreement = (ours.argmax(-1) == theirs.argmax(-1)).float().mean().item()
    assert agreement >= 0.9


@pytest.mark.parametrize("tokens", [1, 3, 17, 128, 1000])
def test_grouped_moe_matches_reference_on_cuda(tokens: int) -> None:
    generator = torch.Generator(device="cuda").manual_seed(tokens)
    experts, hidden, inter, top_k = 16, 256, 192, 4

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device="cuda")

    x = randn(tokens, hidden).bfloat16()
    gate, bias = randn(experts, hidden), randn(experts)
    w13 = randn(experts, 2 * inter, hidden).bfloat16() * 0.05
    w2 = randn(experts, hidden, inter).bfloat16() * 0.05
    weights, ids = reference.route(x, gate, bias, top_k)
    expected = reference.moe_experts(x, weights, ids, w13, w2).float()
    got = grouped_moe.moe_experts_grouped(x, weights, ids, w13, w2).float()
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)


def test_fp8_checkpoint_on_cuda_matches_cpu(tiny_fp8_checkpoint: Path) -> None:
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    prompt = "]~!b[]~b]user\nhello[e~[\n]~b]ai\n<think>\n"
    (gpu,) = LLM(tiny_fp8_checkpoint, device="cuda", dtype="float32").generate([prompt], params)
    (cpu,) = LLM(tiny_fp8_checkpoint, device="cpu", dtype="float32").generate([prompt], params)
    assert gpu.token_ids == cpu.token_ids


@pytest.mark.parametrize("tokens", [1, 2, 5, 16])
@pytest.mark.parametrize(
    ("hidden", "inter", "experts", "top_k"), [(3072, 1536, 256, 8), (200, 96, 7, 3)]
)
def test_small_batch_triton_moe_matches_reference(
    tokens: int, hidden: int, inter: int, experts: int, top_k: int
) -> None:
    from m2agent.engine.kernels.moe_triton import moe_experts_small_batch

    generator = torch.Generator(device="cuda").manual_seed(tokens + hidden)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator, device="cuda")

    x = randn(tokens, hidden).bfloat16()
    gate, bias = randn(experts, hidden), randn(experts)
    w13 = (randn(experts, 2 * inter, hidden) * 0.05).bfloat16()
    w2 = (randn(experts, hidden, inter) * 0.05).bfloat16()
    weights, ids = reference.route(x, gate, bias, top_k)
    expected = reference.moe_experts(x.float(), weights, ids, w13.float(), w2.float())
    got = moe_experts_small_batch(x, weights, ids, w13, w2).float()
    torch.testing.assert_close(got, expected, atol=2e-2, rtol=2e-2)
