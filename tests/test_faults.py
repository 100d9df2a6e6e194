"""The fault probe of issue 34, item by item: where each fault it found is reproduced and shown
refused, detected or said. Most reproductions live beside the code they test; FAULTS names
them, and `test_every_fault_has_its_reproduction` checks that each named test still exists, so
this index cannot rot. The faults with no better home are reproduced here."""
import ast
import errno
import json
import pathlib
import shutil

import pytest

import asl.atomic
from asl.bench.cli import main as bench_main

TESTS = pathlib.Path(__file__).resolve().parent
RESULTS = TESTS.parent / "docs" / "results" / "default-run"

# issue 34's numbered faults -> (test module, test function) that reproduce them
FAULTS = {
    "1 a resume silently mixes two models": [
        ("test_bench_resume", "test_a_model_whose_files_changed_behind_the_same_path_is_refused"),
        ("test_bench_resume", "test_the_model_hash_follows_the_bytes_and_is_cached_by_file_identity")],
    "2 a resume silently mixes two versions of a custom policy": [
        ("test_bench_resume", "test_a_changed_helper_module_of_a_custom_policy_is_refused"),
        ("test_bench_resume", "test_custom_policy_with_other_select_tokens_or_source_is_refused")],
    "3 conversions and compressed caches go stale": [
        ("test_interop", "test_a_replaced_layer_or_an_in_place_update_is_followed"),
        ("test_interop", "test_a_model_cast_after_conversion_is_followed"),
        ("test_compress", "test_a_cache_whose_weights_changed_is_refused")],
    "4 --force destroys files it does not own": [
        ("test_bench_resume", "test_a_foreign_or_broken_config_in_out_is_refused_even_with_force"),
        ("test_bench_resume", "test_bench_files_without_a_bench_config_are_refused")],
    "5 one policy object shared between threads": [
        ("test_threads", "test_one_shared_policy_from_four_threads_equals_serial_runs"),
        ("test_threads", "test_a_shared_policy_compresses_from_threads_as_alone")],
    "6 weights: stray files, non-float, NaN, overwrite in the cache, config against weights": [
        ("test_weights", "test_a_stray_safetensors_file_is_refused_by_name"),
        ("test_weights", "test_only_the_files_the_index_names_are_read"),
        ("test_weights", "test_non_finite_or_non_float_weights_are_refused"),
        ("test_weights", "test_a_config_that_does_not_fit_the_weights_fails_before_allocating"),
        ("test_loading", "test_a_replaced_file_is_rehashed_and_verify_finds_a_change_that_keeps_size_and_mtime")],
    "7 calibration: resume, lock, overwrite, architecture, name against path": [
        ("test_calibration", "test_an_interrupted_calibration_resumes_where_it_stopped"),
        ("test_calibration", "test_calibration_refuses_a_second_run_an_existing_file_and_changed_settings"),
        ("test_calibration", "test_a_calibration_of_another_architecture_is_refused"),
        ("test_calibration", "test_a_bundled_model_by_path_gets_its_calibration")],
    "8 silent no-ops and silent damage": [
        ("test_warnings", "test_asl_that_never_selects_says_so_once_with_its_lowest_ratio"),
        ("test_warnings", "test_an_eviction_over_its_budget_that_keeps_everything_says_so_once"),
        ("test_policy_checks", "test_a_selection_that_is_no_selection_or_keeps_nothing_or_drops_the_last_token_fails"),
        ("test_bench_methods", "test_bad_method_specs")],  # asl(tau=0.5,tau=0.6) among them
    "9 raw errors that name nothing": [
        ("test_policy_checks", "test_an_eviction_keep_of_the_wrong_kind_fails_naming_the_policy"),
        ("test_policy_checks", "test_a_bad_selection_fails_naming_policy_and_sequence"),
        ("test_decode_eviction", "test_a_bad_decode_keep_fails_naming_the_policy_and_layer"),
        ("test_generation", "test_bad_input_is_rejected_before_work"),
        ("test_calibration", "test_unreadable_files"),
        ("test_faults", "test_a_full_disk_or_a_read_only_out_gives_one_line_and_no_half_file")],
    "11 the bench's own report": [
        ("test_bench_methods", "test_a_method_with_its_own_budget_is_recorded_at_it_and_run_once"),
        ("test_bench_report", "test_format_table_against_a_chosen_reference"),
        ("test_bench_plots", "test_labels_are_placed_where_they_overlap_nothing"),
        ("test_bench_plots", "test_a_sweep_is_joined_in_parameter_order"),
        ("test_bench_plots", "test_accuracy_vs_budget_needs_two_budgets"),
        ("test_structure", "test_import_asl_makes_waiting_threads_sleep_unless_told_otherwise")],
    "transformers habits": [
        ("test_transformers_habits", "test_generate_keywords_give_transformers_greedy_tokens"),
        ("test_transformers_habits", "test_streamers_receive_the_answer_as_it_is_made"),
        ("test_transformers_habits", "test_apply_runs_the_policies_inside_transformers_generate"),
        ("test_transformers_habits", "test_export_writes_a_folder_transformers_loads")],
}


def test_every_fault_has_its_reproduction():
    missing = []
    for fault, tests in FAULTS.items():
        for module, name in tests:
            tree = ast.parse((TESTS / f"{module}.py").read_text())
            if name not in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}:
                missing.append(f"{fault}: {module}.{name}")
    assert missing == []


@pytest.mark.parametrize("error", [OSError(errno.ENOSPC, "No space left on device"),
                                   PermissionError(errno.EACCES, "Permission denied")], ids=["full", "read-only"])
def test_a_full_disk_or_a_read_only_out_gives_one_line_and_no_half_file(tmp_path, monkeypatch, capsys, error):
    out = tmp_path / "run"
    shutil.copytree(RESULTS, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}

    class HalfWritten:  # the disk fills half-way through the file
        def __init__(self, path, *a, **k):
            self.path, self.file = path, open(path, *a, **k)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

        def write(self, text):
            self.file.write(text[: len(text) // 2])
            self.file.flush()
            error.filename = str(out / pathlib.Path(self.path).name)
            raise error

    monkeypatch.setattr(asl.atomic, "open", HalfWritten, raising=False)
    assert bench_main(["--report-only", "--out", str(out), "--no-plots"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"python -m asl.bench: error: {error.strerror}: {out}")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before  # nothing half-written
    assert json.loads((out / "summary.json").read_text())  # the old summary still reads
