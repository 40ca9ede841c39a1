"""Checkpoint io: sae-lens round trips, the paper's overcomplete checkpoints, convert CLI, hf://.

overcomplete 0.3.0 is installed with ``--no-deps`` and ``import overcomplete`` fails (its
package ``__init__`` pulls scikit-learn, matplotlib, timm). The ``overcomplete_topk`` fixture
loads the real ``overcomplete/base.py`` and ``overcomplete/sae/{base,dictionary,factory,modules,
topk_sae}.py`` under stub parent packages (plain module objects whose ``__path__`` points at the
installed folders, so the package ``__init__`` files are skipped); no extra package is installed
(``einops``, which ``modules.py`` needs, is already a dependency).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

import pytest
import torch

from saeprobe.sae import load_sae, save_sae
from tests.helpers import random_sae

D, C, K = 12, 40, 4


@pytest.fixture(scope="module")
def sae_lens():
    return importlib.import_module("sae_lens")


@pytest.fixture(scope="module")
def overcomplete_topk():
    spec = importlib.util.find_spec("overcomplete")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("overcomplete is not installed (pip install --no-deps overcomplete==0.3.0)")
    root = Path(list(spec.submodule_search_locations)[0])
    saved = {
        k: v for k, v in sys.modules.items() if k == "overcomplete" or k.startswith("overcomplete.")
    }
    for name, folder in (("overcomplete", root), ("overcomplete.sae", root / "sae")):
        stub = types.ModuleType(name)
        stub.__path__ = [str(folder)]
        sys.modules[name] = stub
    try:
        mod = importlib.import_module("overcomplete.sae.topk_sae")
        yield mod.TopKSAE
    finally:
        for k in [k for k in sys.modules if k == "overcomplete" or k.startswith("overcomplete.")]:
            del sys.modules[k]
        sys.modules.update(saved)


def _random_sae(arch, bias=True, pre=True, dtype="float32"):
    """A random ``arch`` SAE with the given biases, every extra parameter non-zero."""
    from saeprobe.sae import SAE_REGISTRY

    k = K if SAE_REGISTRY[arch].k_required else None
    meta = {"model_name": "tiny", "hook_point": "final_norm"}
    flags = {"use_decoder_bias": bias, "use_pre_encoder_bias": pre, "metadata": meta}
    b_dec_std = 0.5 if bias else None
    return random_sae(
        arch, D, C, k, dtype=dtype, thresholds=(0.5, 0.25), b_dec_std=b_dec_std, **flags
    )


@pytest.mark.parametrize(
    "arch,bias,pre",
    [
        ("topk", False, False),
        ("topk", True, True),
        ("topk", True, False),
        ("jumprelu", True, True),
        ("standard", True, False),
        ("batchtopk", True, True),
        ("matryoshka_batchtopk", True, True),
        ("gated", True, True),
        ("gated", True, False),
    ],
)
def test_save_loads_in_sae_lens_with_identical_codes(tmp_path, sae_lens, arch, bias, pre):
    sae = _random_sae(arch, bias, pre)
    save_sae(sae, tmp_path / "sae")
    theirs = sae_lens.SAE.load_from_disk(str(tmp_path / "sae"))
    x = torch.randn(30, D)
    with torch.no_grad():
        ours_z, their_z = sae.encode(x), theirs.encode(x)
        assert (ours_z > 0).any()
        torch.testing.assert_close(ours_z, their_z, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(sae(x), theirs(x), rtol=1e-5, atol=1e-5)
    back = load_sae(tmp_path / "sae")
    assert back.cfg == sae.cfg
    torch.testing.assert_close(back.encode(x), ours_z)


@pytest.mark.parametrize("arch", ["topk", "jumprelu", "standard", "gated"])
def test_load_checkpoint_saved_by_sae_lens(tmp_path, sae_lens, arch):
    from sae_lens.saes import (
        GatedSAE,
        GatedSAEConfig,
        JumpReLUSAE,
        JumpReLUSAEConfig,
        StandardSAE,
        StandardSAEConfig,
        TopKSAE,
        TopKSAEConfig,
    )

    kw = dict(d_in=D, d_sae=C, apply_b_dec_to_input=True)
    cls = {
        "topk": (TopKSAE, TopKSAEConfig(k=K, rescale_acts_by_decoder_norm=True, **kw)),
        "jumprelu": (JumpReLUSAE, JumpReLUSAEConfig(**kw)),
        "standard": (StandardSAE, StandardSAEConfig(**kw)),
        "gated": (GatedSAE, GatedSAEConfig(**kw)),
    }[arch]
    theirs = cls[0](cls[1])
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_(0, 0.3)
        if arch == "jumprelu":
            theirs.threshold.uniform_(0, 0.3)
    theirs.save_model(tmp_path / "theirs")
    ours = load_sae(tmp_path / "theirs")
    assert ours.cfg.arch == arch and ours.cfg.use_pre_encoder_bias
    x = torch.randn(25, D)
    with torch.no_grad():
        torch.testing.assert_close(ours.encode(x), theirs.encode(x), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


def _paper_checkpoint(TopKSAE, path, top_k=K):
    torch.manual_seed(1)
    model = TopKSAE(D, nb_concepts=C, top_k=top_k)
    with torch.no_grad():
        model.dictionary._weights.mul_(3.0)  # not unit norm on disk, as during training
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.save(
        {
            "model_state": model.state_dict(),
            "optimizer_state": opt.state_dict(),
            "logs": {"loss": [1.0, 0.5]},
        },
        path,
    )
    model.eval()
    return model


def test_overcomplete_checkpoint_gives_the_same_codes(tmp_path, overcomplete_topk):
    model = _paper_checkpoint(overcomplete_topk, tmp_path / "sae.pt", top_k=K)
    x = torch.randn(50, D)
    with torch.no_grad():
        _, z_ref = model.encode(x)
        x_hat_ref = model.decode(z_ref)
    sae = load_sae(tmp_path / "sae.pt", k=K)
    torch.testing.assert_close(sae.encode(x).detach(), z_ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sae(x).detach(), x_hat_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        sae.dictionary.norm(dim=1).detach(), torch.ones(C), rtol=1e-5, atol=1e-5
    )
    wide = {
        "encoder.final_block.0.weight": torch.randn(64, D),
        "encoder.final_block.0.bias": torch.zeros(64),
        "dictionary._weights": torch.randn(64, D),
    }
    torch.save({"model_state": wide, "logs": {}}, tmp_path / "wide.pt")
    assert load_sae(tmp_path / "wide.pt").cfg.k == 50  # the paper's default


def test_convert_cli(tmp_path, overcomplete_topk, capsys):
    from saeprobe.cli import main

    model = _paper_checkpoint(overcomplete_topk, tmp_path / "paper.pt", top_k=7)
    rc = main(
        [
            "convert",
            str(tmp_path / "paper.pt"),
            str(tmp_path / "out"),
            "--k",
            "7",
            "--hook-point",
            "final_norm",
        ]
    )
    assert rc == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["k"] == 7
    cfg = json.loads((tmp_path / "out" / "cfg.json").read_text())
    assert cfg["architecture"] == "topk" and cfg["k"] == 7
    assert cfg["metadata"]["hook_name"] == "final_norm"
    x = torch.randn(9, D)
    with torch.no_grad():
        torch.testing.assert_close(load_sae(tmp_path / "out").encode(x), model.encode(x)[1])
    assert main(["convert", str(tmp_path / "paper.pt"), str(tmp_path / "out")]) == 2  # exists


def test_hf_reference_from_offline_cache(tmp_path, monkeypatch):
    sae = _random_sae("topk")
    cache = tmp_path / "hub"
    snap = cache / "models--owner--saes" / "snapshots" / ("a" * 40)
    save_sae(sae, snap / "layer_27")
    torch.save(
        {
            "model_state": {
                "encoder.final_block.0.weight": sae.W_enc.detach(),
                "encoder.final_block.0.bias": sae.b_enc.detach(),
                "dictionary._weights": sae.W_dec.detach(),
                "dictionary.multiplier": torch.tensor(0.0),
            }
        },
        snap / "qwen.pt",
    )
    (cache / "models--owner--saes" / "refs").mkdir(parents=True)
    (cache / "models--owner--saes" / "refs" / "main").write_text("a" * 40)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    x = torch.randn(5, D)
    folder = load_sae("hf://owner/saes/layer_27", cache_dir=cache)
    torch.testing.assert_close(folder.encode(x), sae.encode(x))
    single = load_sae("hf://owner/saes/qwen.pt", cache_dir=cache, k=K)
    sae_nb = _random_sae("topk", bias=False, pre=False)
    with torch.no_grad():
        sae_nb.W_enc.copy_(sae.W_enc)
        sae_nb.b_enc.copy_(sae.b_enc)
    torch.testing.assert_close(single.encode(x), sae_nb.encode(x))
    with pytest.raises(Exception, match="(?i)offline|cache|not found|cannot find"):
        load_sae("hf://owner/missing/x.pt", cache_dir=cache)


class Evil:
    pass


def test_weights_only_refuses_pickled_objects(tmp_path):
    torch.save({"model_state": {"x": Evil()}}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="weights_only=True"):
        load_sae(tmp_path / "evil.pt")
    # numpy numbers in the logs are plain data and stay loadable (still weights_only=True)
    import numpy as np

    sae = _random_sae("topk", bias=False, pre=False)
    state = {
        "encoder.final_block.0.weight": sae.W_enc.detach(),
        "encoder.final_block.0.bias": sae.b_enc.detach(),
        "dictionary._weights": sae.W_dec.detach(),
    }
    logs = {"loss": [np.float64(0.5)], "r2": np.array([0.1, 0.2], dtype=np.float32)}
    torch.save({"model_state": state, "logs": logs}, tmp_path / "np.pt")
    x = torch.randn(4, D)
    torch.testing.assert_close(load_sae(tmp_path / "np.pt", k=K).encode(x), sae.encode(x))


def test_unknown_layout_lists_what_was_found(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="found: model.safetensors, notes.txt"):
        load_sae(tmp_path)
    torch.save({"foo": torch.zeros(2)}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match="found keys"):
        load_sae(tmp_path / "w.pt")
    with pytest.raises(FileNotFoundError):
        load_sae(tmp_path / "nope")


def test_saved_files_are_the_sae_lens_layout(tmp_path):
    sae = _random_sae("topk", bias=False, pre=False)
    save_sae(sae, tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["README.md", "cfg.json", "sae_weights.safetensors"]
    save_sae(sae, tmp_path / "bare", card=False)
    assert sorted(os.listdir(tmp_path / "bare")) == ["cfg.json", "sae_weights.safetensors"]
    from safetensors.torch import load_file

    sd = load_file(tmp_path / "sae_weights.safetensors")
    assert {k: tuple(v.shape) for k, v in sd.items()} == {
        "W_enc": (D, C),
        "W_dec": (C, D),
        "b_enc": (C,),
        "b_dec": (D,),
    }
    assert not sd["b_dec"].any()


def test_every_architecture_saves_as_a_sae_lens_builtin(sae_lens):
    """Each registered architecture is exported as an architecture sae-lens registers itself
    (gated -> gated; batchtopk and matryoshka_batchtopk -> jumprelu, as sae-lens saves its own),
    so ``SAE.load_from_disk`` needs no extra registration."""
    from sae_lens.registry import SAE_CLASS_REGISTRY

    from saeprobe.sae import SAE_REGISTRY

    exported = {name: cls.sae_lens_architecture or name for name, cls in SAE_REGISTRY.items()}
    assert exported["gated"] == "gated" and exported["matryoshka_batchtopk"] == "jumprelu"
    assert set(exported.values()) <= set(SAE_CLASS_REGISTRY), exported
