"""How the one-row GEMV cuts its reduction (no GPU needed: CPU tensors count as 132 SMs, an
H100/H200's)."""

from __future__ import annotations

import pytest
import torch

from m2agent.engine.kernels.occupancy import sm_count, split_k, split_k_waves

CPU = torch.device("cpu")


def test_m2_projections_at_batch_1() -> None:
    """q/k/v (256 tiles of 32 rows, 12 steps of 256 columns): 3 pieces, 768 programs in
    1.94 waves of 396 (the power-of-two rule's 2 pieces leave a second wave 29% full);
    o_proj (96 tiles, 24 steps): 8 pieces either way."""
    assert sm_count(CPU) == 132
    assert split_k_waves(256, 12, CPU, per_sm=3) == 3
    assert split_k(256, 12, CPU, per_sm=3) == 2
    assert split_k_waves(96, 24, CPU, per_sm=3) == 8


@pytest.mark.parametrize("programs", [1, 7, 32, 96, 255, 256, 1000, 5000])
@pytest.mark.parametrize("k_blocks", [1, 2, 3, 5, 12, 24, 64])
@pytest.mark.parametrize("per_sm", [2, 3, 4, 16])
def test_pieces_divide_the_loop_and_fill_the_last_wave_best(
    programs: int, k_blocks: int, per_sm: int
) -> None:
    split = split_k_waves(programs, k_blocks, CPU, per_sm=per_sm)
    assert 1 <= split <= 16 and k_blocks % split == 0
    assert split == 1 or k_blocks // split >= 2  # every piece at least two steps
    slots = per_sm * 132
    allowed = [s for s in range(1, 17) if k_blocks % s == 0 and (s == 1 or k_blocks // s >= 2)]
    if programs * split < slots:  # short of the target only when no allowed split reaches it
        assert split == max(allowed)
        assert all(programs * s < slots for s in allowed)
        return

    def fill(s: int) -> float:
        return programs * s / (-(-programs * s // slots) * slots)

    reaching = [s for s in allowed if programs * s >= slots]
    assert fill(split) == max(fill(s) for s in reaching)
    assert split == min(s for s in reaching if fill(s) == fill(split))  # ties: fewer pieces
