import os

import pytest
import torch

torch.set_num_threads(2)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("HADAINIT_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow check: run with HADAINIT_SLOW=1 (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
