import pytest


@pytest.fixture(scope="module")
def session(planted):
    """An :class:`~saeprobe.explorer.ExplorerSession` on the test module's ``planted``
    retrieval problem (a module-scoped fixture of the explorer test modules)."""
    from saeprobe.explorer import ExplorerSession

    return ExplorerSession(planted.sae, planted.data)
