"""JSON mode on CUDA: constrained requests share decode batches (graph replays) with plain ones;
every JSON answer parses and the plain request's tokens are the same as when it runs alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from m2agent.engine import LLM, SamplingParams
from m2agent.engine.protocol import markers

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def test_json_mode_beside_graph_decoding(tiny_m2_checkpoint: Path) -> None:
    llm = LLM(tiny_m2_checkpoint, device="cuda", dtype="bfloat16")
    engine = llm.engine
    assert engine.runner.graphs is not None  # decode steps replay captured graphs
    reasoning = "]~!b[]~b]user\nA cat as JSON[e~[\n]~b]ai\n<think>\n"
    plain_prompt = "def add(a, b):\n    return"
    plain = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    (alone,) = llm.generate([plain_prompt], plain)
    for seed in range(4):
        json_params = SamplingParams(
            temperature=1.0, max_tokens=48, seed=seed, response_format="json_object"
        )
        requests = [(reasoning, json_params), (plain_prompt, plain), ("JSON:", json_params)]
        texts = {f"r{i}": "" for i in range(3)}
        tokens: dict[str, list[int]] = {rid: [] for rid in texts}
        finish: dict[str, str] = {}
        for rid, (prompt, params) in zip(texts, requests, strict=True):
            engine.add_request(rid, prompt, params)
        while len(finish) < 3:
            for delta in engine.step():
                texts[delta.request_id] += delta.text
                tokens[delta.request_id] += delta.token_ids
                if delta.finish_reason:
                    finish[delta.request_id] = delta.finish_reason
        assert tokens["r1"] == alone.token_ids
        assert finish["r0"] == finish["r2"] == "stop"
        assert isinstance(json.loads(texts["r0"].split(markers.THINK_CLOSE, 1)[1]), dict)
        assert isinstance(json.loads(texts["r2"]), dict), texts["r2"]
