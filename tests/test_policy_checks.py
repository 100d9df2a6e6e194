"""The prefill checks what a policy returns: a keep that points at padding, repeats a column,
is unsorted or out of range fails naming the policy and the sequence (and, for an eviction,
the layer) instead of silently turning padding into tokens."""
import random
import re
from dataclasses import dataclass

import pytest
import torch

import asl
from tiny import CharTokenizer, random_text, tiny_pair


@dataclass
class BadSelection(asl.SelectionPolicy):
    """Returns at layer 1 whatever keep the test gives for every sequence."""

    make: object = None

    def after_layer(self, layer, view):
        if layer != 1:
            return None
        keep = self.make(view)
        return asl.Selection(keep=keep, active=torch.ones(keep.shape[0], dtype=torch.bool))


@dataclass
class BadEviction(asl.EvictionPolicy):
    make: object = None

    def keep(self, layer, view):
        return self.make(view) if layer == 2 else None


def _last(view, k):  # the last k columns: real for every sequence of the batch
    return torch.arange(view.width - k, view.width).expand(view.valid.shape[0], -1).clone()


@pytest.fixture(scope="module")
def model():
    return tiny_pair("llama", num_hidden_layers=4, eos_token_id=None)[1]


PROMPTS = [random_text(random.Random(0), 60), random_text(random.Random(1), 20)]


@pytest.mark.parametrize("make, what", [
    (lambda v: torch.arange(8).expand(2, -1).clone(), "sequence 1"),  # the short prompt's padding
    (lambda v: _last(v, 8).flip(-1), "sequence 0"),  # unsorted
    (lambda v: torch.cat([_last(v, 4), _last(v, 4)], -1).sort(-1).values, "sequence 0"),  # repeated
    (lambda v: _last(v, 4) + 1, "sequence 0"),  # past the last column
    (lambda v: torch.cat([torch.full((2, 1), -1), _last(v, 4)], -1), "sequence 0"),  # a pad before columns
])
def test_a_bad_selection_fails_naming_policy_and_sequence(model, make, what):
    with pytest.raises(ValueError, match=f"BadSelection: Selection.keep of {what} is not a sorted list"):
        asl.generate(model, CharTokenizer(), PROMPTS, max_new_tokens=1, selection=BadSelection(make))


def test_a_bad_selection_shape_fails(model):
    with pytest.raises(ValueError, match=r"Selection.keep must be an integer tensor \[batch=2, k\]"):
        asl.generate(model, CharTokenizer(), PROMPTS, max_new_tokens=1,
                     selection=BadSelection(lambda v: torch.zeros(2, 4, dtype=torch.float32)))


def test_a_bad_eviction_fails_naming_policy_layer_and_sequence(model):
    def onto_padding(view):
        keep = _last(view, 4)[:, None].expand(-1, view.keys.shape[1], -1).clone()
        keep[1, :, 0] = 0  # column 0 of the short prompt is padding
        return keep.sort(-1).values

    with pytest.raises(ValueError, match="BadEviction: keep.. at layer 2 for sequence 1 is not"):
        asl.generate(model, CharTokenizer(), PROMPTS, max_new_tokens=1, eviction=BadEviction(onto_padding))


def test_the_shipped_policies_pass_the_checks_in_a_padded_batch(model):
    for selection, eviction in [(asl.FastKV(layer=1, select_tokens=12, window=4), asl.SnapKV(budget=10, window=4)),
                                (asl.ASL(tau=2.0, l_min=1, l_obs=2, select_tokens=12, window=4), None),
                                (asl.GemFilter(layer=1, select_tokens=12), asl.StreamingLLM(budget=10, sink=2))]:
        asl.generate(model, CharTokenizer(), PROMPTS, max_new_tokens=2, selection=selection, eviction=eviction)


@dataclass
class Returns(asl.SelectionPolicy):
    """Returns at layer 1 whatever the test gives (not necessarily a Selection)."""

    make: object = None

    def after_layer(self, layer, view):
        return self.make(view) if layer == 1 else None


@pytest.mark.parametrize("make, message", [
    (lambda v: _last(v, 4), "Returns.after_layer must return an asl.Selection or None, got Tensor"),
    (lambda v: asl.Selection(keep=torch.full((2, 3), -1), active=torch.ones(2, dtype=torch.bool)),
     "Selection.keep of sequence 0 keeps no token"),
    (lambda v: asl.Selection(keep=_last(v, 5)[:, :4], active=torch.ones(2, dtype=torch.bool)),
     "Selection.keep of sequence 0 drops the last prompt token"),
])
def test_a_selection_that_is_no_selection_or_keeps_nothing_or_drops_the_last_token_fails(model, make, message):
    with pytest.raises(ValueError, match=message):
        asl.generate(model, CharTokenizer(), PROMPTS, max_new_tokens=1, selection=Returns(make))


def test_gemfilter_may_drop_the_last_token_as_its_paper_does(model):
    out = asl.generate(model, CharTokenizer(), PROMPTS[0], max_new_tokens=1,
                       selection=asl.GemFilter(layer=1, select_tokens=12))
    assert asl.GemFilter(layer=1).keeps_last_token is False and len(out.trace.kept_indices) == 12


@pytest.mark.parametrize("make, got", [
    (lambda v: _last(v, 4), "torch.int64 (2, 4)"),  # [B, k]: no head axis
    (lambda v: _last(v, 4)[:, None].expand(-1, 3, -1), "torch.int64 (2, 3, 4)"),  # 3 heads: neither G nor H
    (lambda v: _last(v, 4)[:, None].expand(-1, 2, -1).float(), "torch.float32"),
    (lambda v: [0, 1], "list"),
])
def test_an_eviction_keep_of_the_wrong_kind_fails_naming_the_policy(model, make, got):
    with pytest.raises(ValueError, match=r"BadEviction.keep\(\) must return None or an integer tensor of columns "
                                         r"\[batch=2, heads=2 \(or 4 per query head\), k\], got " + re.escape(got)):
        asl.generate(model, CharTokenizer(), PROMPTS, max_new_tokens=1, eviction=BadEviction(make))
