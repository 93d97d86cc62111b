"""Fixtures shared by the model-tier tests."""

from __future__ import annotations

import pytest
from pending_model import Model


@pytest.fixture
def model(tmp_path):
    """A model with one new pending bundle, ``/bundles/b``."""
    model = Model(tmp_path)
    model.tree.mkdir("/bundles/b")
    yield model
    model.blobs.close()
