"""One new file + one registration adds an SAE architecture or a whitening method: the CLI
choices, the config validation and the save / load paths all read the registries."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from saeprobe.cli import main
from saeprobe.retrieval import RetrievalConfig
from saeprobe.sae import SAE, SAE_REGISTRY, load_sae, register_sae
from saeprobe.sae.base import LossSpec, TrainForward, sparsify
from saeprobe.whitening import (
    WHITENING_METHODS,
    Whitener,
    WhitenerConfig,
    WhiteningMethod,
    available_methods,
    register_whitening,
)
from tests.helpers import cli_flags, tiny_store, train_argv

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def toy_arch():
    """A ReLU SAE with a fixed threshold, registered for the test only."""

    @register_sae("toy_threshold")
    class ThresholdSAE(SAE):
        arch = "toy_threshold"
        threshold = 0.05

        def _encode_dense(self, x: Tensor) -> Tensor:
            pre = self.pre_acts(x).to(self.W_enc.dtype)
            return pre * (pre > self.threshold)

        def loss(self, x: Tensor, spec: LossSpec) -> TrainForward:
            x = self._flat(x).to(self.W_enc.dtype)
            z = self._encode_dense(x).relu()
            x_hat = self.decode(z)
            terms = self._terms(x, x_hat, z.sum(), (z > 0).sum())
            loss = terms["mse"] + spec.l1_coeff * terms["l1"]
            v, i = sparsify(z, self.cfg.k)
            return TrainForward(loss, x_hat, v, i, terms)

    yield ThresholdSAE
    SAE_REGISTRY.pop("toy_threshold")


def test_a_registered_architecture_trains_through_the_cli(toy_arch, tmp_path, capsys):
    tiny_store(tmp_path / "store")
    out = tmp_path / "sae"
    argv = train_argv(tmp_path / "store", out, arch="toy_threshold", k=8, width=48)
    argv += cli_flags(batch_size=64, epochs=10, lr=1e-2, l1_coeff=0.01, warmup_steps=2)
    argv += cli_flags(log_interval=1)
    assert main(argv) == 0
    assert "trained toy_threshold SAE (48 latents" in capsys.readouterr().out
    sae = load_sae(out)
    assert type(sae) is toy_arch and sae.cfg.arch == "toy_threshold"
    assert json.loads((out / "cfg.json").read_text())["architecture"] == "toy_threshold"
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    fvu = [r["fvu"] for r in records if "fvu" in r]
    assert len(fvu) >= 10 and max(fvu[-5:]) < 0.5 * min(fvu[:5]), fvu
    # an unregistered name is still refused before anything is read
    SAE_REGISTRY.pop("toy_threshold")
    try:
        with pytest.raises(SystemExit) as exc:
            main(argv[:3] + ["--arch", "toy_threshold", "--out", str(tmp_path / "other")])
        assert exc.value.code == 2
        assert "toy_threshold" in capsys.readouterr().err
        assert not (tmp_path / "other").exists()
    finally:
        SAE_REGISTRY["toy_threshold"] = toy_arch


@pytest.fixture
def toy_method():
    """Per-dimension standardisation (a diagonal whitening), registered for the test only."""

    @register_whitening("toy_standardise", aliases=("toy_std",))
    class Standardise(WhiteningMethod):
        def weight(self, stats, info):
            var = torch.diagonal(stats.scatter) / (stats.n - 1)
            info["min_var"] = float(var.min())
            return torch.diag(var.clamp_min(1e-12).rsqrt())

    yield Standardise
    WHITENING_METHODS.pop("toy_standardise")


def test_a_registered_whitening_method_is_usable_everywhere(toy_method, tmp_path):
    assert "toy_standardise" in available_methods()
    g = torch.Generator().manual_seed(0)
    X = torch.randn(500, 12, generator=g) * torch.linspace(0.1, 5, 12) + 2.0
    w = Whitener(WhitenerConfig(method="toy_std")).fit(X)
    assert w.method == "toy_standardise" and w.info["min_var"] > 0
    X64 = X.double()
    want = F.normalize((X64 - X64.mean(0)) / X64.std(0), dim=1)
    torch.testing.assert_close(w.transform(X).double(), want, atol=2e-6, rtol=0)
    back = Whitener.load(w.save(tmp_path / "w.safetensors"))
    torch.testing.assert_close(back.transform(X), w.transform(X))
    assert RetrievalConfig(methods=["none", "toy_std"]).methods == ["none", "toy_standardise"]


def test_a_built_in_module_that_cannot_be_imported_is_an_error(monkeypatch):
    """A renamed or broken built-in file must not silently drop a family or a sub-command."""
    import saeprobe.cli as cli
    from saeprobe.models import registry

    monkeypatch.setattr(registry, "BUILTIN_MODULES", [*registry.BUILTIN_MODULES, "renamed_vl"])
    monkeypatch.setattr(registry, "_imported", False)
    with pytest.raises(ModuleNotFoundError, match="renamed_vl"):
        registry.adapter_class("Qwen2VLForConditionalGeneration")
    monkeypatch.setattr(cli, "COMMANDS", [*cli.COMMANDS, "renamed_command"])
    with pytest.raises(ModuleNotFoundError, match="renamed_command"):
        cli.build_parser()
