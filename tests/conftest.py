import os
import sys

import torch
from hypothesis import Phase, settings

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))
# Fixed examples (derandomize) so CI is reproducible; no shrinking, which can take minutes.
settings.register_profile("asl", deadline=None, max_examples=10, derandomize=True,
                          phases=[Phase.explicit, Phase.reuse, Phase.generate])
settings.register_profile("dev", deadline=None, max_examples=50)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "asl"))
