"""Silence becomes a warning (issue 34): a policy that quietly does nothing is said once."""
import random
import warnings
from dataclasses import dataclass

import pytest

import asl
from tiny import CharTokenizer, random_text, tiny_pair

TOK = CharTokenizer()


@pytest.fixture(scope="module")
def model():
    return tiny_pair("llama", num_hidden_layers=6, max_position_embeddings=512, eos_token_id=None)[1]


def said(fn) -> list[str]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught]


def test_asl_that_never_selects_says_so_once_with_its_lowest_ratio(model):
    policy = asl.ASL(tau=0.0, l_min=2, l_obs=2, select_tokens=40, window=8)
    text = random_text(random.Random(0), 120)
    first = said(lambda: asl.generate(model, TOK, text, max_new_tokens=1, selection=policy))
    assert [m for m in first if "never selected on 1 of 1 prompts: the lowest ratio was" in m and "tau=0" in m]
    assert not [m for m in said(lambda: asl.generate(model, TOK, text, max_new_tokens=1, selection=policy))
                if "never selected" in m]  # once per policy object
    eager = asl.ASL(tau=1.5, l_min=2, l_obs=2, select_tokens=40, window=8)
    assert not [m for m in said(lambda: asl.generate(model, TOK, text, max_new_tokens=1, selection=eager))
                if "never selected" in m]
    short = asl.ASL(tau=0.0, l_min=2, l_obs=2, select_tokens=400, window=8)  # nothing to prune: nothing to say
    assert not [m for m in said(lambda: asl.generate(model, TOK, text, max_new_tokens=1, selection=short))
                if "never selected" in m]


@dataclass
class Broken(asl.EvictionPolicy):
    budget: int = 32

    def keep(self, layer, view):
        return None  # a scorer that forgot to evict


def test_an_eviction_over_its_budget_that_keeps_everything_says_so_once(model):
    policy = Broken()
    text = random_text(random.Random(1), 100)
    first = said(lambda: asl.generate(model, TOK, text, max_new_tokens=1, eviction=policy))
    assert [m for m in first if "Broken(budget=32).keep() returned None" in m and "100 tokens" in m]
    assert not said(lambda: asl.generate(model, TOK, text, max_new_tokens=1, eviction=policy))
    fits = said(lambda: asl.generate(model, TOK, text[:20], max_new_tokens=1, eviction=Broken()))
    assert not [m for m in fits if "returned None" in m]  # within its budget: keeping all is right


def test_for_model_says_which_calibration_it_used():
    from asl.calibration import bundled_file, read

    tau = read(bundled_file("smollm2-135m"))["asl"]["tau"]
    messages = said(lambda: asl.ASL.for_model("smollm2-135m"))
    assert [m for m in messages if m.startswith(f"ASL.for_model: tau {tau:g}") and "calibrated (" in m
            and "held-out answers equal the full cache's" in m]
