"""Tensor parallelism on two GPUs over NCCL: the split model against the whole one, and decode
steps replayed from CUDA graphs (all-reduces captured inside) against eager ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from m2agent.engine import LLM

from .conftest import GREEDY, PROMPTS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA GPUs"),
]


def test_tp2_on_cuda_equals_one_gpu(tiny_m2_checkpoint: Path) -> None:
    single = LLM(tiny_m2_checkpoint, device="cuda", dtype="float32", max_num_seqs=8)
    expected = [o.token_ids for o in single.generate(PROMPTS, GREEDY)]
    ids = single.engine.encode(PROMPTS[0])
    logits = single.prompt_logits(ids)
    del single
    with LLM(tiny_m2_checkpoint, device="cuda", dtype="float32", max_num_seqs=8,
             tensor_parallel_size=2) as split:  # fmt: skip
        assert split.engine.runner.graphs is not None  # decode runs from captured graphs
        assert [o.token_ids for o in split.generate(PROMPTS, GREEDY)] == expected
        singles = [split.generate([p], GREEDY)[0].token_ids for p in PROMPTS]
        torch.testing.assert_close(split.prompt_logits(ids), logits, atol=1e-4, rtol=1e-4)
    assert singles == expected


def test_tp2_graph_replay_equals_eager_in_bf16(tiny_m2_checkpoint: Path) -> None:
    outputs = []
    for graphs in (True, False):
        with LLM(tiny_m2_checkpoint, device="cuda", dtype="bfloat16", max_num_seqs=8,
                 tensor_parallel_size=2, cuda_graphs=graphs) as llm:  # fmt: skip
            assert (llm.engine.runner.graphs is not None) == graphs
            outputs.append([o.token_ids for o in llm.generate(PROMPTS, GREEDY)])
    assert outputs[0] == outputs[1]
