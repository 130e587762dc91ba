"""Bad checkpoints get a clear error naming the file, never a traceback from inside torch."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from m2agent.engine import LLM
from m2agent.engine.errors import CheckpointError, ConfigError, EngineError


@pytest.fixture
def checkpoint(tiny_m2_checkpoint: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(tiny_m2_checkpoint, tmp_path / "ckpt"))


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("model-*.safetensors"))


def test_good_checkpoint_loads(checkpoint: Path) -> None:
    LLM(checkpoint)


def test_missing_shard(checkpoint: Path) -> None:
    shards(checkpoint)[1].unlink()
    with pytest.raises(CheckpointError, match=r"missing: .*model-00002-of-00002\.safetensors"):
        LLM(checkpoint)


def test_corrupt_shard(checkpoint: Path) -> None:
    shard = shards(checkpoint)[0]
    shard.write_bytes(shard.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"model-00001-of-00002\.safetensors: not a readable"):
        LLM(checkpoint)


def test_wrong_shapes_name_the_tensor(checkpoint: Path) -> None:
    shard = shards(checkpoint)[0]
    tensors = load_file(shard)
    name = next(n for n in tensors if n.endswith("q_proj.weight"))
    tensors[name] = torch.zeros(3, 3, dtype=tensors[name].dtype)
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match=rf"{name}: shape \[3, 3\] does not match"):
        LLM(checkpoint)


def test_missing_tensor(checkpoint: Path) -> None:
    shard = shards(checkpoint)[0]
    tensors = load_file(shard)
    name = next(n for n in tensors if ".w2.weight" in n)
    expert = name.split(".experts.")[1].split(".")[0]
    del tensors[name]
    save_file(tensors, str(shard))
    with pytest.raises(
        CheckpointError, match=rf"1 tensors missing .*experts\.{expert}\.w2\.weight"
    ):
        LLM(checkpoint)


def test_unexpected_tensor(checkpoint: Path) -> None:
    shard = shards(checkpoint)[0]
    tensors = load_file(shard)
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.zeros(4)
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match=r"tensors the model does not have: .*inv_freq"):
        LLM(checkpoint)


def test_mtp_layers_are_skipped_only_when_the_config_has_them(checkpoint: Path) -> None:
    shard = shards(checkpoint)[0]
    tensors = load_file(shard)
    tensors["model.layers.2.input_layernorm.weight"] = torch.ones(64, dtype=torch.bfloat16)
    save_file(tensors, str(shard))
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\.input_layernorm"):
        LLM(checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config.update(use_mtp=True, num_mtp_modules=3)
    (checkpoint / "config.json").write_text(json.dumps(config))
    LLM(checkpoint)


def test_fp8_tensor_without_quantization_config(tiny_fp8_checkpoint: Path, tmp_path: Path) -> None:
    folder = Path(shutil.copytree(tiny_fp8_checkpoint, tmp_path / "fp8"))
    config = json.loads((folder / "config.json").read_text())
    del config["quantization_config"]
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="float8_e4m3fn"):
        LLM(folder)


def test_unsupported_quant_method(checkpoint: Path) -> None:
    config = json.loads((checkpoint / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "gptq", "bits": 4}
    (checkpoint / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match="quantization method 'gptq' is not supported"):
        LLM(checkpoint)


def test_corrupt_config_json(checkpoint: Path) -> None:
    (checkpoint / "config.json").write_text('{"hidden_size": ')
    with pytest.raises(ConfigError, match=r"config\.json: not valid JSON"):
        LLM(checkpoint)


def test_corrupt_index(checkpoint: Path) -> None:
    (checkpoint / "model.safetensors.index.json").write_text("[]")
    with pytest.raises(CheckpointError, match="unreadable index"):
        LLM(checkpoint)


def test_bad_device_and_dtype(checkpoint: Path) -> None:
    with pytest.raises(EngineError, match="dtype 'int8' is not supported"):
        LLM(checkpoint, dtype="int8")
    with pytest.raises(EngineError, match="device"):
        LLM(checkpoint, device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(EngineError, match="CUDA is not available"):
            LLM(checkpoint, device="cuda")
