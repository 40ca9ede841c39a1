import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# "auto" dtypes resolve to fp32 on every CPU in the suite (tests of the policy set it back)
os.environ.setdefault("SAEPROBE_CPU_BF16", "0")


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """``tiny_models(family) -> Path``: tiny random checkpoints, built once per session
    (read-only: copy one before changing its files)."""
    from tests.helpers import tiny_model

    root = tmp_path_factory.mktemp("tiny_models")
    return lambda family: tiny_model(family, root)


@pytest.fixture
def one_thread():
    """Run a test with one torch thread (forked / spawned children, exact timings)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def demo_quick_run(tmp_path_factory):
    """The run folder of ``saeprobe demo --quick`` (the command itself, once per session;
    read-only); what it printed is in ``demo_stdout.txt`` next to it.

    ``SAEPROBE_TEST_DEMO_RUN`` points at an existing one instead (for local iterations)."""
    import contextlib
    import io
    from pathlib import Path

    given = os.environ.get("SAEPROBE_TEST_DEMO_RUN")
    if given:
        return Path(given)
    from saeprobe.cli import main

    out = tmp_path_factory.mktemp("demo") / "quick"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = main(["demo", "--quick", "--out", str(out), "--no-progress"])
    (out.parent / "demo_stdout.txt").write_text(printed.getvalue())
    assert code == 0, printed.getvalue()
    return out
