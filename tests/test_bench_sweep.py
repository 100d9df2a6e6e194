"""--share-prefix: a sample's one-shot selections and evictions run as one asl.sweep, each
record what its job alone records (the answer, its score, the cache, the layer) with its TTFT
estimated for a run alone; what cannot share (a second pass, GemFilter's answer cap, the
oracle) runs alone."""
from asl.bench.run import runner
from asl.bench.methods import Method, model_defaults, parse_methods
from asl.bench.run.runner import Job, run, run_job, run_sweep, shares_prefix
from asl.bench.tasks import Sample
from test_bench_oracle import LAYERS, SELECT, TOK, model, sample  # noqa: F401 (the fixture)

SAME = ("prediction", "score", "partial", "kv_tokens", "kv_bytes", "selection_layer", "alive_tokens", "ratios",
        "method", "budget", "new_tokens")


def job(method: str, s: Sample) -> Job:
    (spec,) = parse_methods(method)
    budget = None if spec.is_full else SELECT
    return Job(s.task, s.length, s.index, 0, Method.resolve(spec, model_defaults("tiny", LAYERS)[0], budget, budget))


def test_a_sweep_records_what_each_job_alone_records(model):  # noqa: F811
    s = sample("t1", 0)
    jobs = [job(m, s) for m in ("fastkv(layer=2)", "fastkv(layer=5)", "asl(tau=0.9,l_min=2)", "jaccard-stop(l_min=2)",
                                "full", "snapkv", "tova", "asl+snapkv", "fastkv(layer=2)+streaming")]
    assert all(shares_prefix(j, s) for j in jobs)
    for j, shared in zip(jobs, run_sweep(model, TOK, s, jobs)):
        alone = run_job(model, TOK, s, j)
        assert {k: shared[k] for k in SAME} == {k: alone[k] for k in SAME}
        assert shared["ttft_shared"] and shared["ttft_s"] > 0 and shared["peak_mem_bytes"] is None


def test_what_cannot_share_runs_alone(model):  # noqa: F811
    s = sample("t1", 0)
    for method in ("gemfilter(layer=2)", "asl-2pass", "oracle"):
        assert not shares_prefix(job(method, s), s), method


def test_run_groups_each_samples_jobs_that_share(model, monkeypatch):  # noqa: F811
    samples = {(s.task, s.index): s for s in (sample("t1", 0), sample("t1", 1))}
    monkeypatch.setattr(runner, "make_sample", lambda task, tok, length, index, seed: samples[(task, index)])
    jobs = [job(m, s) for s in samples.values()
            for m in ("full", "fastkv(layer=2)", "gemfilter(layer=2)", "fastkv(layer=5)", "asl+snapkv")]
    calls = {"sweep": 0, "alone": 0}
    real_sweep, real_job = runner.run_sweep, runner.run_job
    monkeypatch.setattr(runner, "run_sweep", lambda *a: (calls.__setitem__("sweep", calls["sweep"] + 1),
                                                         real_sweep(*a))[1])
    monkeypatch.setattr(runner, "run_job", lambda *a: (calls.__setitem__("alone", calls["alone"] + 1),
                                                       real_job(*a))[1])
    shared = run(model, TOK, jobs, 0, set(), lambda r: None, show=False, share_prefix=True)
    assert calls == {"sweep": 4, "alone": 2}  # per sample: GemFilter alone between two sweeps of two jobs
    alone = run(model, TOK, jobs, 0, set(), lambda r: None, show=False)
    assert [{k: r[k] for k in SAME} for r in shared] == [{k: r[k] for k in SAME} for r in alone]


def test_the_warm_up_sweeps_what_the_run_will_sweep(model, monkeypatch):  # noqa: F811
    s = sample("t1", 0)
    monkeypatch.setattr(runner, "make_sample", lambda task, tok, length, index, seed: s)
    jobs = [job(m, s) for m in ("full", "fastkv(layer=2)", "gemfilter(layer=2)", "snapkv")]
    jobs += [job("snapkv", s)]  # a method warms up once, whatever its samples
    calls = []
    real_sweep, real_job = runner.run_sweep, runner.run_job
    monkeypatch.setattr(runner, "run_sweep",
                        lambda *a: (calls.append([j.method.label for j in a[3]]), real_sweep(*a))[1])
    monkeypatch.setattr(runner, "run_job", lambda *a: (calls.append(a[3].method.label), real_job(*a))[1])
    runner.warm_up(model, TOK, jobs, 150, share_prefix=True)
    assert calls == [["full", "fastkv(layer=2)", "snapkv"], "gemfilter(layer=2)"]
    calls.clear()
    runner.warm_up(model, TOK, jobs, 150)
    assert calls == ["full", "fastkv(layer=2)", "gemfilter(layer=2)", "snapkv"]


def test_the_warm_up_keeps_its_warnings_to_itself(model, monkeypatch):  # noqa: F811
    """An ASL that never selects warns on a real sample; on the warm-up's throw-away prompt the
    same warning would mislead (it names no sample of the run), so it is silenced there."""
    import warnings

    s = sample("t1", 0)
    monkeypatch.setattr(runner, "make_sample", lambda task, tok, length, index, seed: s)
    never = job("asl(tau=0.000001,l_min=2)", s)
    with warnings.catch_warnings(record=True) as alone:
        warnings.simplefilter("always")
        run_job(model, TOK, s, never)
    assert any("never selected" in str(w.message) for w in alone)
    with warnings.catch_warnings(record=True) as warm:
        warnings.simplefilter("always")
        runner.warm_up(model, TOK, [never], 150, share_prefix=True)
    assert not warm
