"""Selection policies (which tokens propagate) and eviction policies (which KV entries stay).

A policy that only scores tokens subclasses `ScorerEviction` or `ScorerSelection` and
implements `score(view)`: the base does the top-k, the window, sorting, padding and the head
reduction. `top_prefix`, `sort_keep` and `fill_unevicted` are the helpers they build their
index lists with (stable top-k, -1 pads last, short sequences kept whole).
"""
from .adaptive import EntropyStop, FittedStop, JaccardStop
from .allocate import AdaKV, Proportional, PyramidKV
from .asl import ASL
from .attention_scores import TOVA, ObservedAttention
from .chunkkv import ChunkKV
from .perchunk import PerChunk
from .merging import Merging
from .blockwise import Blockwise
from .chain import Chain
from .kvzip import KVzip
from .kvgrad import KVgrad
from .kvcompose import KVCompose
from .think import ThinK
from .capkv import CapKV
from .entropy_chunks import EntropyGatedChunkKV
from .cur import CUR
from .cam import CAM, CAMDecoding
from .compactor import Compactor, Leverage, NonCausalAttention
from .decoding import DecodingEviction
from .finch import Finch
from .threshold import PerLayerRatio, ThresholdEviction
from .rerotation import KeyRerotation
from .simlayerkv import SimLayerKV
from .expected_attention import CriticalKV, ExpectedAttention
from .base import (DecodeView, EvictionPolicy, LayerView, PrefillInfo, Selection, SelectionPolicy, fill_unevicted, sort_keep,
                   top_prefix)
from .fixed import FastKV
from .full import Full
from .gemfilter import ASLTwoPass, GemFilter
from .key_scores import KeyDiff, KNorm, LagKV, RandomScores
from .lazyllm import LazyLLM
from .pyramidinfer import PyramidInfer, PyramidInferDecode
from .scorer import ScorerEviction, ScorerSelection
from .snapkv import SnapKV
from .squeezed import SqueezedAttention
from .streaming import StreamingLLM
from .topp import TopP

__all__ = ["ASL", "CAM", "CAMDecoding", "SqueezedAttention", "LazyLLM", "LagKV", "ChunkKV", "PerChunk", "Merging", "Blockwise", "Chain", "KVzip", "KVgrad", "KVCompose", "ThinK", "CapKV", "EntropyGatedChunkKV", "CUR", "Compactor", "Leverage", "NonCausalAttention", "CriticalKV", "ExpectedAttention", "SimLayerKV", "KeyRerotation", "DecodingEviction", "Finch", "PerLayerRatio", "ThresholdEviction", "KNorm", "KeyDiff", "ObservedAttention", "RandomScores", "TOVA", "AdaKV", "EntropyStop", "FittedStop", "JaccardStop", "Proportional", "PyramidKV", "ASLTwoPass", "DecodeView", "EvictionPolicy", "FastKV", "Full", "GemFilter", "LayerView", "PrefillInfo",
           "PyramidInfer", "PyramidInferDecode", "ScorerEviction", "ScorerSelection", "Selection", "SelectionPolicy", "SnapKV", "StreamingLLM", "TopP", "fill_unevicted", "sort_keep", "top_prefix"]
