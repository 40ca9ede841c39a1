"""One JSON round-trip for every config (saeprobe.jsonconfig.JSONConfig)."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import pytest

from analysis import AnalysisConfig, TagConfig
from sae_training import TrainConfig
from saeprobe.capture.config import CaptureConfig
from saeprobe.jsonconfig import JSONConfig
from saeprobe.retrieval import RetrievalConfig
from saeprobe.sae import SAEConfig
from saeprobe.study.config import StudyConfig
from saeprobe.whitening import WhitenerConfig

CONFIGS = [
    SAEConfig(d_in=8, d_sae=32, k=4),
    TrainConfig(arch="topk", width=64, k=4, batch_size=32, adam_betas=(0.8, 0.99)),
    CaptureConfig(model="m", data="d"),
    StudyConfig(models=["a=b"], data="x"),
    AnalysisConfig(ks=(1, 3), tags=TagConfig(textual=0.8)),
    TagConfig(visual=0.2),
    RetrievalConfig(methods=["none", "zca"], alpha=0.2),
    WhitenerConfig(method="zca", eps=1e-4),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_every_config_round_trips(cfg, tmp_path):
    assert isinstance(cfg, JSONConfig)
    text = cfg.to_json()
    json.loads(text)  # plain JSON: no tuples, no objects
    assert type(cfg).from_json(text) == cfg
    path = tmp_path / "cfg.json"
    cfg.to_json(path)
    assert type(cfg).from_json(path) == cfg
    assert type(cfg).from_dict(json.loads(path.read_text())) == cfg


@dataclass
class _Inner(JSONConfig):
    a: int = 1


@dataclass
class _Outer(JSONConfig):
    inner: _Inner = field(default_factory=_Inner)
    pair: tuple[float, float] = (0.5, 2.0)
    names: list[str] = field(default_factory=lambda: ["x"])


def test_nested_configs_and_tuples_come_back_typed():
    out = _Outer.from_dict({"inner": {"a": 3}, "pair": [1.0, 4.0], "names": ["y", "z"]})
    assert out.inner == _Inner(3) and out.pair == (1.0, 4.0) and out.names == ["y", "z"]
    assert _Outer().to_dict() == {"inner": {"a": 1}, "pair": [0.5, 2.0], "names": ["x"]}


def test_unknown_keys_error_warn_or_ignore(caplog):
    with pytest.raises(ValueError, match=r"unknown TrainConfig keys \['widht'\]; valid keys"):
        TrainConfig.from_dict({"widht": 3})
    with caplog.at_level(logging.WARNING):
        cfg = SAEConfig.from_dict({"d_in": 4, "d_sae": 8, "k": 2, "hook_name": "x"})
    assert cfg.d_in == 4 and "ignoring unknown fields hook_name" in caplog.text
    assert RetrievalConfig.from_dict({"alpha": 0.3, "from_a_newer_version": 1}).alpha == 0.3
    with pytest.raises(ValueError, match="is a JSON object"):
        TrainConfig.from_dict([1, 2])


def test_from_json_files_fail_in_one_line(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file .* not found"):
        TrainConfig.from_json(tmp_path / "missing.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        TrainConfig.from_json(bad)
