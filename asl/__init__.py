"""asl: layer-wise token pruning and KV-cache reduction for LLM inference."""
from .generation import GenerationOutput, Trace, generate
from .models import Decoder, ModelConfig
from .models.loading import BUNDLED, load

__all__ = ["BUNDLED", "Decoder", "GenerationOutput", "ModelConfig", "Trace", "generate", "load"]
