"""kvpress side of benchmarks/kvpress_parity.py: each press on each context, as kvpress runs
it, recording per layer and KV head the entries it keeps, then a greedy answer to the
question on the compressed cache. Runs with .venv-kvpress/bin/python (benchmarks/peers_env.sh);
it does not import `asl`.

    .venv-kvpress/bin/python benchmarks/kvpress_parity_worker.py --model-dir DIR --cases cases.json --out out.json

cases.json: {"ratio", "new_tokens", "presses": {name: [Press class, {kwargs}]},
"prompts": {name: [{"id", "context_ids", "question_ids"}]}} (a list for every press in the decoding
mode). The context is compressed in one forward
under `with press(model)` (kvpress's hook at the end of each layer's prefill), the question is
fed after it at positions context_length + i, and greedy decoding goes on from there, as
kvpress's KVPressTextGenerationPipeline does. The kept entries are the press's own
`scores.topk(n_kept)` (ScorerPress.compress), read by wrapping its `score`.
"""
from __future__ import annotations

import argparse
import importlib.metadata as md
import inspect
import json

import torch


def layer_keys(cache) -> list:
    """Per layer, the cache's keys [G, n, d] (transformers' DynamicCache, either layout)."""
    if hasattr(cache, "layers"):
        return [layer.keys[0] for layer in cache.layers]
    return [k[0] for k in cache.key_cache]


def kept_by_matching(press, model, context_ids: list[int], full: list):
    """For a press that is not a ScorerPress (ChunkKVPress): prefill under it, then find each
    stored key among the uncompressed prefill's keys of the same layer (a prefill press
    changes what is stored, not the forward, so they are the same numbers)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    with torch.inference_mode(), press(model):
        model(input_ids=torch.tensor([context_ids]), past_key_values=cache, use_cache=True)
    kept = []
    for stored, whole in zip(layer_keys(cache), full):
        heads = []
        for g in range(stored.shape[0]):
            same = (stored[g][:, None, :] == whole[g][None, :, :]).all(-1)  # [k, n]
            assert bool(same.any(-1).all()), "a stored key matches no key of the prefill"
            heads.append(sorted(same.float().argmax(-1).tolist()))
        kept.append(heads)
    return kept, cache


def kept_by_layer(press, model, context_ids: list[int], scorer=None):
    """Prefill under the press; per layer, the kept indices per KV head (sorted), read from the
    topk of its scores (of `scorer`'s, for a wrapper that keeps what its scorer's topk says)."""
    from transformers import DynamicCache

    from kvpress.utils import compute_n_kept

    scorer = scorer or press
    kept, score = {}, scorer.score

    def recording(module, hidden_states, keys, values, attentions, kwargs):
        scores = score(module, hidden_states, keys, values, attentions, kwargs)
        chunk = getattr(scorer, "chunk_length", None) or keys.shape[2]  # FinchPress's chunks, as its compress cuts them
        picks = [start + part.topk(compute_n_kept(part.shape[2], scorer.compression_ratio), dim=-1).indices
                 for start in range(0, keys.shape[2], chunk) for part in [scores[:, :, start:start + chunk]]]
        kept[module.layer_idx] = torch.cat(picks, dim=-1)[0].sort(-1).values.tolist()
        return scores

    scorer.score = recording
    cache = DynamicCache()
    ids = torch.tensor([context_ids])
    with torch.inference_mode(), press(model):
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    return [kept[i] for i in range(len(kept))], cache


def masks_keys(cls: str, kwargs: dict) -> bool:
    """Whether the press cuts by masking keys (module.masked_key_indices) rather than storing fewer."""
    return cls in ("KVzipPress", "KVgradPress") or (cls == "KVComposePress" and kwargs.get("structured") is False)


def kvzip_kept(press, model, context_ids: list[int]):
    """KVzipPress's (and KVgradPress's) cut: prefill under it (its replay runs as the press's context closes), then
    per layer the entries its `masked_key_indices` leave unmasked, per KV head."""
    from transformers import DynamicCache

    model.set_attn_implementation("sdpa")  # KVzipPress refuses eager
    cache = DynamicCache()
    with torch.inference_mode(), press(model):
        model(input_ids=torch.tensor([context_ids]), past_key_values=cache, use_cache=True)
    kept = []
    for layer in model.model.layers:
        _, heads, columns = layer.self_attn.masked_key_indices
        mask = torch.ones(model.config.num_key_value_heads, len(context_ids), dtype=torch.bool)
        mask[heads, columns] = False
        kept.append([row.nonzero().flatten().tolist() for row in mask])
    return kept, cache


def answer(model, cache, context_length: int, question_ids: list[int], new_tokens: int) -> list[int]:
    """Greedy tokens after the question, at the positions after the uncompressed context, up
    to and with the first end-of-sequence token (as asl.generate stops)."""
    eos = model.generation_config.eos_token_id
    eos = set(eos if isinstance(eos, list) else [] if eos is None else [eos])
    out, ids = [], torch.tensor([question_ids])
    position = context_length
    with torch.inference_mode():
        for _ in range(new_tokens):
            positions = torch.arange(position, position + ids.shape[1])[None]
            logits = model(input_ids=ids, past_key_values=cache, position_ids=positions, use_cache=True).logits
            token = int(logits[0, -1].argmax())
            out.append(token)
            if token in eos:
                break
            position += ids.shape[1]
            ids = torch.tensor([[token]])
    return out


def decode_under(kvpress, model, cls: str, kwargs: dict, prompt: dict, new_tokens: int) -> list[int]:
    """The context and its question as one prompt, then greedy tokens, all under the press (a
    decoding press leaves the prefill alone and cuts the cache while the answer is generated)."""
    from transformers import DynamicCache

    inner = next(k for k in ("base_press", "press") if k in kwargs)
    scorer, scorer_kwargs = kwargs[inner]
    press = getattr(kvpress, cls)(**{inner: getattr(kvpress, scorer)(**scorer_kwargs)},
                                  **{k: v for k, v in kwargs.items() if k != inner})
    model.set_attn_implementation("sdpa")  # as kvpress's pipeline runs; its patch reads masked_key_indices
    for layer in model.model.layers:
        layer.self_attn.masked_key_indices = None
    with press(model):
        return answer(model, DynamicCache(), 0, prompt["context_ids"] + prompt["question_ids"], new_tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model-dir", required=True)
    ap.add_argument("--cases", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    import kvpress
    from transformers import AutoModelForCausalLM, DynamicCache

    cases = json.load(open(args.cases))
    # eager attention: ObservedAttentionPress reads the attention weights; float32 for parity
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, torch_dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    if getattr(model.config, "head_dim", None) is None:  # CriticalKVPress reads config.head_dim, which
        model.config.head_dim = model.config.hidden_size // model.config.num_attention_heads  # Qwen2Config lacks
    results, full = {}, {}
    if cases.get("decoding"):  # kvpress_decoding_parity.py: the press acts while the answer is generated
        for name, (cls, kwargs) in cases["presses"].items():
            for prompt in cases["prompts"]:
                results.setdefault(name, []).append(
                    {"id": prompt["id"], "answer": decode_under(kvpress, model, cls, kwargs, prompt, cases["new_tokens"])})
        cases["presses"] = {}
    for name, (cls, kwargs) in cases["presses"].items():
        for prompt in cases["prompts"][name]:  # per method (a method's contexts may open with the template's preamble)
            # ChunkKVPress refuses attention weights: sdpa for it (and for the keys it is matched against)
            model.set_attn_implementation("sdpa" if "press" in kwargs else "eager")
            if cls == "ComposedPress":  # a scorer at the ratio, then a press of its own settings (ThinKPress)
                (first, first_kwargs), (then, then_kwargs) = kwargs["presses"]
                press = kvpress.ComposedPress([getattr(kvpress, first)(compression_ratio=cases["ratio"], **first_kwargs),
                                               getattr(kvpress, then)(**then_kwargs)])
            elif "press" in kwargs:  # a wrapper: its press built with the ratio, the wrapper around it
                inner, inner_kwargs = kwargs["press"]
                press = getattr(kvpress, cls)(press=getattr(kvpress, inner)(compression_ratio=cases["ratio"],
                                                                            **inner_kwargs),
                                              **{k: v for k, v in kwargs.items() if k != "press"})
            elif "compression_ratio" not in inspect.signature(getattr(kvpress, cls)).parameters:  # SimLayerKVPress
                press = getattr(kvpress, cls)(**kwargs)
            else:
                press = getattr(kvpress, cls)(compression_ratio=cases["ratio"], **kwargs)
            rerotated = cls in ("KeyRerotationPress", "FinchPress")  # stored keys turned: read from the topk
            if cls == "FinchPress":  # context, delimiter, question: the question is its window (the delimiter an
                delimiter = model.config.vocab_size - 1  # id no prompt holds; the press drops its embedding)
                assert delimiter not in prompt["context_ids"] + prompt["question_ids"]
                press.delimiter_token_id = delimiter
                kept, cache = kept_by_layer(press, model, prompt["context_ids"] + [delimiter] + prompt["question_ids"])
            elif rerotated:
                kept, cache = kept_by_layer(press, model, prompt["context_ids"], press.press)
            elif masks_keys(cls, kwargs):  # its cut comes after a replay, as masked keys (kvpress's attention patch)
                kept, cache = kvzip_kept(press, model, prompt["context_ids"])
            elif cls == "ComposedPress" and "compression_ratio" not in kwargs["presses"][1][1]:  # the entries are the
                # first press's topk, the second (ThinKPress) changes them after; two sequence presses: by matching
                kept, cache = kept_by_layer(press, model, prompt["context_ids"], press.presses[0])
            elif not isinstance(press, kvpress.ScorerPress) or "press" in kwargs:  # by matching the stored keys
                key = (prompt["id"], model.config._attn_implementation)  # the same attention, the same numbers
                if key not in full:
                    cache = DynamicCache()
                    with torch.inference_mode():
                        model(input_ids=torch.tensor([prompt["context_ids"]]), past_key_values=cache, use_cache=True)
                    full[key] = layer_keys(cache)
                kept, cache = kept_by_matching(press, model, prompt["context_ids"], full[key])
            else:
                kept, cache = kept_by_layer(press, model, prompt["context_ids"])
            model.set_attn_implementation("sdpa" if masks_keys(cls, kwargs) else "eager")  # the mask: sdpa only
            if cls == "FinchPress":  # kvpress keeps the question in the cache and asks it again; asl drops the hint
                results.setdefault(name, []).append({"id": prompt["id"], "kept": kept, "answer": None,
                                                     "answer_error": "not compared: kvpress keeps the question in "
                                                                     "the cache, asl.compress drops its hint"})
                continue
            try:
                start = cache.get_seq_length() if rerotated else len(prompt["context_ids"])  # as kvpress's pipeline
                tokens, error = answer(model, cache, start, prompt["question_ids"],
                                       cases["new_tokens"]), None
            except RuntimeError as e:  # ChunkKVPress can leave layers of different lengths, which decoding refuses
                tokens, error = None, str(e).splitlines()[0]
            results.setdefault(name, []).append({"id": prompt["id"], "kept": kept, "answer": tokens,
                                                 "answer_error": error})
            print(f"kvpress {name} {prompt['id']}: layer 0 keeps {len(kept[0][0])} of {len(prompt['context_ids'])}",
                  flush=True)
    versions = {p: md.version(p) for p in ("kvpress", "transformers", "torch")}
    with open(args.out, "w") as f:
        json.dump({"versions": versions, "results": results}, f)


if __name__ == "__main__":
    main()
