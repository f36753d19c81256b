"""Every test here starts several processes (accelerate launch, DDP or DeepSpeed over gloo): all are slow."""

import pytest


def pytest_collection_modifyitems(config, items):
    for item in items:
        if "/distributed/" in str(item.fspath):
            item.add_marker(pytest.mark.slow)
