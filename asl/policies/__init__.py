"""Selection policies (which tokens propagate) and eviction policies (which KV entries stay).

`top_prefix`, `sort_keep` and `fill_unevicted` are the helpers the shipped policies build
their index lists with (stable top-k, -1 pads last, short sequences kept whole): a policy of
your own can use them too.
"""
from .asl import ASL
from .base import (DecodeView, EvictionPolicy, LayerView, PrefillInfo, Selection, SelectionPolicy, fill_unevicted, sort_keep,
                   top_prefix)
from .fixed import FastKV
from .full import Full
from .gemfilter import ASLTwoPass, GemFilter
from .pyramidinfer import PyramidInfer, PyramidInferDecode
from .snapkv import SnapKV
from .streaming import StreamingLLM
from .topp import TopP

__all__ = ["ASL", "ASLTwoPass", "DecodeView", "EvictionPolicy", "FastKV", "Full", "GemFilter", "LayerView", "PrefillInfo",
           "PyramidInfer", "PyramidInferDecode", "Selection", "SelectionPolicy", "SnapKV", "StreamingLLM", "TopP", "fill_unevicted", "sort_keep", "top_prefix"]
