import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# 2 cores: one process uses both; under pytest-xdist (`make test` runs `-n 2`) each worker takes one,
# so the workers do not oversubscribe the cores. xdist is optional: without it this is plain pytest.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0") or 0)
torch.set_num_threads(1 if _XDIST_WORKERS >= 2 else 2)

# property tests: a quick profile for `make test`, a long one under HADAINIT_SLOW=1 (`make test-slow`)
# the quick profile is derandomized (a fixed example sequence: CI cannot flake); the long one explores afresh
settings.register_profile("quick", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("long" if os.environ.get("HADAINIT_SLOW") == "1" else "quick")


def pytest_collection_modifyitems(config, items):
    if os.environ.get("HADAINIT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow check: run with HADAINIT_SLOW=1 (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
