"""Tensor-parallel smoke check on this machine's GPUs (or CPU): a tiny checkpoint served by
one process and by N, logits and greedy tokens compared, eager and with CUDA graphs.

    python3 -P scripts/tp_smoke.py [N] [cuda|cpu]

`kill -USR1` any rank to print where it is (all threads)."""

from __future__ import annotations

import faulthandler
import signal
import sys
import tempfile
import time
from pathlib import Path

import torch

from m2agent.engine import LLM, SamplingParams
from m2agent.engine.models.tiny import TinySpec, write_tiny_checkpoint


def main() -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    size = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    device = sys.argv[2] if len(sys.argv) > 2 else ("cuda" if torch.cuda.is_available() else "cpu")
    folder = write_tiny_checkpoint(Path(tempfile.mkdtemp()) / "tiny", TinySpec(heads=8, kv_heads=4))
    ids = list(range(3, 60))
    greedy = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
    single = LLM(folder, device=device, dtype="float32", cuda_graphs=False)
    want_logits, want = single.prompt_logits(ids), single.generate([ids], greedy)[0].token_ids
    del single
    ok = True
    for graphs in (False, True):
        started = time.perf_counter()
        with LLM(folder, device=device, dtype="float32", tensor_parallel_size=size,
                 cuda_graphs=graphs, gpu_memory_utilization=0.3) as llm:  # fmt: skip
            print(f"tp {size}, graphs {graphs}: up in {time.perf_counter() - started:.1f}s",
                  flush=True)  # fmt: skip
            error = (llm.prompt_logits(ids) - want_logits).abs().max().item()
            got = llm.generate([ids], greedy)[0].token_ids
            same = got == want
            ok &= same and error < 1e-4
            print(f"  max |logit diff| {error:.2e}; greedy tokens equal: {same}", flush=True)
    print("OK" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
