"""benchmarks/kvpress_parity.py end to end on the small real model: each scorer keeps, per
layer and KV head, exactly what kvpress's own press keeps (read by its topk, and for
ChunkKVPress by matching the stored keys), and answers as it does. Needs .venv-kvpress
(benchmarks/peers_env.sh, which .ci/run builds); skipped where it is missing."""
import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
KVPRESS_PY = ROOT / ".venv-kvpress" / "bin" / "python"


@pytest.mark.slow  # two model loads and a kvpress process
def test_our_scorers_keep_what_kvpress_keeps(tmp_path):
    if not KVPRESS_PY.exists():
        pytest.skip(".venv-kvpress missing (bash benchmarks/peers_env.sh)")
    methods = ("knorm,tova,observed-attention,snapkv,lagkv,chunkkv(knorm),expected-attention,cur,criticalkv(expected-attention),finch,"
               "non-causal-attention,finch(chunk_length=128),capkv,merging(knorm),think(snapkv),snapkv+knorm,kvzip,kvgrad,kvcompose,kvcompose(unstructured)")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kvpress_parity.py"), "--model", "smollm2-135m",
                    "--prompts", "2", "--tokens", "300", "--ratio", "0.6", "--new-tokens", "4", "--threads", "2",
                    "--methods", methods, "--out", str(tmp_path)], check=True, capture_output=True, timeout=900)
    result = json.loads((tmp_path / "kvpress-parity.json").read_text())
    for name, f in result["methods"].items():
        assert f["layers"] == 2 * 30, name  # smollm2-135m: 30 layers
        if name != "snapkv+knorm":  # a chain's ties are in its second's scores of the first's entries, not recorded
            assert f["layers_same_up_to_ties"] == f["layers"], name  # a tie may go either way
        if name != "lagkv":  # LagKV's scores are ranks in a partition, equal across partitions: most cuts split a
            assert f["layers_identical"] >= f["layers"] - 4, name  # tie, which torch.topk breaks its own way
    for name, rows in result["per_prompt"].items():  # the same cache gives the same answer
        if name == "kvcompose(unstructured)":  # kvpress's keeps the second reading's entries in its cache too
            continue
        for row in rows:
            if all(j == 1.0 for j in row["layer_jaccard"]) and row["kvpress"] is not None:
                assert row["answer_equal"], (name, row)
    assert all(row["kvpress"] is None for row in result["per_prompt"]["kvcompose"])  # kvpress's cut cache fails to
    assert "kvpress-parity.md" in {p.name for p in tmp_path.iterdir()}  # decode: if that changes, compare answers


@pytest.mark.slow  # two model loads and a kvpress process
def test_our_decoding_evictions_answer_as_kvpress_decoding_presses(tmp_path):
    """benchmarks/kvpress_decoding_parity.py: the cache cut while the answer is generated, every 8
    tokens, by DecodingEviction (budget and ratio) and ThresholdEviction(decoding=True), answers
    token for token as kvpress's DecodingPress, CompressionRatioDecodingPress and DMSPress."""
    if not KVPRESS_PY.exists():
        pytest.skip(".venv-kvpress missing (bash benchmarks/peers_env.sh)")
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "kvpress_decoding_parity.py"), "--model", "smollm2-135m",
                    "--prompts", "2", "--tokens", "600", "--new-tokens", "24", "--threads", "2", "--out", str(tmp_path)],
                   check=True, capture_output=True, timeout=900)
    result = json.loads((tmp_path / "kvpress-decoding-parity.json").read_text())
    for name, rows in result["per_prompt"].items():
        assert all(row["answer_equal"] for row in rows), (name, rows)
        if name.startswith("decoding"):  # the cache was cut while answering: what is compared is the cut
            assert all(row["layer_cuts_ours"] > 0 for row in rows), (name, rows)
