"""Selection policies (which tokens propagate) and eviction policies (which KV entries stay)."""
from .asl import ASL
from .base import EvictionPolicy, LayerView, PrefillInfo, Selection, SelectionPolicy
from .fixed import FastKV
from .full import Full
from .gemfilter import ASLTwoPass, GemFilter
from .snapkv import SnapKV
from .streaming import StreamingLLM

__all__ = ["ASL", "ASLTwoPass", "EvictionPolicy", "FastKV", "Full", "GemFilter", "LayerView", "PrefillInfo",
           "Selection", "SelectionPolicy", "SnapKV", "StreamingLLM"]
