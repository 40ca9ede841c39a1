"""The one dtype table and the bf16 policy ("auto" is bf16 only where it runs natively)."""

from __future__ import annotations

import logging

import pytest
import torch

from saeprobe import dtypes


@pytest.fixture
def detect(monkeypatch):
    """Run the real detection (the suite pins SAEPROBE_CPU_BF16=0) on given CPU flags."""
    monkeypatch.delenv(dtypes.ENV_CPU_BF16, raising=False)
    monkeypatch.delenv("ATEN_CPU_CAPABILITY", raising=False)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)

    def use(flags):
        monkeypatch.setattr(dtypes, "_cpu_flags", lambda: set(flags))
        dtypes._detect_cpu_bf16.cache_clear()
        return dtypes.cpu_has_native_bf16()

    yield use
    dtypes._detect_cpu_bf16.cache_clear()


def test_names_round_trip():
    for short, long, t in (("fp32", "float32", torch.float32), ("bf16", "bfloat16", torch.bfloat16),
                           ("fp16", "float16", torch.float16), ("fp64", "float64", torch.float64)):  # fmt: skip
        assert dtypes.short_name(long) == dtypes.short_name(t) == short
        assert dtypes.long_name(short) == long and dtypes.to_torch(long) is t
    assert dtypes.to_torch(None) is None and dtypes.short_name("half") == "fp16"
    with pytest.raises(ValueError, match="unsupported dtype 'int8'"):
        dtypes.to_torch("int8")
    with pytest.raises(ValueError, match="use one of float16, bfloat16, float32"):
        dtypes.short_name("fp64", allowed=("fp16", "bf16", "fp32"))


def test_cpu_detection_follows_flags_and_the_capability_caps(detect, monkeypatch):
    assert detect({"avx2", "fma"}) is False
    assert detect({"avx512f", "avx512_bf16"}) is True
    assert detect({"amx_bf16", "amx_tile"}) is True
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")  # torch held to AVX2: emulated bf16
    assert detect({"avx512_bf16"}) is False
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx512")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert detect({"avx512_bf16"}) is False
    monkeypatch.setenv(dtypes.ENV_CPU_BF16, "1")  # the override wins
    assert dtypes.cpu_has_native_bf16() is True


def test_auto_picks_bf16_only_where_native(detect):
    detect({"avx2"})
    assert dtypes.resolve("auto", "cpu") is torch.float32
    assert dtypes.resolve(None, "cpu") is torch.float32
    detect({"avx512_bf16"})
    assert dtypes.resolve("auto", "cpu") is torch.bfloat16
    assert dtypes.resolve("fp16", "cpu") is torch.float16


def test_explicit_bf16_on_a_cpu_without_it_warns_with_the_measured_cost(detect, caplog):
    detect({"avx2"})
    with caplog.at_level(logging.WARNING, logger="saeprobe.dtypes"):
        assert dtypes.resolve("bf16", "cpu", what="model") is torch.bfloat16
    msg = caplog.text
    assert "model dtype bf16 on a CPU without native bf16" in msg
    assert "measured here: a 256x256 matmul takes" in msg and "ms in fp32" in msg
    caplog.clear()
    detect({"avx512_bf16"})
    with caplog.at_level(logging.WARNING, logger="saeprobe.dtypes"):
        dtypes.resolve("bf16", "cpu")
    assert "without native bf16" not in caplog.text


def test_trainer_autocast_auto_follows_the_policy(detect):
    from sae_training.trainer import Trainer
    from tests.helpers import train_config

    x = torch.randn(64, 8)
    detect({"avx2"})
    assert Trainer(train_config(autocast="auto"), x).compute_dtype is torch.float32
    detect({"avx512_bf16"})
    assert Trainer(train_config(autocast="auto"), x).compute_dtype is torch.bfloat16
    assert Trainer(train_config(autocast="none"), x).compute_dtype is torch.float32
