"""Our model against transformers' MiniMaxM2ForCausalLM on checkpoints transformers saved:
logits within fp32 tolerance, identical greedy continuations (CPU, fp32)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from m2agent.engine import LLM, SamplingParams

transformers = pytest.importorskip("transformers")

IDS = [
    "gqa2-e6-top3",
    "gqa2-e6-top3-published",
    "gqa3-e5-top4",
    "gqa3-e5-top4-published",
    "mha-e8-top2-3layers",
    "mha-e8-top2-3layers-published",
]


def reference_model(folder: Path) -> Any:
    model = transformers.MiniMaxM2ForCausalLM.from_pretrained(
        str(folder).removesuffix("-published"), dtype=torch.float32, attn_implementation="eager"
    )
    return model.eval()


def all_logits(llm: LLM, ids: list[int]) -> torch.Tensor:
    return llm.prompt_logits(ids)


@pytest.mark.parametrize("checkpoint_id", IDS)
def test_logits_match_transformers(transformers_checkpoints: dict, checkpoint_id: str) -> None:
    folder = transformers_checkpoints[checkpoint_id]
    llm = LLM(folder, dtype="float32")
    reference = reference_model(folder)
    generator = torch.Generator().manual_seed(len(checkpoint_id))
    for length in (1, 7, 33):
        ids = torch.randint(0, 512, (length,), generator=generator).tolist()
        ours = all_logits(llm, ids)
        with torch.inference_mode():
            theirs = reference(torch.tensor([ids])).logits[0].float()
        torch.testing.assert_close(ours, theirs, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("checkpoint_id", IDS)
def test_greedy_continuation_matches_transformers(
    transformers_checkpoints: dict, checkpoint_id: str
) -> None:
    folder = transformers_checkpoints[checkpoint_id]
    llm = LLM(folder, dtype="float32")
    reference = reference_model(folder)
    prompt = llm.tokenizer.encode("]~!b[]~b]user\nFix the failing test[e~[\n]~b]ai\n<think>\n")
    new_tokens = 40
    with torch.inference_mode():
        expected = reference.generate(
            torch.tensor([prompt]),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,
            do_sample=False,
            pad_token_id=0,
        )[0, len(prompt) :].tolist()
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    (result,) = llm.generate([prompt], params)
    assert result.token_ids == expected
    assert result.finish_reason == "length"
    assert result.text == llm.tokenizer.decode(expected)


def test_published_and_transformers_config_forms_agree(transformers_checkpoints: dict) -> None:
    a = LLM(transformers_checkpoints["gqa3-e5-top4"], dtype="float32")
    b = LLM(transformers_checkpoints["gqa3-e5-top4-published"], dtype="float32")
    assert a.config.rotary_dim == b.config.rotary_dim == 4
    assert a.config.rope_theta == b.config.rope_theta == 5_000_000.0
