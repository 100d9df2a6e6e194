"""asl: layer-wise token pruning and KV-cache reduction for LLM inference."""
from .apply import Applied, apply
from .context import CompressedContext, compress
from .generation import GenerationOutput, SequenceTrace, Trace, generate
from .models import Decoder, ModelConfig
from .models.dtype import resolve_dtype
from .models.export import export
from .models.interop import from_transformers
from .models.loading import BUNDLED, load
from .oracle import LayerOutcome, OracleResult, oracle_layer
from .policies import (ASL, ASLTwoPass, DecodeView, EvictionPolicy, FastKV, Full, GemFilter, LayerView, PrefillInfo,
                       PyramidInfer, PyramidInferDecode, ScorerEviction, ScorerSelection, Selection, SelectionPolicy,
                       SnapKV, StreamingLLM, TopP)

__all__ = [
    "ASL", "Applied", "LayerOutcome", "SequenceTrace", "apply", "export", "ASLTwoPass", "BUNDLED", "CompressedContext", "DecodeView", "Decoder", "EvictionPolicy", "FastKV", "Full", "GemFilter", "GenerationOutput",
    "LayerView", "ModelConfig", "PrefillInfo", "PyramidInfer", "PyramidInferDecode", "ScorerEviction", "ScorerSelection", "Selection", "SelectionPolicy", "SnapKV", "StreamingLLM", "Trace", "TopP",
    "OracleResult", "compress", "from_transformers", "generate", "load", "oracle_layer", "resolve_dtype",
]
