"""generate(): tokenise, prefill layer by layer, then a (optionally compiled) one-token loop.

The decode step writes each new token into static per-layer buffers, so with
`compile=True` it is traced once by `torch.compile` and replayed (gpt-fast style); the
eager path runs the very same function.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .answers import cut_at_stop, hits_stop
from .context import CompressedContext, extend
from .decoding import DecodeEviction
from .models.cache import KVCache, LayerCache
from .retrieval import attended_share
from .models.decoder import Decoder, decode_attention
from .models.interop import as_decoder
from .policies.base import EvictionPolicy, SelectionPolicy, check_policies, per_call
from .policies.decoding import DecodingEviction
from .policies.streaming import StreamingLLM
from .prefill import prefill
from .revival import Revival
from .generation_settings import DecodeSettings, resolve
from .hooked import HookedModel, check_hooked, evicted_prefill
from .hooked import decode_step as transformers_step
from .sampling import Sampler


@dataclass
class SequenceTrace:
    """What happened to one sequence of the batch. Token counts are tokens (one KV entry per
    token per KV head); `kv_bytes` is bytes of keys and values in the model's dtype; layers
    are numbered from 0."""

    prompt_tokens: int  # tokens of the prompt (with a compressed context: its tokens plus the question's)
    alive_tokens: list[int]  # [L] tokens each layer ran on during the prefill
    kv_tokens: list[int]  # [L] KV entries each layer stored after the prefill (its fullest KV head)
    kv_tokens_per_head: list[list[int]]  # [L][G] KV entries per layer and KV head after the prefill
    kv_bytes: int  # bytes of the keys and values stored after the prefill, all layers and heads
    new_tokens: int = 0  # tokens generated, EOS included
    selection_layer: int | None = None  # the layer after which tokens were selected, if any
    ratios: dict[int, float] = field(default_factory=dict)  # ASL: layer -> relative rank variance (unitless)
    signals: dict[int, dict[str, float]] = field(default_factory=dict)  # an adaptive rule's: layer -> name -> value
    kept_indices: list[int] = field(default_factory=list)  # prompt indices (0-based) alive at the last layer
    peak_kv_tokens: list[int] = field(default_factory=list)  # [L] most entries one KV head held while decoding
    decode_kv_tokens: dict[int, list[int]] = field(default_factory=dict)  # decode step -> [L] entries of the
    # fullest KV head right after a decode-time eviction compacted the caches at that step
    revived_token_layers: int = 0  # LazyLLM: (token, layer) pairs its decoding computed from the aux cache
    attended_share: float | None = None  # a query-time retrieval's (asl.SqueezedAttention): the share of the
    # clustered entries its queries attended, over layers, query heads and steps (None: no retrieval)


@dataclass
class Trace:
    """A call's timings (seconds, wall clock, device synchronised) and its sequences."""

    prefill_s: float  # seconds from the first layer to the first token, policies included
    decode_s_per_token: float  # seconds per decode step after the first token (TPOT), compile time excluded
    kv_bytes: int  # bytes of keys and values stored after the prefill, all sequences
    policy_s: float = 0.0  # seconds of prefill_s spent scoring, ranking and choosing
    sequences: list[SequenceTrace] = field(default_factory=list)
    compile_s: float = 0.0  # seconds torch.compile spent tracing during decode (compile=True)
    compiles: int = 0  # decode steps that compiled a new graph (0 once every shape is warm)
    decode_compactions: int = 0  # layer caches a decode-time eviction compacted (count, all layers)

    def _single(self, name: str):
        if len(self.sequences) != 1:
            raise AttributeError(f"trace.{name} is per sequence for a batch: use trace.sequences[i].{name}")
        return getattr(self.sequences[0], name)

    @property
    def alive_tokens(self) -> list[int]:
        return self._single("alive_tokens")

    @property
    def kv_tokens(self) -> list[int]:
        return self._single("kv_tokens")

    @property
    def kv_tokens_per_head(self) -> list[list[int]]:
        return self._single("kv_tokens_per_head")

    @property
    def selection_layer(self) -> int | None:
        return self._single("selection_layer")

    @property
    def signals(self) -> dict[int, dict[str, float]]:
        return self._single("signals")

    @property
    def ratios(self) -> dict[int, float]:
        return self._single("ratios")

    @property
    def kept_indices(self) -> list[int]:
        return self._single("kept_indices")


@dataclass
class GenerationOutput:
    text: str | list[str]
    tokens: list[int] | list[list[int]]
    trace: Trace


def decode_step(model: Decoder, tokens, positions, slots, caches: list[LayerCache], qslot=None) -> torch.Tensor:
    """Feed tokens [B] at positions [B]; layer l writes its cache's slot slots[l]. Returns logits [B, V].

    With `qslot` (an eviction that reads recent queries), layer l also puts its query into
    its cache's ring at qslot [1]."""
    h, rope = model.embed(tokens[:, None], positions[:, None])
    for i, layer in enumerate(model.layers):
        cache, device = caches[i], model.layer_device(i)
        if device != h.device:  # a model placed across devices: the next stage
            h, rope, positions = h.to(device), tuple(t.to(device) for t in rope), positions.to(device)
        q, k, v = layer.project(h, *rope)
        cache.write(slots[i : i + 1].to(device), k, v)
        if qslot is not None:
            cache.write_query(qslot, q)
        seen = cache.valid
        if layer.window is not None:  # a sliding-window layer sees the positions after p - window
            cache.positions.index_copy_(2, slots[i : i + 1], positions[:, None, None].expand(-1, cache.positions.shape[1], 1))
            seen = seen & (cache.positions > (positions - layer.window)[:, None, None])
        h = layer.finish(h, decode_attention(q, cache.k, cache.v, seen, layer.self_attn.softcap, cache.sparse))
    return model.logits(h[:, -1])


COMPILE_MODES = (False, True, "reduce-overhead")
_compiled_steps: dict[tuple, object] = {}


def _step_fn(compile: bool | str, weight: torch.Tensor):
    """The decode step: eager, compiled (`True`), or compiled and replayed as a CUDA graph
    (`"reduce-overhead"`: the static per-layer buffers are marked as fixed addresses, so
    the graph writes into them in place; on the CPU torch.compile runs it without graphs).
    float64 on the CPU compiles with 256-bit vectors: inductor's 512-bit float64 kernels for
    the evicting step corrupt the heap in torch 2.13 (tests/test_decode_eviction.py)."""
    if not compile:
        return decode_step
    mode = "default" if compile is True else compile
    narrow = weight.device.type == "cpu" and weight.dtype == torch.float64
    if (mode, narrow) not in _compiled_steps:
        options = {"cpp.simdlen": 256, **({"triton.cudagraphs": True} if mode == "reduce-overhead" else {})}
        _compiled_steps[mode, narrow] = (
            torch.compile(decode_step, fullgraph=True, options=options) if narrow else
            torch.compile(decode_step, fullgraph=True, mode=None if mode == "default" else mode))
    return _compiled_steps[mode, narrow]


def _mark_static(buffers) -> None:
    """CUDA graphs may write into an input only if its address never changes: ours don't."""
    import torch._dynamo

    for tensor in buffers:
        torch._dynamo.mark_static_address(tensor)


SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed takes


def _check_prompts(prompts, compile, seed) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    if not isinstance(prompts, (list, tuple)) or not prompts:
        raise ValueError("prompt_or_prompts must be a non-empty string or a non-empty list of strings")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise ValueError(f"prompt {i} is a {type(p).__name__}, not a string; every prompt must be a string")
        if not p.strip():
            raise ValueError(f"prompt {i} is empty; every prompt must be a non-empty string")
        try:
            p.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"prompt {i} is not valid text: {e.reason} at character {e.start} "
                             f"({p[e.start]!r}); a prompt must encode as UTF-8") from None
    check_run(compile, seed)
    return list(prompts)


def check_run(compile, seed) -> None:
    if not isinstance(seed, int) or isinstance(seed, bool) or not SEED_RANGE[0] <= seed < SEED_RANGE[1]:
        raise ValueError(f"seed must be an integer in [-2**63, 2**64), got {seed!r}")
    if not any(compile is mode for mode in COMPILE_MODES[:2]) and compile != COMPILE_MODES[2]:
        raise ValueError(f'compile must be False, True or "reduce-overhead" (CUDA graphs), got {compile!r}')


def _check_cache(cache, selection, eviction, chat) -> None:
    if not isinstance(cache, CompressedContext):
        raise ValueError(f"cache must be what asl.compress returned, got {type(cache).__name__}")
    if selection is not None or (eviction is not None and eviction.every == 0):
        raise ValueError("selection and eviction act when the context is compressed: pass them to asl.compress, "
                         "not to generate(..., cache=...), which takes only an eviction that acts while the answer "
                         "is generated (asl.DecodingEviction, a rolling asl.StreamingLLM)")
    if eviction is not None and not isinstance(eviction, (DecodingEviction, StreamingLLM)):
        raise ValueError(f"generate(..., cache=...) runs DecodingEviction and StreamingLLM while answering; "
                         f"{type(eviction).__name__} reads what its own prefill handed it: run it on the whole prompt")
    if chat and cache.chat_suffix is None:
        raise ValueError("chat=True: the context was compressed without its chat template; compress it with "
                         "asl.compress(..., chat=True), then each question is wrapped in the template's rest")
    if not chat and cache.chat_suffix is not None:
        raise ValueError("the context was compressed with chat=True (it opens a user turn): pass chat=True so "
                         "the question closes the turn and the assistant's answer begins")


def check_revival(selection, compile, cache) -> None:
    """LazyLLM's decoding (revive=True) runs its own eager step over every token it kept or revives."""
    if getattr(selection, "revives", False) and (compile or cache is not None):
        raise ValueError(f"{type(selection).__name__}(revive=True) decodes with its own eager step: it takes no compile "
                         "and no compressed cache (revive=False is the static form, which does)")


def check_streamer(streamer, batch: int) -> None:
    if streamer is None:
        return
    if not (callable(getattr(streamer, "put", None)) and callable(getattr(streamer, "end", None))):
        raise ValueError(f"streamer must have put() and end() (a transformers TextStreamer or "
                         f"TextIteratorStreamer), got {type(streamer).__name__}")
    if batch != 1:
        raise ValueError(f"streamer works with one prompt (as in transformers), got {batch}")


def encode(tokenizer, prompts: list[str], chat: bool, special: bool = True) -> list[list[int]]:
    """Token ids per prompt, through the chat template when `chat`; without the tokenizer's
    special tokens (BOS) when not `special` (a question appended to a compressed context)."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError("chat=True but the tokenizer has no chat template")
        texts = [
            tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in prompts
        ]
        return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    return [tokenizer(p, add_special_tokens=special)["input_ids"] for p in prompts]


def left_pad(ids: list[list[int]], device) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(x) for x in ids)
    input_ids = torch.zeros(len(ids), n, dtype=torch.long)
    valid = torch.zeros(len(ids), n, dtype=torch.bool)
    for i, x in enumerate(ids):
        input_ids[i, n - len(x) :] = torch.tensor(x)
        valid[i, n - len(x) :] = True
    return input_ids.to(device), valid.to(device)


def eos_ids(model: Decoder, tokenizer) -> set[int]:
    ids = set(model.config.eos_token_ids)
    if getattr(tokenizer, "eos_token_id", None) is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA) so a wall-clock time covers its work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompt_or_prompts: str | list[str],
    max_new_tokens: int | None = None,  # None: the generation_config's, else 64
    temperature: float | None = None,  # None: greedy, or the generation_config's when it samples
    top_k: int | None = None,
    top_p: float | None = None,
    compile: bool | str = False,  # True: torch.compile the decode step; "reduce-overhead": and CUDA graphs
    stop: list[str] | None = None,  # end once one appears after the first word; cut from the text
    chat: bool = False,
    seed: int = 0,
    selection: SelectionPolicy | None = None,
    eviction: EvictionPolicy | None = None,
    cache=None,
    *,
    generation_config=None,
    do_sample: bool | None = None,
    repetition_penalty: float | None = None,
    min_new_tokens: int | None = None,
    eos_token_id: int | list[int] | None = None,
    streamer=None,
) -> GenerationOutput:
    """Generate from one prompt (returns str / list[int]) or a batch (lists of those).

    `model` is our Decoder or a loaded transformers model (converted once, sharing its
    weights). `selection` decides which tokens propagate to deeper layers during prefill,
    `eviction` which KV entries each layer keeps; any pair composes. With `cache` (what
    `asl.compress` returned) the prompts are questions about its context: only they are
    prefilled, over a copy of the compressed entries.

    As in transformers, a `generation_config` (a `GenerationConfig`) gives the token choice
    and an explicit keyword overrides its field; `streamer` (a `TextStreamer` or
    `TextIteratorStreamer`) receives the prompt, then each new token, then `end()`.
    """
    single = isinstance(prompt_or_prompts, str)
    prompts = _check_prompts(prompt_or_prompts, compile, seed)
    settings = resolve(generation_config, max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                       top_p=top_p, stop=stop, do_sample=do_sample, repetition_penalty=repetition_penalty,
                       min_new_tokens=min_new_tokens, eos_token_id=eos_token_id)
    check_streamer(streamer, len(prompts))
    check_policies(selection, eviction)
    if cache is not None:
        _check_cache(cache, selection, eviction, chat)
    model = as_decoder(model, tokenizer)
    if isinstance(model, HookedModel):  # a family our decoder lacks: transformers' own forward, eviction only
        check_hooked(model, selection, eviction, cache, compile, streamer)
        return generate_hooked(model, tokenizer, encode(tokenizer, prompts, chat), settings, eviction, seed, single)
    if cache is not None and chat:  # the question closes the user turn the context opened
        ids = [tokenizer(p + cache.chat_suffix, add_special_tokens=False)["input_ids"] for p in prompts]
    else:
        ids = encode(tokenizer, prompts, chat, special=cache is None)
    return generate_ids(model, tokenizer, ids, settings, compile=compile, seed=seed, selection=selection,
                        eviction=eviction, cache=cache, streamer=streamer, single=single)


def generate_hooked(hooked: HookedModel, tokenizer, ids: list[list[int]], settings: DecodeSettings, eviction,
                    seed: int, single: bool) -> GenerationOutput:
    """generate() on a transformers model of a family our decoder lacks (asl/hooked.py): one
    prompt at a time, its prefill cut by the eviction, then decoded by the model itself."""
    eviction = per_call(eviction)
    device = hooked.device
    eos = set(settings.eos_token_id) if settings.eos_token_id is not None else \
        {*([] if hooked.config.eos_token_id is None else torch.tensor(hooked.config.eos_token_id).flatten().tolist()),
         *([tokenizer.eos_token_id] if getattr(tokenizer, "eos_token_id", None) is not None else [])}
    eos = torch.tensor(sorted(eos), dtype=torch.long, device=device)
    generated, seqs, prefill_s, decode_s, steps, policy_s = [], [], 0.0, 0.0, 0, 0.0
    check_fits(hooked, ids, settings.max_new_tokens)
    for x in ids:
        sampler = Sampler(settings, torch.Generator(device=device).manual_seed(seed), [x], eos, hooked.config.vocab_size)
        start = time.perf_counter()
        logits, cache, spent = evicted_prefill(hooked, x, eviction)
        token = sampler(logits)
        sync(device)
        prefill_s, policy_s = prefill_s + time.perf_counter() - start, policy_s + spent
        heads = [[entry.keys.shape[-2]] * entry.keys.shape[1] for entry in cache.layers]
        entry_bytes = 2 * cache.layers[0].keys.shape[-1] * cache.layers[0].keys.element_size()
        out, start = [], time.perf_counter()
        for t in range(settings.max_new_tokens):
            out.append(int(token))
            if int(token) in eos.tolist() or (settings.stop and hits_stop(tokenizer, out, settings.stop)):
                break
            if t == settings.max_new_tokens - 1:
                break
            token = sampler(transformers_step(hooked, token, len(x) + t, cache))
            steps += 1
        sync(device)
        decode_s += time.perf_counter() - start
        generated.append(out)
        seqs.append(SequenceTrace(prompt_tokens=len(x), alive_tokens=[len(x)] * len(heads), kv_tokens=[h[0] for h in heads],
                                  kv_tokens_per_head=heads, kv_bytes=sum(map(sum, heads)) * entry_bytes,
                                  new_tokens=len(out), kept_indices=list(range(len(x)))))
    trace = Trace(prefill_s, decode_s / max(steps, 1), sum(s.kv_bytes for s in seqs), policy_s, seqs)
    texts = [cut_at_stop(tokenizer.decode(g, skip_special_tokens=True), settings.stop) for g in generated]
    return GenerationOutput(texts[0], generated[0], trace) if single else GenerationOutput(texts, generated, trace)


def check_fits(model, ids: list[list[int]], max_new_tokens: int, cache=None) -> None:
    """Each prompt has tokens, and with its answer (after a compressed context's positions)
    fits the model's positions (our Decoder's, or a HookedModel's transformers config); else
    ValueError naming the prompt."""
    limit = getattr(model.config, "max_position_embeddings", None) or float("inf")
    offset = 0 if cache is None else cache.next_position
    for i, x in enumerate(ids):
        if not x:
            raise ValueError(f"prompt {i} encodes to no tokens")
        if offset + len(x) + max_new_tokens > limit:
            before = "" if cache is None else f" after the compressed context's {offset} positions"
            raise ValueError(
                f"prompt {i} has {len(x)} tokens{before}; with max_new_tokens={max_new_tokens} that exceeds the "
                f"model's maximum of {limit} positions"
            )



@torch.inference_mode()
def generate_ids(model: Decoder, tokenizer, ids: list[list[int]], settings: DecodeSettings, *, compile=False, seed=0,
                 selection=None, eviction=None, cache=None, streamer=None, single=False, trunk=None) -> GenerationOutput:
    """generate() from token ids, its settings resolved (asl.apply's transformers-style
    generate calls it too). `tokenizer` may be None: then there is no text and no stop string.
    `trunk`: these ids' full pass (asl.sweep), forked from instead of run again."""
    check_revival(selection, compile, cache)
    selection, eviction = per_call(selection), per_call(eviction)  # one shared policy serves many threads
    max_new_tokens = settings.max_new_tokens
    check_fits(model, ids, max_new_tokens, cache)
    if settings.stop and tokenizer is None:
        raise ValueError("stop strings need the tokenizer (to read the text generated so far)")
    device = model.lm_head.weight.device
    input_ids, valid = left_pad(ids, device)
    generator = torch.Generator(device=device).manual_seed(seed)
    eos = settings.eos_token_id if settings.eos_token_id is not None else eos_ids(model, tokenizer)
    eos = torch.tensor(sorted(eos), dtype=torch.long, device=device)
    seen = ids if cache is None else [list(cache.context_ids) + x for x in ids]
    sampler = Sampler(settings, generator, seen, eos, model.config.vocab_size)
    if streamer is not None:
        streamer.put(torch.tensor([ids[0]]))
    try:
        sync(device)
        start = time.perf_counter()
        if cache is None:
            pre = prefill(model, input_ids, valid, max_new_tokens, selection, eviction, trunk, tokenizer=tokenizer)
        else:
            pre = extend(model, cache, input_ids, valid, max_new_tokens, eviction)
        tokens = sampler(pre.logits)
        sync(device)
        prefill_s = time.perf_counter() - start
        kv_after_prefill = pre.cache.kv_tokens()  # [L, B, G], before decoding may evict
        on_token = (lambda t: streamer.put(t.cpu())) if streamer is not None else None
        revival = Revival(model, pre, selection) if getattr(selection, "revives", False) else None
        generated, steps, compiling, evicting = decode_loop(model, tokenizer, pre, tokens, max_new_tokens, eos,
                                                             settings.stop, compile, sampler, eviction,
                                                             on_token=on_token, step_fn=revival and revival.step)
        sync(device)
    finally:
        if streamer is not None:
            streamer.end()
    decode_s = time.perf_counter() - start - prefill_s - compiling.seconds
    if cache is None:
        reports = (selection.report() if selection is not None else []) or [{} for _ in ids]
        prompt_tokens = [len(x) for x in ids]
    else:
        reports = [dict(cache.report) for _ in ids]
        prompt_tokens = [cache.context_tokens + len(x) for x in ids]
    tpot = decode_s / max(steps - compiling.steps, 1)
    peaks = evicting.peak_kv_tokens() if evicting is not None else revival.kv_tokens() if revival is not None else \
        [[max(heads) + steps for heads in kv_after_prefill[:, b].tolist()] for b in range(len(ids))]
    after = evicting.kv_tokens_after_compaction() if evicting is not None else [{} for _ in ids]
    shares = attended_share(pre.cache.layers) or [None for _ in ids]
    reports = [{**report, "peak_kv_tokens": peak, "decode_kv_tokens": sizes, "attended_share": share}
               for report, peak, sizes, share in zip(reports, peaks, after, shares)]
    out = _finish(tokenizer, generated, pre, kv_after_prefill, prompt_tokens, settings.stop, prefill_s, tpot, single,
                  reports)
    out.trace.decode_compactions = evicting.compactions if evicting is not None else 0
    out.trace.compile_s, out.trace.compiles = compiling.seconds, compiling.steps
    return out


@dataclass
class _Compiling:
    """Decode steps during which torch.compile traced a new graph, and their time (kept out of TPOT)."""

    steps: int = 0
    seconds: float = 0.0


def _graphs() -> int:
    import torch._dynamo.utils

    return torch._dynamo.utils.counters["stats"]["unique_graphs"]


def decode_loop(model, tokenizer, pre, tokens, max_new_tokens, eos, stop, compile, sampler, eviction=None,
                follow: list[int] | None = None, on_token=None, step_fn=None):
    """Returns the generated ids per sequence (EOS included), the number of decode steps, the
    compile record and, with a decode-time eviction, its record. `sampler` turns logits [B, V]
    into tokens [B]; `on_token` receives each token of a one-sequence batch as it is produced.
    With `follow`, a sequence also stops at its first token that differs from `follow` (the
    oracle's exact-match check). `step_fn`: a step of its own instead of the cache's (LazyLLM's
    revival, asl/revival.py)."""
    cache: KVCache = pre.cache
    step_fn = step_fn or _step_fn(compile, model.lm_head.weight)
    evicting = DecodeEviction(eviction, cache, pre, model.rope) if eviction is not None and (
        eviction.every > 0 or eviction.cache_positions) else None
    if compile == "reduce-overhead":
        _mark_static(t for c in cache.layers for t in (c.k, c.v, c.valid, c.queries) if t is not None)
    batch = tokens.shape[0]
    generated: list[list[int]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=tokens.device)
    steps, compiling = 0, _Compiling()
    for t in range(max_new_tokens):
        for i in (~done).nonzero().flatten().tolist():
            generated[i].append(int(tokens[i]))
        if on_token is not None and not bool(done[0]):
            on_token(tokens[:1])
        done |= torch.isin(tokens, eos)
        if stop:
            done |= torch.tensor([hits_stop(tokenizer, g, stop) for g in generated], device=done.device)
        if follow is not None:
            done |= torch.tensor([g != follow[:len(g)] for g in generated], device=done.device)
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        step = torch.tensor(t, device=tokens.device)
        positions = pre.next_positions + t
        if evicting is not None:  # between steps, outside the compiled graph, in the same buffers
            (slots, positions), extra = evicting.before_step(t, positions), evicting.step_inputs()
        else:
            slots, extra = cache.write_slots(step), ()
        graphs, begun = (_graphs(), time.perf_counter()) if compile else (0, 0.0)
        logits = step_fn(model, tokens, positions, slots, cache.layers, *extra)
        if evicting is not None:
            evicting.after_step()
        if compile and _graphs() != graphs:  # this step compiled (a new shape): its time is compile time
            sync(tokens.device)
            compiling.steps += 1
            compiling.seconds += time.perf_counter() - begun
        tokens = sampler(logits)
        steps += 1
    return generated, steps, compiling, evicting


def _finish(tokenizer, generated, pre, per_head, prompt_tokens, stop, prefill_s, decode_s_per_token, single, reports):
    """per_head [L, B, G]: the entries each layer and KV head stored after the prefill."""
    seqs = []
    for b, gen in enumerate(generated):
        heads = per_head[:, b].tolist()
        seqs.append(
            SequenceTrace(
                prompt_tokens=prompt_tokens[b],
                alive_tokens=pre.alive_tokens[b],
                kv_tokens=[max(h) for h in heads],
                kv_tokens_per_head=heads,
                kv_bytes=sum(map(sum, heads)) * pre.cache.entry_bytes,
                new_tokens=len(gen),
                kept_indices=pre.kept_indices[b],
                **reports[b],
            )
        )
    trace = Trace(prefill_s, decode_s_per_token, int(per_head.sum()) * pre.cache.entry_bytes, pre.policy_s, seqs)
    texts = [cut_at_stop(tokenizer.decode(g, skip_special_tokens=True), stop) if tokenizer is not None else None
             for g in generated]
    if single:
        return GenerationOutput(texts[0], generated[0], trace)
    return GenerationOutput(texts, generated, trace)
