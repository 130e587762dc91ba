"""What the GPU tests share: exact fp32 matmuls (no TF32) and the prompts they generate from."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from m2agent.engine import SamplingParams

PROMPTS = [
    "]~!b[]~b]user\nWrite a function that adds two numbers[e~[\n]~b]ai\n<think>\n",
    "]~!b[]~b]user\nFix the failing test[e~[\n]~b]ai\n<think>\n",
    "def add(a, b):\n    return",
]
GREEDY = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)


@pytest.fixture(autouse=True)
def no_tf32() -> Iterator[None]:
    """fp32 comparisons mean fp32: TF32 matmuls would round inputs to 10 mantissa bits."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old
