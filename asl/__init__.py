"""asl: layer-wise token pruning and KV-cache reduction for LLM inference."""
import os as _os

# OpenMP threads that wait for work sleep instead of spinning: on a machine where another
# process holds a core, spinning threads made a prefill 1.5x and a decode step 2.3x slower,
# and on an idle one sleeping costs nothing measurable (benchmarks/threads_busy.py). Read when
# the OpenMP runtime starts, so only where torch is imported after asl; OMP_WAIT_POLICY=ACTIVE
# in the environment keeps spinning.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from .apply import Applied, apply
from .context import CompressedContext, compress
from .generation import GenerationOutput, SequenceTrace, Trace, generate
from .hooked import HookedModel
from .models import Decoder, ModelConfig
from .models.dtype import resolve_dtype
from .models.export import export
from .models.interop import from_transformers
from .models.loading import BUNDLED, load
from .oracle import LayerOutcome, OracleResult, oracle_layer
from .presets import preset
from .sweep import SweepOutput, prompt_trunk, sweep
from .policies import (ASL, CAM, CAMDecoding, SqueezedAttention, TOVA, LazyLLM, AdaKV, ChunkKV, PerChunk, Merging, Blockwise, Chain, KVzip, KVgrad, KVCompose, ThinK, CapKV, EntropyGatedChunkKV, CUR, Compactor, Leverage, NonCausalAttention, CriticalKV, ExpectedAttention, SimLayerKV, KeyRerotation, DecodingEviction, Finch, PerLayerRatio, ThresholdEviction, KeyDiff, KNorm, LagKV, ObservedAttention, RandomScores, EntropyStop, FittedStop, JaccardStop, Proportional, PyramidKV, ASLTwoPass, DecodeView, EvictionPolicy, FastKV, Full, GemFilter, LayerView, PrefillInfo,
                       PyramidInfer, PyramidInferDecode, ScorerEviction, ScorerSelection, Selection, SelectionPolicy,
                       SnapKV, StreamingLLM, TopP)

__all__ = [
    "ASL", "CAM", "CAMDecoding", "SqueezedAttention", "LazyLLM", "LagKV", "ChunkKV", "PerChunk", "Merging", "Blockwise", "Chain", "KVzip", "KVgrad", "KVCompose", "ThinK", "CapKV", "EntropyGatedChunkKV", "CUR", "Compactor", "Leverage", "NonCausalAttention", "CriticalKV", "ExpectedAttention", "SimLayerKV", "KeyRerotation", "DecodingEviction", "Finch", "PerLayerRatio", "ThresholdEviction", "TOVA", "KeyDiff", "KNorm", "ObservedAttention", "RandomScores", "AdaKV", "EntropyStop", "FittedStop", "JaccardStop", "Proportional", "PyramidKV", "Applied", "LayerOutcome", "SequenceTrace", "apply", "export", "ASLTwoPass", "BUNDLED", "CompressedContext", "DecodeView", "Decoder", "EvictionPolicy", "FastKV", "Full", "GemFilter", "GenerationOutput", "HookedModel",
    "LayerView", "ModelConfig", "PrefillInfo", "PyramidInfer", "PyramidInferDecode", "ScorerEviction", "ScorerSelection", "Selection", "SelectionPolicy", "SnapKV", "StreamingLLM", "Trace", "TopP",
    "OracleResult", "SweepOutput", "compress", "from_transformers", "generate", "load", "oracle_layer", "preset", "prompt_trunk", "resolve_dtype", "sweep",
]
