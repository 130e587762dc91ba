"""The compile watch counts and names each Triton kernel variant built at run time: a new
constexpr or a new integer specialization builds one, a repeat builds none."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from m2agent.engine.kernels import compiles

triton = pytest.importorskip("triton")  # CUDA machines only (CI has no Triton)
import triton.language as tl  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


@triton.jit
def _scale_kernel(x_ptr, out_ptr, n, factor, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = offs < n
    tl.store(out_ptr + offs, tl.load(x_ptr + offs, mask=ok) * factor, mask=ok)


def _launch(n: int, block: int) -> torch.Tensor:
    x = torch.randn(n, device="cuda")
    out = torch.empty_like(x)
    _scale_kernel[(triton.cdiv(n, block),)](x, out, n, 2.5, BLOCK=block)
    torch.testing.assert_close(out, x * 2.5)
    return out


def test_each_new_variant_is_counted_once_and_named() -> None:
    assert compiles.install()
    assert compiles.install()  # idempotent
    mark = compiles.count()
    _launch(100, 64)  # n not a multiple of 16
    _launch(100, 64)  # the same variant
    _launch(101, 64)
    assert compiles.count() - mark == 1
    _launch(112, 64)  # n now a multiple of 16: a new specialization
    _launch(100, 128)  # a new constexpr
    built = compiles.since(mark)
    assert len(built) == 3
    assert all(c.kernel == "_scale_kernel" and c.seconds > 0 for c in built)
    assert "BLOCK=64" in built[0].key and "multiple of 16" not in built[0].key
    assert "multiple of 16: n" in built[1].key
    assert "BLOCK=128" in built[2].key


# One engine in a fresh process (Triton's in-memory kernel cache starts empty): serve a mixed
# workload (prompts of 1-300 tokens arriving over time, so steps mix prefill chunks and
# decodes at many sizes) and print how many kernel variants were built while serving.
_SERVE = """
import json, random, sys
from m2agent.engine import LLM, SamplingParams
from m2agent.engine.kernels import compiles
llm = LLM(sys.argv[1], device="cuda", dtype="bfloat16", max_num_seqs=8,
          max_num_batched_tokens=192, warm_up=sys.argv[2] == "on")
engine, rng = llm.engine, random.Random(0)
mark = compiles.count()
for step in range(400):
    if step % 5 == 0 and step < 250:
        prompt = [rng.randrange(3, 200) for _ in range(rng.randint(1, 300))]
        params = SamplingParams(temperature=0, max_tokens=rng.randint(1, 24), ignore_eos=True)
        engine.add_request(f"r{step}", prompt, params)
    engine.step()
assert not engine.has_unfinished_requests()
print(json.dumps([f"{c.kernel} ({c.key})" for c in compiles.since(mark)]))
"""


def _built_while_serving(checkpoint: Path, warm_up: str) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-P", "-c", _SERVE, str(checkpoint), warm_up],
        capture_output=True, text=True, timeout=600, env=os.environ.copy(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_warmed_up_engine_builds_no_kernel_while_serving(tiny_fp8_checkpoint: Path) -> None:
    cold = _built_while_serving(tiny_fp8_checkpoint, "off")
    assert cold, "without the warm-up the workload should build variants (or it tests nothing)"
    warm = _built_while_serving(tiny_fp8_checkpoint, "on")
    assert warm == [], f"built while serving after the warm-up: {warm} (without it: {cold})"
