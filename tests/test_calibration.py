"""Calibrating ASL's threshold: the replay of its ratios picks the layer ASL really selects at,
the choice is deterministic and inside the searched range, and the per-model file round-trips
and fails clearly when it is bad."""
import copy
import json
import random

import pytest

import asl
from asl.bench import calibrate as cal
from asl.bench.cli import main as bench_main
from asl.calibration import FALLBACK_TAU, CalibrationError, read, settings_for, write
from asl.calibration.search import PromptMeasure, choose, choose_rule, evaluate, kv_share, picked_layer
from tiny import CharTokenizer, random_text, tiny_pair

TOK = CharTokenizer()
LAYERS = 8
TAUS = [0.1, 0.3, 0.5, 0.7, 0.9, 1.2]


@pytest.fixture(scope="module")
def model():
    return tiny_pair("qwen2", num_hidden_layers=LAYERS, max_position_embeddings=512, eos_token_id=None)[1]


@pytest.fixture(scope="module")
def prompts():
    return [cal.Prompt(random_text(random.Random(i), 160), 6, held_out=i % 2 == 1) for i in range(4)]


@pytest.fixture(scope="module")
def found(model, prompts):
    return cal.calibrate(model, TOK, prompts, TAUS, [2, 3], target=0.25, select_tokens=48)


def test_the_replayed_ratios_pick_the_layer_asl_selects_at(model, prompts):
    m, _ = cal.measure(model, TOK, prompts[0], select_tokens=48, l_mins=[2], l_obs=8)
    for tau in TAUS:
        policy = asl.ASL(tau=tau, l_min=2, l_obs=3, select_tokens=48)
        layer = asl.generate(model, TOK, prompts[0].text, max_new_tokens=1, selection=policy).trace.selection_layer
        assert picked_layer(m.ratios[2], tau, 2, LAYERS - 1) == (LAYERS - 1 if layer is None else layer), tau


def test_calibration_is_deterministic_and_inside_the_range(model, prompts, found):
    again = cal.calibrate(model, TOK, prompts, TAUS, [2, 3], target=0.25, select_tokens=48)
    assert {**again, "timing": None} == {**found, "timing": None}  # all but the measured cost
    assert found["asl"]["tau"] in TAUS and found["asl"]["l_min"] in (2, 3)
    assert found["figures"]["n"] == len(prompts) and len(found["search"]["sweep"]) == 2 * len(TAUS)
    f = found["figures"]
    assert f["n"] == len(prompts) and f["tuning"]["n"] == f["held_out"]["n"] == 2
    assert len(found["search"]["sweep"]) == 2 * len(TAUS)
    assert f["target_met"] == (f["target_tuned"] and f["held_out"]["agree"] >= 1)  # 0.25 of 2 prompts: one
    low, high = f["agreement_interval"]
    assert low <= f["held_out"]["agreement"] <= high


RATIOS = {2: 1.0, 3: 0.45, 4: 0.35, 5: 0.15, 6: 0.1, 7: 0.05}  # below 0.5 from layer 3, below 0.2 from 5


def measure(first_match: int, held_out: bool = False, n: int = 1000, differ=()) -> PromptMeasure:
    """A prompt whose answer is kept from `first_match` on, except at the layers in `differ`."""
    return PromptMeasure({i: i >= first_match and i not in differ for i in range(LAYERS - 1)}, {2: RATIOS}, n,
                         held_out)


def test_the_choice_is_the_cheapest_tau_that_keeps_the_answers():
    ms = [measure(3), measure(5), measure(3, True), measure(5, True)]
    taus = [0.05, 0.3, 0.6, 0.9, 1.1]
    c = choose(ms, taus, [2], 1.0, LAYERS, select_tokens=100)
    assert c.met and c.best.tau == 0.3 and c.best.agree == 2  # fires at 5: both keep their answer
    assert c.best.kv == pytest.approx(kv_share(5, 1000, 100, LAYERS))
    assert evaluate(ms[:2], 2, 1.1, LAYERS, 100).agree == 0  # tau > 1 fires at l_min: both change
    half = choose(ms, taus, [2], 0.5, LAYERS, select_tokens=100)
    assert half.best.tau == 0.6 and half.best.agree == 1  # fires at 3: cheaper, one answer kept; 0.6 over 0.9
    assert choose(ms, list(reversed(taus)), [2], 0.5, LAYERS, 100).best == half.best
    with pytest.raises(ValueError, match="--agreement must be a share in"):
        choose(ms, taus, [2], 1.5, LAYERS, 100)
    with pytest.raises(ValueError, match="--taus must be finite numbers"):
        choose(ms, [], [2], 0.1, LAYERS, 100)


def test_a_tau_that_changes_half_the_answers_cannot_pass():
    """Issue 36's case: every prompt's answer is kept at layer 2 already (the oracle's earliest),
    but at layer 3, where tau 0.5 selects, half of them change (matches are not monotone). The
    old objective (selected at or after the earliest matching layer: never too early) passed
    it; agreement rejects it and pays for the later layer that keeps every answer."""
    tune = [measure(2, differ={3} if i % 2 else ()) for i in range(10)]
    held = [measure(2, True, differ={3} if i % 2 else ()) for i in range(10)]
    assert evaluate(tune, 2, 0.5, LAYERS, 100).too_early == 0  # what the old objective looked at
    c = choose(tune + held, [0.5], [2], 0.9, LAYERS, 100)
    assert not c.tuned and not c.met and c.best.agreement == 0.5 and c.held.agreement == 0.5
    assert c.interval[1] < 0.9  # its Wilson interval excludes the target
    c = choose(tune + held, [0.2, 0.5], [2], 0.9, LAYERS, 100)
    assert c.met and c.best.tau == 0.2 and c.held.agreement == 1.0  # selects at 5: every answer kept
    # tuned on prompts where tau 0.5 is harmless, judged where it is not: chosen, but not met
    c = choose([measure(2) for _ in range(10)] + held, [0.2, 0.5], [2], 0.9, LAYERS, 100)
    assert c.tuned and c.best.tau == 0.5 and not c.met and c.held.agree == 5


def test_without_held_out_prompts_the_target_is_never_met():
    c = choose([measure(3), measure(5)], [0.3], [2], 0.5, LAYERS, 100)
    assert c.tuned and c.held is None and not c.met and c.interval == (None, None)


def test_earliest_and_stable_layers_when_matches_are_not_monotone():
    m = measure(2, differ={4, 5})
    assert (m.earliest, m.stable) == (2, 6)
    assert (measure(7).earliest, measure(7).stable) == (None, None)  # no candidate keeps it


def _file(found, **changes) -> dict:
    data = {"format": 2, "model": "tiny-qwen2", **copy.deepcopy(found),
            "prompts": {"source": "file", "file": "p.jsonl", "sha256": "0" * 64}, "code": "abc"}
    data.update(changes)
    return data


def test_the_file_round_trips_and_for_model_reads_it(model, found, tmp_path):
    path = write(tmp_path / "tiny.json", _file(found))
    assert read(path, model="tiny-qwen2", num_layers=LAYERS) == json.loads(json.dumps(_file(found)))
    policy = asl.ASL.for_model("tiny-qwen2", calibration=path, select_tokens=64)
    assert (policy.tau, policy.l_min, policy.select_tokens) == (found["asl"]["tau"], found["asl"]["l_min"], 64)
    assert asl.ASL.for_model(model, calibration=path).tau == found["asl"]["tau"]  # by its config


def test_without_a_file_the_hand_set_values():
    settings, why = settings_for(model_config())
    assert settings["tau"] == 0.3 and settings["l_min"] == 2 and "not calibrated" in why


def model_config():
    return tiny_pair("llama", num_hidden_layers=LAYERS)[1].config


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("target"), "field 'target' is missing"),
    (lambda d: d["asl"].pop("tau"), "field 'asl.tau' is missing"),
    (lambda d: d["asl"].update(tau="high"), "field 'asl.tau' must be a finite number >= 0, got 'high'"),
    (lambda d: d["asl"].update(l_min=True), "field 'asl.l_min' must be an integer"),
    (lambda d: d["asl"].update(l_min=LAYERS), "field 'asl.l_min' must be a layer of the model (0..7)"),
    (lambda d: d["figures"].update(n=1.5), "field 'figures.n' must be an integer >= 1"),
    (lambda d: d["prompts"].pop("sha256"), "field 'prompts.sha256' is missing"),
    (lambda d: d.update(format=1), "field 'format' must be the integer 2"),
    (lambda d: d["figures"].update(held_out=None, target_met=True), "true with no held-out prompt"),
    (lambda d: d.update(model="another-model"), "field 'model' is 'another-model', not the model asked for"),
    (lambda d: d["rules"]["jaccard-stop"].update(threshold=1.5), "field 'rules.jaccard-stop' must hold threshold"),
    (lambda d: d["rules"]["entropy-stop"].update(l_min=LAYERS), "field 'rules.entropy-stop' must hold threshold"),
    (lambda d: d.update(rules=[0.5]), "field 'rules' must be an object"),
])
def test_bad_files_fail_naming_the_file_and_the_field(found, tmp_path, change, message):
    data = _file(found)
    change(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(CalibrationError, match="calibration file .*bad.json: ") as e:
        asl.ASL.for_model("tiny-qwen2", calibration=path)
    assert message in str(e.value)


def test_unreadable_files(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(CalibrationError, match="x.json: is not valid JSON"):
        read(tmp_path / "x.json")
    with pytest.raises(CalibrationError, match="missing.json: cannot be read"):
        read(tmp_path / "missing.json")
    (tmp_path / "deep.json").write_text("[" * 100000)  # issue 34: a RecursionError
    with pytest.raises(CalibrationError, match="deep.json: is not valid JSON .nested too deeply."):
        read(tmp_path / "deep.json")


@pytest.mark.parametrize("argv, message", [
    (["--agreement", "2"], "--agreement must be a share in [0, 1]"),
    (["--taus", "0.3,x"], "--taus must be comma-separated numbers"),
    (["--taus", "-1"], "--taus must be finite numbers >= 0"),
    (["--tasks", "nope"], "--tasks: unknown task(s) nope"),
    (["--prompts", "/no/such/file.jsonl"], "--prompts /no/such/file.jsonl: cannot be read"),
    (["--select-tokens", "16"], "--select-tokens must be larger than ASL's window"),
    (["--l-min", "-1"], "--l-min must be integers >= 0"),
    (["--out", "/no/such/dir/c.json"], "--out /no/such/dir/c.json: the folder /no/such/dir does not exist"),
])
def test_bad_arguments_fail_before_any_work(capsys, monkeypatch, argv, message):
    monkeypatch.setattr(cal, "_locked_run", lambda *a: pytest.fail("ran"))
    assert cal.main(["--model", "smollm2-135m", *argv]) == 2
    assert message in capsys.readouterr().err


def test_bad_prompt_lines(tmp_path):
    (tmp_path / "p.jsonl").write_text('"fine"\n{"text": "no prompt key"}\n')
    with pytest.raises(ValueError, match=r"p.jsonl, line 2: must be a non-empty string or an object"):
        cal.read_prompts(tmp_path / "p.jsonl", 8)


def test_the_command_writes_a_file_for_model_reads(model, monkeypatch, tmp_path, capsys):
    lines = [json.dumps(random_text(random.Random(i), 120)) for i in range(3)]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr("asl.bench.calibrate.model_config", lambda name, lengths: (tmp_path, model.config))
    monkeypatch.setattr(asl, "load", lambda *a, **k: (model, TOK))
    out = tmp_path / "c.json"
    argv = ["--model", "tiny-qwen2", "--prompts", str(tmp_path / "p.jsonl"), "--select-tokens", "40",
            "--max-new-tokens", "4", "--taus", "0.2,0.6,1.1", "--threads", "1", "--out", str(out)]
    assert bench_main(["calibrate", *argv]) == 0
    data = read(out, model="tiny-qwen2", num_layers=LAYERS)
    assert data["prompts"]["source"] == "file" and data["figures"]["n"] == 3 and data["asl"]["tau"] in (0.2, 0.6, 1.1)
    printed = capsys.readouterr().out
    assert "chosen: tau" in printed
    for name, r in data["rules"].items():  # the stopping rules' choice is printed with ASL's
        assert f"{name}: threshold {r['threshold']:g}: tuning " in printed
    assert asl.ASL.for_model("tiny-qwen2", calibration=out).tau == data["asl"]["tau"]
    # the bench takes it with --calibration: ASL's defaults come from the file
    from asl.bench.methods import default_params, model_defaults, parse_methods

    (spec,) = parse_methods("asl")
    (fields,) = default_params(spec, model_defaults("tiny-qwen2", LAYERS, calibration=out)[0], 40, 40)
    assert (fields["tau"], fields["l_min"]) == (data["asl"]["tau"], data["asl"]["l_min"])


def test_the_bench_refuses_a_missing_calibration_file(capsys):
    assert bench_main(["--calibration", "/no/such/calibration.json"]) == 2
    assert "--calibration /no/such/calibration.json: no such file" in capsys.readouterr().err


@pytest.mark.parametrize("name, layers", [("qwen2.5-0.5b", 24), ("smollm2-135m", 30), ("gemma3-270m", 18)])
def test_the_bundled_models_files_are_valid_and_are_what_asl_uses(name, layers):
    from asl.calibration import bundled_file

    path = bundled_file(name)
    data = read(path, model=name, num_layers=layers)  # strict: every field present and typed
    assert data["prompts"]["source"] == "tasks" and data["prompts"]["seed"] == 1 and data["figures"]["held_out"]
    settings, why = settings_for(name)
    assert why.startswith("calibrated") and settings["tau"] == data["asl"]["tau"] != FALLBACK_TAU.get(name)
    assert asl.ASL.for_model(name).tau == data["asl"]["tau"]


def _command(model, monkeypatch, tmp_path, *extra):
    """The calibrate command on the tiny model and three prompt lines; returns its argv."""
    lines = [json.dumps(random_text(random.Random(i), 120)) for i in range(3)]
    (tmp_path / "p.jsonl").write_text("\n".join(lines) + "\n")
    monkeypatch.setattr("asl.bench.calibrate.model_config", lambda name, lengths: (tmp_path, model.config))
    monkeypatch.setattr(asl, "load", lambda *a, **k: (model, TOK))
    return ["calibrate", "--model", "tiny-qwen2", "--prompts", str(tmp_path / "p.jsonl"), "--select-tokens", "40",
            "--max-new-tokens", "4", "--taus", "0.2,0.6,1.1", "--threads", "1", "--out", str(tmp_path / "c.json"),
            *extra]


def test_an_interrupted_calibration_resumes_where_it_stopped(model, monkeypatch, tmp_path, capsys):
    argv = _command(model, monkeypatch, tmp_path)
    assert bench_main(argv) == 0
    whole = read(tmp_path / "c.json")
    (tmp_path / "c.json").unlink()
    measured, real = [], cal.measure

    def interrupted(*a, **k):  # Ctrl-C (SIGINT raises KeyboardInterrupt) during the third prompt
        if len(measured) == 2:
            raise KeyboardInterrupt
        measured.append(1)
        return real(*a, **k)

    monkeypatch.setattr(cal, "measure", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench_main(argv)
    assert not (tmp_path / "c.json").exists() and (tmp_path / ".c.json.partial.jsonl").is_file()
    monkeypatch.setattr(cal, "measure", lambda *a, **k: (measured.append(1), real(*a, **k))[1])
    capsys.readouterr()
    assert bench_main(argv) == 0
    assert len(measured) == 3  # two before the interruption, one after: none measured twice
    assert "resuming: 2 of 3 prompts measured before" in capsys.readouterr().out
    resumed = read(tmp_path / "c.json")
    assert (resumed["asl"], resumed["figures"]) == (whole["asl"], whole["figures"])
    assert not (tmp_path / ".c.json.partial.jsonl").exists()


def test_calibration_refuses_a_second_run_an_existing_file_and_changed_settings(model, monkeypatch, tmp_path, capsys):
    from asl.bench.run.store import FolderLock

    argv = _command(model, monkeypatch, tmp_path)
    with FolderLock(tmp_path, ".c.json.lock", tmp_path / "c.json", "asl.bench calibrate"):  # a run in progress
        assert bench_main(argv) == 2
    assert "c.json is in use by asl.bench calibrate pid" in capsys.readouterr().err
    assert bench_main(argv) == 0
    assert bench_main(argv) == 2
    assert "c.json exists; pass --force to replace it" in capsys.readouterr().err
    (tmp_path / "c.json").unlink()
    real = cal.measure
    monkeypatch.setattr(cal, "measure", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):  # interrupted under --select-tokens 48
        bench_main([*argv, "--select-tokens", "48"])
    monkeypatch.setattr(cal, "measure", real)
    assert bench_main(argv) == 2
    assert "measured under other settings (select_tokens: 48 -> 40)" in capsys.readouterr().err
    assert bench_main([*argv, "--force"]) == 0  # replaces the file, measures again


def test_a_calibration_of_another_architecture_is_refused(found, tmp_path):
    from asl.calibration import fingerprint
    from asl.models.config import ModelConfig

    data = {"format": 2, "model": "tiny-qwen2", **found, "code": "x",
            "prompts": {"source": "tasks", "tasks": ["passkey"], "lengths": [512], "samples": 1, "seed": 0},
            "config": {"model_type": "qwen2", "num_layers": LAYERS, "hidden_size": 64, "num_heads": 4,
                       "num_kv_heads": 2, "vocab_size": 128}}
    write(tmp_path / "c.json", data)
    other = ModelConfig.from_hf({"model_type": "llama", "vocab_size": 128, "hidden_size": 64, "intermediate_size": 96,
                                 "num_hidden_layers": LAYERS, "num_attention_heads": 4, "num_key_value_heads": 2})
    assert fingerprint(other)["num_layers"] == LAYERS  # same depth, another family
    with pytest.raises(CalibrationError, match="calibrated on another architecture: model_type: 'qwen2' -> 'llama'"):
        settings_for(other, tmp_path / "c.json")


def test_a_bundled_model_by_path_gets_its_calibration():
    from asl.models.loading import resolve_checkpoint

    folder = str(resolve_checkpoint("smollm2-135m"))
    assert asl.ASL.for_model(folder).tau == asl.ASL.for_model("smollm2-135m").tau != asl.ASL().tau


def test_the_file_keeps_every_measure_and_the_choice_follows_from_them(found):
    measures = [PromptMeasure.from_json(m) for m in found["measures"]]
    again = choose(measures, TAUS, [2, 3], 0.25, LAYERS, 48)
    assert (again.best.tau, again.best.l_min) == (found["asl"]["tau"], found["asl"]["l_min"])
    assert [m.held_out for m in measures] == [False, True, False, True]
    assert all(set(m.signals) == set(range(LAYERS)) and set(m.signals[0]) == {"depth", "jaccard", "entropy"}
               for m in measures)  # the other rules' signals at every layer, for the adaptivity analysis


def signalled(jaccard: dict[int, float], entropy: dict[int, float], first_match: int, held_out=False) -> PromptMeasure:
    """A prompt kept from `first_match` on, with the stopping rules' signals per layer."""
    m = measure(first_match, held_out)
    signals = {i: {"depth": i / (LAYERS - 1), "jaccard": jaccard.get(i, 0.0), "entropy": entropy.get(i, 1.0)}
               for i in range(LAYERS)}
    return PromptMeasure(m.matches, m.ratios, m.prompt_tokens, held_out, signals)


def test_the_stopping_rules_thresholds_are_chosen_as_tau_is():
    """Jaccard reaches 0.6 at layer 3 (too early: the answer changes) and 0.9 at 5 (kept):
    0.9 is the cheapest threshold that keeps every answer; 0.95 never fires, the full cache,
    which costs more. Ties (0.65 .. 0.9 pick the same layers) go to the one that fires latest."""
    from asl.bench.calibrate import RULES

    prompts = [signalled({3: 0.6, 4: 0.6, 5: 0.9, 6: 0.9}, {3: 0.5, 5: 0.2}, 5, held) for held in (False, True)] * 2
    jaccard, entropy = (lambda t, cls=RULES[name][0]: cls(threshold=t) for name in ("jaccard-stop", "entropy-stop"))
    c = choose_rule(prompts, jaccard, RULES["jaccard-stop"][1], 2, 1.0, LAYERS, 100)
    assert c.met and c.best.tau == 0.9 and c.best.kv == pytest.approx(kv_share(5, 1000, 100, LAYERS))
    assert [(o.tau, o.agree) for o in c.sweep if o.tau in (0.6, 0.65, 0.9, 0.95)] == [(0.95, 2), (0.9, 2), (0.65, 2),
                                                                                   (0.6, 0)]  # latest-firing first
    ascending = choose_rule(prompts, jaccard, sorted(RULES["jaccard-stop"][1]), 2, 1.0, LAYERS, 100)
    assert ascending.best.tau == 0.65  # the same picks from 0.65 to 0.9: the first listed wins the tie
    e = choose_rule(prompts, entropy, RULES["entropy-stop"][1], 2, 1.0, LAYERS, 100)
    assert e.met and e.best.tau == 0.2  # entropy <= 0.5 fires at 3 and changes the answer; <= 0.2 at 5
    assert choose_rule(prompts, entropy, RULES["entropy-stop"][1], 2, 0.0, LAYERS, 100).best.tau == 0.5  # cheaper


def test_the_file_carries_the_rules_and_the_bench_runs_them(found, tmp_path):
    from asl.bench.methods import model_defaults

    assert set(found["rules"]) == {"jaccard-stop", "entropy-stop"}
    data = _file(found, rules={"jaccard-stop": {**found["rules"]["jaccard-stop"], "threshold": 0.35},
                               "entropy-stop": found["rules"]["entropy-stop"]})
    path = write(tmp_path / "tiny.json", data)
    defaults, why = model_defaults("tiny-qwen2", LAYERS, calibration=path)[:2]
    assert defaults["jaccard-stop"]["threshold"] == 0.35 and "jaccard-stop threshold 0.35" in why
    assert defaults["jaccard-stop"]["l_min"] == found["rules"]["jaccard-stop"]["l_min"] == found["asl"]["l_min"]
    assert defaults["entropy-stop"]["threshold"] == found["rules"]["entropy-stop"]["threshold"]
    older = write(tmp_path / "older.json", {k: v for k, v in data.items() if k != "rules"})  # before rules: hand-set
    assert "threshold" not in model_defaults("tiny-qwen2", LAYERS, calibration=older)[0]["jaccard-stop"]


@pytest.mark.parametrize("name, jaccard, entropy", [("qwen2.5-0.5b", 0.7, 0.5), ("smollm2-135m", 0.95, 0.1),
                                                    ("gemma3-270m", 0.3, 0.65)])
def test_the_bundled_rules_are_the_choice_from_the_published_records(name, jaccard, entropy):
    """The bundled thresholds follow from the records in docs/results (benchmarks/calibration_rules.py);
    qwen's are the settings tuned at 4,096 tokens in docs/results/adaptivity."""
    from asl.bench.methods import model_defaults
    from asl.calibration import bundled_file

    rules = read(bundled_file(name))["rules"]
    assert (rules["jaccard-stop"]["threshold"], rules["entropy-stop"]["threshold"]) == (jaccard, entropy)
    defaults = model_defaults(name, read(bundled_file(name))["num_layers"])[0]
    assert (defaults["jaccard-stop"]["threshold"], defaults["entropy-stop"]["threshold"]) == (jaccard, entropy)
