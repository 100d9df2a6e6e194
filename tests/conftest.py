import os
import sys

import pytest
import torch
from hypothesis import Phase, settings

sys.path.insert(0, os.path.dirname(__file__))
THREADS = min(2, torch.get_num_threads())
torch.set_num_threads(THREADS)
# Fixed examples (derandomize) so CI is reproducible; no shrinking, which can take minutes.
settings.register_profile("asl", deadline=None, max_examples=10, derandomize=True,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "asl"))


@pytest.fixture(autouse=True)
def _threads_restored():
    """A test that runs the bench in-process with --threads 1 must not leave every later test on one core."""
    yield
    if torch.get_num_threads() != THREADS:
        torch.set_num_threads(THREADS)
