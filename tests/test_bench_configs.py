"""The model shapes committed for the GPU runs (benchmarks/configs/) load, and are the published ones."""
import json
from pathlib import Path

import pytest

from asl.models.config import ModelConfig

CONFIGS = Path(__file__).resolve().parent.parent / "benchmarks" / "configs"


def parameters(c: ModelConfig) -> int:
    attention = c.hidden_size * c.num_heads * c.head_dim * 2 + c.hidden_size * c.num_kv_heads * c.head_dim * 2
    if c.qkv_bias:
        attention += c.num_heads * c.head_dim + 2 * c.num_kv_heads * c.head_dim
    layer = attention + 3 * c.hidden_size * c.intermediate_size + 2 * c.hidden_size
    return c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2) + c.num_layers * layer + c.hidden_size


@pytest.mark.parametrize("name,published,layers", [
    ("llama-3.1-8b-instruct", 8.03e9, 32), ("qwen2.5-7b-instruct", 7.62e9, 28), ("qwen2.5-0.5b", 0.63e9, 24),
])
def test_committed_configs_have_the_published_shapes(name, published, layers):
    config = ModelConfig.from_hf(json.loads((CONFIGS / f"{name}.json").read_text()))
    assert config.num_layers == layers
    assert abs(parameters(config) - published) / published < 0.01
