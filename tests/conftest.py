import os
import sys

import torch
from hypothesis import settings

sys.path.insert(0, os.path.dirname(__file__))
torch.set_num_threads(min(2, torch.get_num_threads()))
settings.register_profile("asl", deadline=None, max_examples=10, derandomize=True)
settings.load_profile("asl")
