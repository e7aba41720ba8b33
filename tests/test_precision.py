"""Precision: bf16 only where the hardware has it (or when forced), fp32 weights and loss either way."""

import pytest
import torch
from pydantic import ValidationError

from test_loop import Recorder, dataset, lora, weights  # noqa: F401 (dataset is a fixture)
from tunesmith.config import Settings
from tunesmith.data.batching import collate
from tunesmith.train import loop
from tunesmith.train.losses import token_logps
from tunesmith.train.precision import fast_bf16, resolve

CPU = torch.device("cpu")


@pytest.mark.parametrize("capabilities, fast", [
    ({"avx2": True, "avx512_f": True}, False),  # AVX-512 without BF16: emulated, slower than fp32
    ({"avx512_bf16": True}, True),
    ({"amx_bf16": True, "amx_tile": True}, True),
])
def test_auto_picks_bf16_only_where_the_cpu_multiplies_it_natively(monkeypatch, capabilities, fast):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: capabilities)
    assert fast_bf16(CPU) is fast
    assert resolve("auto", CPU).bf16 is fast
    assert resolve("bf16", CPU).bf16 and not resolve("fp32", CPU).bf16  # forced either way


def test_precision_setting(monkeypatch):
    monkeypatch.setenv("TUNESMITH_PRECISION", "bf16")
    assert Settings().precision == "bf16"
    monkeypatch.setenv("TUNESMITH_PRECISION", "fp16")
    with pytest.raises(ValidationError):
        Settings()
    with pytest.raises(ValueError, match="auto, bf16, fp32"):
        resolve("fp16", CPU)


def test_bf16_training_keeps_fp32_weights_and_an_fp32_loss(tiny_model_factory, dataset, tmp_path):  # noqa: F811
    model = lora(tiny_model_factory())
    with resolve("bf16", CPU).autocast():
        logps, _, _ = token_logps(model, collate([dataset[:3]], pad_id=2))
    assert logps.dtype == torch.float32
    before = weights(model)
    cfg = loop.LoopConfig(n_epochs=1, batch_size=4, learning_rate=5e-3, seed=7, precision="bf16")
    result = loop.train(model, dataset, cfg, tmp_path, Recorder(), pad_id=2, valid_set=dataset[:2])
    after = weights(model)
    assert all(w.dtype == torch.float32 for w in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in after)
    assert 0 < result.metrics["valid_loss"] < 20
