"""Our decoder for the Llama, Mistral, Qwen2, Qwen3, Phi-3, Mixtral and Qwen3-MoE families, its cache and its loaders."""
from .config import SUPPORTED_MODEL_TYPES, ModelConfig
from .decoder import Decoder

__all__ = ["Decoder", "ModelConfig", "SUPPORTED_MODEL_TYPES"]
