"""MUTAG copied once per test session into a temporary folder (from the grakel wheel, offline)."""

from __future__ import annotations

import pytest

from lightning_distill.data.graphs import prepare_mutag


@pytest.fixture(scope="session")
def mutag_root(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(prepare_mutag(tmp_path_factory.mktemp("tu")))
