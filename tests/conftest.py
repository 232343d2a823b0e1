import os

# One torch thread per test process (and per subprocess it starts, which inherits the variable), unless the caller
# chose: on a 2-core machine shared with other work, two intra-op threads that wait for each other made an epoch
# of 128 images take 7.5 s instead of 0.5 s. Set before torch is imported.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
