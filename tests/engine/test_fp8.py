"""FP8 block-quantized checkpoints: exact dequantization, and a loaded FP8 model equals the
same model run on its dequantized weights (and transformers on those)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from m2agent.engine import LLM, SamplingParams
from m2agent.engine.kernels.reference import (
    FP8_DTYPE,
    dequantize_fp8_block,
    quantize_fp8_block,
)
from m2agent.engine.models.checkpoint import iter_tensors


@pytest.mark.parametrize("shape", [(128, 128), (256, 384), (130, 200), (1, 5), (3, 257, 129)])
def test_dequantize_matches_blockwise_loop(shape: tuple[int, ...]) -> None:
    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(shape, generator=generator)
    q, scale = quantize_fp8_block(dense, (128, 128))
    assert q.dtype == FP8_DTYPE
    assert scale.shape[-2:] == (-(-shape[-2] // 128), -(-shape[-1] // 128))
    got = dequantize_fp8_block(q, scale, (128, 128), torch.float32)
    expected = q.float().clone()
    for r in range(scale.shape[-2]):
        for c in range(scale.shape[-1]):
            block = (..., slice(r * 128, (r + 1) * 128), slice(c * 128, (c + 1) * 128))
            expected[block] *= scale[..., r, c][..., None, None]
    torch.testing.assert_close(got, expected, atol=0, rtol=0)
    # e4m3 keeps 3 mantissa bits: relative error per element stays under 2^-4.
    assert ((got - dense).abs() <= dense.abs() * 2**-4 + scale.max() * 2**-9).all()


def dequantized_copy(fp8_folder: Path, out: Path) -> Path:
    """The same checkpoint with every FP8 weight replaced by weight x scale_inv (fp32)."""
    out.mkdir()
    tensors = {name: t.read() for name, t, _ in iter_tensors(fp8_folder)}
    dense = {}
    for name, tensor in tensors.items():
        if name.endswith("_scale_inv"):
            continue
        scale = tensors.get(name + "_scale_inv")
        dense[name] = (
            dequantize_fp8_block(tensor, scale, (128, 128), torch.float32)
            if scale is not None
            else tensor.float()
        )
    save_file(dense, str(out / "model.safetensors"))
    config = json.loads((fp8_folder / "config.json").read_text())
    del config["quantization_config"]
    (out / "config.json").write_text(json.dumps(config))
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        shutil.copy2(fp8_folder / name, out / name)
    return out


def test_fp8_checkpoint_matches_its_dequantized_reference(
    tiny_fp8_checkpoint: Path, tmp_path: Path
) -> None:
    fp8 = LLM(tiny_fp8_checkpoint, dtype="float32")
    assert fp8.model.model.layers[0].self_attn.q_proj.weight.dtype == FP8_DTYPE
    assert fp8.model.model.layers[0].block_sparse_moe.experts.w13_weight.dtype == FP8_DTYPE
    assert fp8.model.model.layers[0].block_sparse_moe.gate.weight.dtype == torch.float32
    reference_folder = dequantized_copy(tiny_fp8_checkpoint, tmp_path / "dense")
    reference = LLM(reference_folder, dtype="float32")

    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    prompt = "]~!b[]~b]user\nhello[e~[\n]~b]ai\n<think>\n"
    (a,) = fp8.generate([prompt], params)
    (b,) = reference.generate([prompt], params)
    assert a.token_ids == b.token_ids

    transformers = pytest.importorskip("transformers")
    oracle = transformers.MiniMaxM2ForCausalLM.from_pretrained(
        str(reference_folder), dtype=torch.float32, attn_implementation="eager"
    ).eval()
    ids = torch.tensor([a.prompt_token_ids])
    with torch.inference_mode():
        expected = oracle.generate(
            ids, max_new_tokens=32, min_new_tokens=32, do_sample=False, pad_token_id=0
        )[0, ids.shape[1] :].tolist()
    assert a.token_ids == expected


def test_dummy_fp8_weights_from_a_config_alone(tiny_fp8_checkpoint: Path) -> None:
    llm = LLM(tiny_fp8_checkpoint / "config.json", load_format="dummy")
    experts = llm.model.model.layers[0].block_sparse_moe.experts
    assert experts.w2_weight.dtype == FP8_DTYPE
    assert torch.isfinite(experts.dense("w2")).all()
    (out,) = llm.generate([[1, 2, 3]], SamplingParams(temperature=0, max_tokens=5, ignore_eos=True))
    assert len(out.token_ids) == 5


@pytest.mark.parametrize("fixture", ["tiny_fp8_checkpoint", "tiny_m2_checkpoint"])
def test_qkv_load_into_one_fused_weight(fixture: str, request: pytest.FixtureRequest) -> None:
    """q/k/v are views of one weight (and scale) made before loading: the checkpoint loads into
    place, nothing is held twice, and the one product's columns are the three projections."""
    from safetensors.torch import load_file

    folder: Path = request.getfixturevalue(fixture)
    llm = LLM(folder, dtype="float32")
    attn = llm.model.model.layers[0].self_attn
    fused = attn.qkv
    assert fused is not None and fused.intact()
    names = [f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv"]
    stored: dict[str, torch.Tensor] = {}
    for shard in folder.glob("*.safetensors"):
        stored.update({k: v for k, v in load_file(shard).items() if k in names})
    row = 0
    for lin, name in zip((attn.q_proj, attn.k_proj, attn.v_proj), names, strict=True):
        assert lin.weight.data_ptr() == fused.weight[row:].data_ptr()  # a view, not a copy
        want = stored[name]
        if want.dtype == FP8_DTYPE:  # bit for bit (fp8 has no torch.equal)
            assert torch.equal(lin.weight.view(torch.uint8), want.view(torch.uint8))
        else:
            assert torch.equal(lin.weight, want.to(lin.weight.dtype))
        row += lin.out_features
    assert row == fused.weight.shape[0]
    x = torch.randn(3, attn.q_proj.in_features, generator=torch.Generator().manual_seed(0))
    for got, lin in zip(fused(x), (attn.q_proj, attn.k_proj, attn.v_proj), strict=True):
        assert isinstance(got, torch.Tensor)
        torch.testing.assert_close(got, lin(x), rtol=1e-5, atol=1e-6)
