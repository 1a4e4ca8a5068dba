"""`make mutants`: plant one plausible bug at a time in a temporary copy of the repository and
check that the tests guarding that code fail. Not part of CI (it runs the guards once per
mutant: ~10 minutes on 2 cores).

    python scripts/mutants.py [--only NAME ...] [--list] [--fast]

`--fast` runs each mutant against the fast tier (`make test-fast`) instead of its guards and
lists the mutants that only the full tier catches.

Each mutant is (name, file, exact text, replacement, guarding tests). A mutant whose text is
not found is an error: the list must follow the code.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Mutant:
    name: str
    path: str
    old: str
    new: str
    guards: tuple[str, ...]


MUTANTS = [
    # the nine of the test-strength issue
    Mutant(
        "a Ray worker returns before its task run's events are sent",
        "flows/runners.py",
        "        finally:\n            send_queued_events()",
        "        finally:\n            pass",
        (
            "tests/test_ray.py::test_a_ray_workers_task_run_states_reach_the_server_before_its_result_returns",
        ),
    ),
    Mutant(
        "the compiled MinHash kernel skips the Mersenne fold's correction",
        "tasks/data/minhash_kernel.py",
        "                if folded >= prime:\n                    folded -= prime\n",
        "",
        ("tests/test_minhash.py::test_the_mersenne_fold_is_exact_where_it_must_correct",),
    ),
    Mutant(
        "lease renewal switched off",
        "tasks/core/lease.py",
        "while not held.stop.wait(interval):",
        "while not held.stop.wait(interval * 1000):",
        (
            "tests/test_concurrency.py::test_a_step_longer_than_several_leases_lives_on_renewal_alone",
        ),
    ),
    Mutant(
        "ifGenerationMatch dropped from gs:// lease writes",
        "tasks/core/stores.py",
        'kwargs = {"ifGenerationMatch": version} if version else {}',
        "kwargs = {}",
        (
            "tests/test_gcs.py::test_the_fake_refuses_writes_that_lost_the_generation_race",
            "tests/test_store_contract.py::test_a_compare_and_swap_on_a_stale_read_never_wins_as_well",
        ),
    ),
    Mutant(
        "the local lease guard does not lock",
        "tasks/core/stores.py",
        "            fcntl.flock(fd, fcntl.LOCK_EX)\n",
        "",
        (
            "tests/test_store_contract.py::test_a_compare_and_swap_on_a_stale_read_never_wins_as_well",
        ),
    ),
    Mutant(
        "a store without conditional writes takes leases",
        "tasks/core/stores.py",
        "    def check_leases(self, url: str) -> None:\n        raise LeaseUnsupportedError(",
        "    def check_leases(self, url: str) -> None:\n        return None\n"
        "        raise LeaseUnsupportedError(",
        (
            "tests/test_store_contract.py::"
            "test_a_store_without_conditional_writes_refuses_leases_in_one_line",
        ),
    ),
    Mutant(
        "floats hashed as ints",
        "tasks/core/identity.py",
        "        return float(value)\n",
        "        return int(value) if value.is_integer() else float(value)\n",
        ("tests/test_pinned.py",),
    ),
    Mutant(
        "learning_rate made operational in train_lm",
        "tasks/lm/train.py",
        'operational=["steps_per_eval", "max_eval_batches", "checkpoint_every", "accelerator"],',
        'operational=["steps_per_eval", "max_eval_batches", "checkpoint_every", "accelerator",'
        ' "learning_rate"],',
        (
            "tests/test_cli_cache.py::test_lr_sweep_plans_one_training_per_learning_rate",
            "tests/test_declarations.py::test_operational_parameters_are_pinned",
        ),
        # (train_lm's hash attributes lose it below, in the same file, by a second replacement)
    ),
    Mutant(
        "bits_per_byte computed as the loss",
        "tasks/lm/eval_run.py",
        '"bits_per_byte": logged.get(f"{prefix}/bpb"),',
        '"bits_per_byte": loss,',
        ("tests/test_pipeline.py::test_pipeline_end_to_end_then_all_cached",),
    ),
    Mutant(
        "no warning for an untrusted record",
        "tasks/core/records.py",
        '    message = f"{exc}; treating the step as not committed and recomputing it"\n',
        "    return\n",
        (
            "tests/test_runs.py::test_corrupt_or_truncated_record_is_a_miss_with_a_warning",
            "tests/test_hostile.py::test_a_record_copied_from_another_output_is_never_served",
        ),
    ),
    Mutant(
        "a dead attempt's staging is not cleared",
        "tasks/core/outputs.py",
        "        store.clear_folder(root)  # what dead attempts left; nobody else holds the "
        "lease\n",
        "",
        (
            "tests/test_store_contract.py::"
            "test_a_sigkilled_holder_is_taken_over_at_once_and_its_files_never_served",
            "tests/test_runs.py::"
            "test_a_step_that_raises_commits_nothing_and_is_called_again_after_clearing",
        ),
    ),
    Mutant(
        "with_options drops retries",
        "tasks/core/decorator.py",
        "        new = super().with_options(result_storage=None, **options)",
        '        options.pop("retries", None)\n'
        "        new = super().with_options(result_storage=None, **options)",
        ("tests/test_runs.py::test_submit_map_with_options_tags_and_retries",),
    ),
    Mutant(
        "with_options drops tags",
        "tasks/core/decorator.py",
        "        new = super().with_options(result_storage=None, **options)",
        '        options.pop("tags", None)\n'
        "        new = super().with_options(result_storage=None, **options)",
        ("tests/test_runs.py::test_submit_map_with_options_tags_and_retries",),
    ),
    Mutant(
        "a foreign lease is treated as expired 5 s early",
        "tasks/core/lease.py",
        'return float(lease["expires_at"]) > now and not _holder_is_dead(lease)',
        'return float(lease["expires_at"]) > now + 5 and not _holder_is_dead(lease)',
        (
            "tests/test_store_contract.py::"
            "test_a_live_lease_of_another_host_is_waited_out_then_taken_over",
        ),
    ),
    # the identity rules
    Mutant(
        "unclassified parameters accepted",
        "tasks/core/definition.py",
        "    if unclassified:\n",
        "    if False:\n",
        ("tests/test_declarations.py",),
    ),
    Mutant(
        "a StepRef in an operational parameter accepted",
        "tasks/core/identity.py",
        "            if find_refs(value):\n",
        "            if False:\n",
        ("tests/test_declarations.py",),
    ),
    Mutant(
        "ref.path accepted as a hash attribute",
        "tasks/core/identity.py",
        '    would change with the prefix (another bucket, region or laptop)."""\n',
        '    would change with the prefix (another bucket, region or laptop)."""\n    return\n',
        ("tests/test_declarations.py",),
    ),
    Mutant(
        "walker skips dataclasses",
        "tasks/core/walk.py",
        "    fields = _fields(value)\n",
        "    fields = None\n",
        ("tests/test_declarations.py",),
    ),
    Mutant(
        "plan hashes uncoerced defaults",
        "flows/params.py",
        "            values[name] = param.default\n",
        "            pass\n",
        ("tests/test_cli_cache.py::test_plan_hashes_the_parameter_values_a_run_uses",),
    ),
    Mutant(
        "gc deletes under a live lease",
        "flows/gc.py",
        "    if not lease.try_acquire(lease_path, holder):\n        return False\n",
        "    lease.try_acquire(lease_path, holder)\n",
        (
            "tests/test_cli_cache.py::"
            "test_gc_lists_unreachable_outputs_deletes_only_with_delete_and_never_a_live_lease",
        ),
    ),
    # immutable outputs and hostile storage
    Mutant(
        "a record copied from another output is served",
        "tasks/core/records.py",
        "    if ref.name_with_hash != name_with_hash or ref.sub_path:\n",
        "    if False:\n",
        ("tests/test_hostile.py",),
    ),
    Mutant(
        "damaged outputs served (no manifest check)",
        "tasks/core/records.py",
        "    problem = manifest_check(out, manifest)\n",
        "    problem = None\n",
        ("tests/test_hostile.py", "tests/test_gcs.py"),
    ),
    Mutant(
        "an absurd lease expiry is trusted",
        "tasks/core/lease.py",
        "        elif expires > time.time() + MAX_LEASE_SECONDS + CLOCK_SKEW_SECONDS:\n",
        "        elif False:\n",
        ("tests/test_hostile.py::test_a_poisoned_lease_file_is_treated_as_expired_with_a_warning",),
    ),
    Mutant(
        "writing or deleting through symlinks",
        "tasks/core/stores.py",
        "            if os.path.islink(current):\n",
        "        if False:\n",
        (
            "tests/test_hostile.py::"
            "test_an_output_that_is_a_symlink_is_refused_and_its_target_untouched",
            "tests/test_hostile.py::test_a_link_planted_in_the_staging_area_is_never_followed",
        ),
    ),
    Mutant(
        "staging cleared without the link check",
        "tasks/core/outputs.py",
        "        store.refuse_links_below(root, prefix)  # a planted link",
        "        pass  # a planted link",
        ("tests/test_hostile.py::test_a_link_planted_in_the_staging_area_is_never_followed",),
    ),
    Mutant(
        "a failed commit is swallowed",
        "tasks/core/attempt.py",
        "            records.commit(attempt, ref)  # fenced;",
        "            try:\n"
        "                records.commit(attempt, ref)\n"
        "            except OSError:\n"
        "                pass  # fenced;",
        ("tests/test_hostile.py::test_a_commit_that_cannot_be_written_fails_the_step",),
    ),
    Mutant(
        "a planted 3 GB record is read whole",
        "tasks/core/stores.py",
        "            if info.st_size > limit:\n",
        "            if False:\n",
        ("tests/test_hostile.py::test_malformed_files_are_misses_and_never_crash_a_command",),
    ),
    Mutant(
        "publishing writes into the final folder (no staging)",
        "tasks/core/outputs.py",
        "    if store.staged:\n        root = storage.staging_root",
        "    if False:\n        root = storage.staging_root",
        ("tests/test_store_contract.py", "tests/test_hostile.py"),
    ),
    Mutant(
        "names may end in a newline",
        "tasks/core/identity.py",
        "        if not _SEGMENT.fullmatch(segment):",
        "        if not _SEGMENT.match(segment):",
        ("tests/test_hostile.py::test_bad_names_are_refused_before_anything_runs",),
    ),
    Mutant(
        "bad LMFLOWS_LEASE_SECONDS accepted",
        "tasks/core/lease.py",
        "    if not math.isfinite(value) or not MIN_LEASE_SECONDS <= value <= MAX_LEASE_SECONDS:\n",
        "    if value <= 0:\n",
        ("tests/test_hostile.py::test_bad_lease_seconds_is_one_line_before_anything_runs",),
    ),
    # production (#8): concurrent steps, resumable steps, Ray placement
    Mutant(
        "consumers no longer wait for their producers",
        "tasks/core/decorator.py",
        "        wait = upstream or None\n",
        "        wait = None\n",
        (
            "tests/test_schedule.py::"
            "test_independent_steps_overlap_and_the_consumer_waits_for_commits",
        ),
    ),
    Mutant(
        "the flow reports the last failure, not the first in call order",
        "tasks/core/schedule.py",
        "        for ref, future in self.started:\n            state = future.state\n"
        "            if not state.is_completed() and not _waited_on_failure(state):",
        "        for ref, future in reversed(self.started):\n            state = future.state\n"
        "            if not state.is_completed() and not _waited_on_failure(state):",
        (
            "tests/test_schedule.py::"
            "test_the_first_failure_in_call_order_is_named_not_the_first_in_time",
        ),
    ),
    Mutant(
        "resumable steps clear their work folder",
        "tasks/core/outputs.py",
        "    if resumable and not _has_commit(name_with_hash, prefix):",
        "    if False:",
        (
            "tests/test_resume.py::"
            "test_a_killed_resumable_step_resumes_from_its_newest_complete_checkpoint",
        ),
    ),
    Mutant(
        "--force resumes a killed attempt",
        "tasks/core/attempt.py",
        "resumable=definition.resumable and not _refreshing()",
        "resumable=definition.resumable",
        (
            "tests/test_resume.py::"
            "test_force_starts_from_nothing_after_a_commit_or_a_killed_attempt",
        ),
    ),
    Mutant(
        "a local prefix on a multi-node Ray cluster is accepted",
        "tasks/core/placement.py",
        "    if not stores.store_for(prefix).shared and len(nodes) > 1:",
        "    if not stores.store_for(prefix).shared and len(nodes) > 99:",
        ("tests/test_ray.py::test_a_local_prefix_on_a_multi_node_cluster_is_refused",),
    ),
    Mutant(
        "per-call resources never reach Ray",
        "tasks/core/decorator.py",
        "            options = self.definition.resources_for(plain) or {}",
        "            options = {}",
        ("tests/test_ray.py::test_a_step_asking_for_a_tpu_runs_in_a_worker_holding_it",),
    ),
    # the Marin-parity issue (#10)
    Mutant(
        "tokenize writes a batch's rows to every split",
        "tasks/data/tokenize.py",
        "            rows = [row for row, where in zip(encoded, splits) if where == split]",
        "            rows = list(encoded)",
        ("tests/test_tokenize_cache.py::test_the_step_writes_levanters_cache_byte_for_byte",),
    ),
    Mutant(
        "the direct tokenizer path ignores truncation turned on since",
        "tasks/data/batch_tokenizer.py",
        "backend.truncation is not None or backend.padding is not None:",
        "False:",
        ("tests/test_tokenize_cache.py::test_a_tokenizer_that_truncates_goes_through_levanter",),
    ),
    Mutant(
        "a shard read error ends the stream quietly",
        "tasks/data/tokenize.py",
        '            offer(("error", error))',
        '            offer(("end", None))',
        (
            "tests/test_tokenize_cache.py::"
            "test_a_truncated_shard_fails_the_step_and_leaves_no_reader_behind",
        ),
    ),
    Mutant(
        "evaluate imports the training step again",
        "tasks/lm/evaluate.py",
        "from tasks.lm.model import check_tokenizer_matches",
        "from tasks.lm.model import check_tokenizer_matches\n"
        "from tasks.lm.train import reference_model",
        ("tests/test_layout.py::test_readers_do_not_import_the_steps_that_write_what_they_read",),
    ),
    Mutant(
        "harness ignores max_eval_instances",
        "tasks/lm/harness.py",
        "        max_examples=max_eval_instances,",
        "        max_examples=None,",
        ("tests/test_harness.py::test_harness_eval_of_a_tiny_model",),
    ),
    Mutant(
        "max_eval_instances left out of the harness identity",
        "tasks/lm/harness.py",
        '"task_folder", "max_eval_instances", "num_fewshot"],',
        '"task_folder", "num_fewshot"],',
        (
            "tests/test_harness.py::"
            "test_max_eval_instances_and_task_data_rekey_only_the_harness_step",
        ),
    ),
    Mutant(
        "the chat template left out of the fine-tune's identity",
        "tasks/lm/sft.py",
        '        "tokenizer",\n        "chat_template",\n        "train_files",',
        '        "tokenizer",\n        "train_files",',
        ("tests/test_sft.py::test_chat_template_rekeys_the_fine_tune_not_pretraining",),
    ),
    Mutant(
        "a parabola opening downwards is taken as an optimum",
        "tasks/lm/scaling_fit.py",
        "    if c2 <= 0:",
        "    if c2 < -1e9:",
        ("tests/test_scaling.py::test_a_parabola_opening_downwards_has_no_optimum",),
    ),
    Mutant(
        "a same-size tokenizer passes for the model's own",
        "tasks/lm/model.py",
        "    if expected is not None and tokenizer_fingerprint(hf_tokenizer) != expected:",
        "    if False:",
        ("tests/test_tokenizer_match.py::test_another_tokenizer_is_refused",),
    ),
]

# Extra replacements a mutant needs to be coherent (the same bug in a second place).
MUTANTS += [
    # isolation and the attack findings (issues #16 and #19)
    Mutant(
        "isolated bodies run in the task's thread",
        "tasks/core/isolation.py",
        "    if definition.isolate:\n",
        "    if False:\n",
        (
            "tests/test_isolation.py::test_an_isolated_body_runs_in_a_process_of_its_own_and_cached_runs_start_none",
        ),
    ),
    Mutant(
        "sft no longer isolated",
        "tasks/lm/sft.py",
        "    isolate=True,\n",
        "    isolate=False,\n",
        (
            "tests/test_declarations.py::test_every_step_using_a_library_with_process_wide_state_runs_isolated",
        ),
    ),
    Mutant(
        "an isolated child ignores a takeover of its lease",
        "tasks/core/isolated_child.py",
        '    if payload.get("lease_token"):',
        '    if False and payload.get("lease_token"):',
        (
            "tests/test_isolation.py::test_a_body_whose_lease_is_lost_stops_within_a_third_of_the_lease",
        ),
    ),
    Mutant(
        "a body in the task's thread runs on after its lease is lost",
        "tasks/core/isolation.py",
        "    with interrupted_on_lease_loss(lease_path):",
        "    with contextlib.nullcontext():",
        (
            "tests/test_isolation.py::test_a_body_whose_lease_is_lost_stops_within_a_third_of_the_lease",
        ),
    ),
    Mutant(
        "known failures keep Prefect's tracebacks",
        "tasks/core/decorator.py",
        "failures.install()",
        "pass",
        (
            "tests/test_isolation.py::test_a_known_refusal_is_one_line_and_a_bug_keeps_its_traceback",
        ),
    ),
    Mutant(
        "--force keeps only the last glob",
        "flows/cli.py",
        '            action="extend",  # `--force A --force B` forces both (each glob checked)',
        "",
        ("tests/test_cli.py::test_force_and_step_are_repeatable_and_each_glob_is_checked",),
    ),
    Mutant(
        "a finished training is trained again at its last step",
        "tasks/lm/train.py",
        "    return checkpoint_step >= num_train_steps - 1",
        "    return False",
        ("tests/test_train_done.py",),
    ),
    Mutant(
        "gc deletes an input a running step reads",
        "flows/gc.py",
        "        consumers = consumers_of(name_with_hash, prefix)",
        "        consumers = []",
        ("tests/test_gc_inputs.py",),
    ),
    Mutant(
        "a step runs on an input gc deleted",
        "tasks/core/policy.py",
        "                self._check_inputs(key, deps, acquire_timeout)",
        "                pass",
        ("tests/test_gc_inputs.py",),
    ),
    Mutant(
        "a cut metrics row is kept",
        "tasks/lm/tracker.py",
        '        if content and not content.endswith(b"\\n"):',
        "        if False:",
        ("tests/test_train_done.py",),
    ),
]

MUTANTS += [
    # the nine the one-bug-at-a-time audit planted and the suite missed (issue #21)
    Mutant(
        "a reused pid counts as a live lease holder",
        "tasks/core/lease.py",
        '    return started is None or started != lease.get("pid_started")',
        "    return started is None",
        (
            "tests/test_audit_bugs.py::test_a_lease_naming_this_pid_with_another_start_time_is_dead_and_its_step_runs_at_once",
        ),
    ),
    Mutant(
        "verify skips outputs whose quick check fails",
        "flows/verify.py",
        "committed_steps(prefix, check=False)",
        "committed_steps(prefix)",
        ("tests/test_audit_bugs.py::test_verify_names_a_truncated_and_a_deleted_file",),
    ),
    Mutant(
        "--param str coercion misses postponed annotations",
        "flows/params.py",
        '    if annotation in (str, "str"):',
        "    if annotation is str:",
        (
            "tests/test_audit_bugs.py::test_a_str_parameter_under_postponed_annotations_keeps_its_text",
        ),
    ),
    Mutant(
        "the server watch never forgives a miss",
        "flows/watch.py",
        "            missed = 0 if self.healthy() else missed + 1",
        "            missed = missed if self.healthy() else missed + 1",
        (
            "tests/test_audit_bugs.py::test_a_server_that_fails_every_other_health_check_is_never_lost",
        ),
    ),
    Mutant(
        "near-duplicates at exactly the threshold are kept",
        "tasks/data/minhash.py",
        "            if similarity >= self.threshold and",
        "            if similarity > self.threshold and",
        ("tests/test_audit_bugs.py::test_threshold_one_drops_a_document_with_the_same_words",),
    ),
    Mutant(
        "train and validation documents swapped",
        "tasks/data/tokenize.py",
        '    return "validation" if bucket < validation_fraction else "train"',
        '    return "train" if bucket < validation_fraction else "validation"',
        (
            "tests/test_audit_bugs.py::test_the_validation_split_holds_about_validation_fraction_of_the_documents",
        ),
    ),
    Mutant(
        "weight_decay not passed to the optimizer",
        "tasks/lm/train_run.py",
        "                **pick(arguments, OPTIM_ATTRS),\n",
        '                **pick(arguments, [n for n in OPTIM_ATTRS if n != "weight_decay"]),\n',
        ("tests/test_audit_bugs.py::test_the_weight_decay_asked_for_reaches_levanters_optimizer",),
    ),
    Mutant(
        "sft trains on the user's turns",
        "tasks/lm/chat_data.py",
        "format=ChatLmDatasetFormat(chat_template=chat_template)",
        "format=ChatLmDatasetFormat(chat_template=chat_template, mask_user_turns=False)",
        ("tests/test_audit_bugs.py::test_a_built_chat_example_trains_on_the_assistant_turn_only",),
    ),
    Mutant(
        "the quick check looks at the first file only",
        "tasks/core/manifest.py",
        "    for rel, want in files.items():\n        have = listing.get(rel)\n"
        "        if have is None:\n            return",
        "    for rel, want in list(files.items())[:1]:\n        have = listing.get(rel)\n"
        "        if have is None:\n            return",
        (
            "tests/test_audit_bugs.py::test_a_truncated_second_file_makes_the_next_run_recompute_naming_it",
        ),
    ),
    Mutant(
        "the harness never sets the shots",
        "tasks/lm/harness.py",
        "            _set_fewshot(task_dict, self.num_fewshot)\n",
        "",
        ("tests/test_harness.py::test_harness_eval_with_few_shot_examples",),
    ),
    # bad data and tokenizer files (issue #20)
    Mutant(
        "an empty corpus is deduplicated into an empty output",
        "tasks/data/dedup.py",
        '    if stats["documents_in"] == 0:',
        "    if False:",
        ("tests/test_bad_corpus.py::test_an_empty_corpus_fails_dedup_and_commits_nothing",),
    ),
    Mutant(
        "a truncated tokenizer.json reaches transformers",
        "tasks/data/tokenizer_files.py",
        '    if "tokenizer.json" in present:',
        "    if False:",
        ("tests/test_bad_corpus.py::test_a_truncated_tokenizer_json_is_refused_naming_the_file",),
    ),
    Mutant(
        "a too-short validation split reaches levanter",
        "tasks/lm/train.py",
        '        for split in ("train", "validation"):',
        '        for split in ("train",):',
        (
            "tests/test_bad_corpus.py::test_splits_shorter_than_one_sequence_are_refused_before_training",
        ),
    ),
    Mutant(
        "local harness tasks are not checked when planned",
        "tasks/lm/harness_folder.py",
        "        _check_local_task(name, config, files)\n",
        "",
        (
            "tests/test_bad_corpus.py::test_a_local_harness_task_that_cannot_be_scored_is_refused_when_planned",
        ),
    ),
    Mutant(
        "a failed atomic write leaves its temp file",
        "tasks/core/stores.py",
        "            with contextlib.suppress(OSError):\n                os.remove(tmp)\n",
        "            pass\n",
        ("tests/test_bad_corpus.py::test_a_write_that_runs_out_of_space_leaves_no_temp_file",),
    ),
    Mutant(
        "a killed attempt's end is never recorded",
        "tasks/core/outputs.py",
        "    _record_unended(attempt)\n",
        "",
        (
            "tests/test_resume.py::test_a_killed_resumable_step_resumes_from_its_newest_complete_checkpoint",
        ),
    ),
    # the fork server of isolated bodies (issue #16)
    Mutant(
        "a forked body keeps the fork server's environment",
        "tasks/core/fork_server.py",
        '    os.environ.update(request["env"])',
        "    pass",
        (
            "tests/test_isolation.py::test_forked_bodies_get_the_callers_environment_and_output_and_outlive_their_server",
        ),
    ),
    Mutant(
        "a forked body keeps the fork server's umask and random state",
        "tasks/core/fork_server.py",
        "    _apply_process_state(request)\n",
        "",
        (
            "tests/test_isolation.py::test_forked_bodies_get_the_callers_environment_and_output_and_outlive_their_server",
        ),
    ),
    Mutant(
        "a forked body writes to the fork server's stdout",
        "tasks/core/fork_server.py",
        "for target, fd in ((0, stdin_fd), (1, stdout_fd), (2, stderr_fd)):",
        "for target, fd in ((0, stdin_fd),):",
        (
            "tests/test_isolation.py::test_forked_bodies_get_the_callers_environment_and_output_and_outlive_their_server",
        ),
    ),
    # adopt (tasks/core/adopt.py) and --only (issue 17)
    Mutant(
        "an adopted folder's identity depends on its location",
        "tasks/core/adopt.py",
        '{"name": name, "fingerprint": found})',
        '{"name": name, "fingerprint": found + location})',
        (
            "tests/test_adopt.py::test_an_adopted_folder_is_read_in_place_and_keys_downstream_by_content",
            "tests/test_adopt.py::test_on_gs_the_digests_come_from_the_listing_and_two_buckets_agree",
        ),
    ),
    Mutant(
        "an adopted folder's file list keeps the change hints (ctime, inode, generation)",
        "tasks/core/adopt.py",
        'files[rel] = {"bytes": entry["bytes"], **digests}',
        "files[rel] = {**entry, **digests}",
        (
            "tests/test_adopt.py::test_an_adopted_folder_is_read_in_place_and_keys_downstream_by_content",
            "tests/test_adopt.py::test_on_gs_the_digests_come_from_the_listing_and_two_buckets_agree",
        ),
    ),
    Mutant(
        "a changed adopted file is not refused",
        "tasks/core/adopt.py",
        'if recorded is not None and recorded["fingerprint"] != found and fingerprint != found:',
        "if False:",
        ("tests/test_adopt.py::test_a_changed_file_is_refused_naming_it",),
    ),
    Mutant(
        "an adopted file changed in place (same size) is not read again",
        "tasks/core/adopt.py",
        ' and baseline["hints"].get(rel) == hints:',
        ":",
        (
            "tests/test_adopt.py::test_a_changed_file_is_refused_naming_it",
            "tests/test_adopt.py::test_content_is_read_once_and_then_only_where_a_file_changed",
        ),
    ),
    Mutant(
        "--only runs every call of a selected step's name",
        "tasks/core/decorator.py",
        "if identity.name_with_hash in _ONLY:",
        'if identity.name in {key.rsplit("-", 1)[0] for key in _ONLY}:',
        ("tests/test_only.py::test_only_runs_the_matching_steps_and_what_they_need",),
    ),
    Mutant(
        "--only selects without the steps the matching ones need",
        "flows/planned.py",
        "        todo.extend(item.deps if item is not None else ())\n",
        "",
        ("tests/test_only.py::test_only_runs_the_matching_steps_and_what_they_need",),
    ),
    Mutant(
        "StepRef / 'x' does not point at .cd('x')",
        "tasks/core/ref.py",
        "    def __truediv__(self, other: object) -> StepRef:",
        "    def _no_truediv(self, other: object) -> StepRef:",
        ("tests/test_adopt.py::test_a_step_ref_is_not_a_path",),
    ),
    # evaluate while training (issue 17, item 5)
    Mutant(
        "a training announces no checkpoint",
        "tasks/lm/checkpoint_events.py",
        '    if not options.get("is_temporary", False) and jax.process_index() == 0:',
        "    if False:",
        (
            "tests/test_evaluate_checkpoint.py::test_a_checkpoint_is_announced_once_it_is_complete_and_temporary_ones_never",
            "tests/test_evaluate_checkpoint.py::test_each_checkpoint_of_a_training_is_evaluated_once",
        ),
    ),
    Mutant(
        "a checkpoint is announced before levanter has written it whole",
        "tasks/lm/checkpoint_events.py",
        "        return save(info, destination, commit_callback=committed, **kwargs)",
        "        committed()\n        return save(info, destination, **kwargs)",
        (
            "tests/test_evaluate_checkpoint.py::test_a_checkpoint_is_announced_once_it_is_complete_and_temporary_ones_never",
        ),
    ),
    Mutant(
        "an isolated body's queued events and logs are dropped when its process exits",
        "tasks/core/isolated_child.py",
        "            finally:\n                _flush_api_logs()",
        "            finally:\n                pass",
        (
            "tests/test_evaluate_checkpoint.py::test_an_isolated_body_sends_its_queued_events_before_its_process_exits",
        ),
    ),
    Mutant(
        "a checkpoint evaluation's identity ignores the checkpoint step",
        "tasks/lm/evaluate_checkpoint.py",
        '        "checkpoint_step",\n        "name",',
        '        "name",',
        (
            "tests/test_pinned.py::test_checkpoint_evaluations_are_pinned_and_name_the_step",
            "tests/test_evaluate_checkpoint.py::test_each_checkpoint_of_a_training_is_evaluated_once",
        ),
    ),
    Mutant(
        "the evaluate-checkpoint flow trusts the event's checkpoint path",
        "flows/evaluate_checkpoint.py",
        "    if checkpoint is not None:\n        check_place(",
        "    if False:\n        check_place(",
        (
            "tests/test_evaluate_checkpoint.py::test_the_flow_refuses_a_forged_event_before_any_step",
        ),
    ),
    Mutant(
        "an event may name a training that is neither committed nor running",
        "flows/evaluate_checkpoint.py",
        "    if lease.is_live(current):",
        "    if True:",
        (
            "tests/test_evaluate_checkpoint.py::test_bad_event_content_is_refused_in_one_line",
            "tests/test_evaluate_checkpoint.py::test_a_running_training_is_known_by_its_live_lease",
        ),
    ),
    # attack 17 (tests/test_attack_17.py)
    Mutant(
        "an adopted folder changed between plan and run is adopted as it is then",
        "tasks/core/adopt.py",
        "if plan is None and planned is not None and fingerprint_of(planned) != found:",
        "if False:",
        (
            "tests/test_attack_17.py::test_a_folder_changed_between_plan_and_run_is_refused_not_silently_skipped",
        ),
    ),
    Mutant(
        "a --force glob outside the --only selection is silently not re-executed",
        "flows/planned.py",
        '        _check_force_globs(force, plan, "--only leaves out every step it matches")\n',
        "",
        ("tests/test_attack_17.py::test_only_refuses_a_force_glob_that_the_selection_leaves_out",),
    ),
    Mutant(
        "a checkpoint step in non-ASCII digits is taken",
        "flows/evaluate_checkpoint.py",
        "not (text.isascii() and text.isdigit())",
        "not text.isdigit()",
        ("tests/test_attack_17.py::test_a_checkpoint_step_in_other_digits_is_refused_by_name",),
    ),
    Mutant(
        "an adopt index record whose files do not give its fingerprint is trusted",
        "tasks/core/adopt.py",
        'and fingerprint_of(entry["files"]) == entry["fingerprint"]',
        "",
        ("tests/test_attack_17.py::test_a_damaged_index_record_is_ignored_not_trusted",),
    ),
    Mutant(
        "an adopt index record of another location is used",
        "tasks/core/adopt.py",
        'and entry.get("location") == location',
        "",
        ("tests/test_attack_17.py::test_an_index_record_of_another_location_is_ignored",),
    ),
    Mutant(
        "the run after a plan reads the adopted files again",
        "tasks/core/adopt.py",
        "for b in (recorded, _MEMO.get(location)) if b]",
        "for b in (recorded,) if b]",
        ("tests/test_attack_17.py::test_the_run_after_a_plan_reuses_what_the_plan_read",),
    ),
    Mutant(
        "an adopted folder's own .lmflows/ enters its fingerprint",
        "tasks/core/stores.py",
        "            dirs[:] = [d for d in dirs if d != META_DIR]\n        dirs.sort()",
        "            pass\n        dirs.sort()",
        ("tests/test_attack_17.py::test_the_folders_own_lmflows_folder_is_not_content",),
    ),
    Mutant(
        "fingerprint pin ignored on first adoption",
        "tasks/core/adopt.py",
        "    if fingerprint is not None and fingerprint != found:\n",
        "    if recorded is not None and fingerprint is not None and fingerprint != found:\n",
        (
            "tests/test_attack_17.py::test_a_pinned_fingerprint_is_checked_on_the_first_adoption_too",
        ),
    ),
    Mutant(
        "skipped step loses committed metadata",
        "tasks/core/decorator.py",
        "return committed if committed is not None else _ref_of(identity)",
        "return _ref_of(identity)",
        (
            "tests/test_attack_17.py::test_only_skipped_calls_return_committed_metadata_and_nested_calls_run",
        ),
    ),
    Mutant(
        "nested calls inside a body skipped",
        "tasks/core/decorator.py",
        "if _ONLY is None or _in_task_run():",
        "if _ONLY is None:",
        (
            "tests/test_attack_17.py::test_only_skipped_calls_return_committed_metadata_and_nested_calls_run",
        ),
    ),
    Mutant(
        "map ignores --only",
        "tasks/core/decorator.py",
        "        if _ONLY is not None:  # each call on its own",
        "        if False:  # each call on its own",
        ("tests/test_attack_17.py::test_only_applies_to_each_call_of_a_map",),
    ),
    Mutant(
        "stale --only not reset by plan",
        "flows/planned.py",
        "    set_only(None)\n",
        "",
        ("tests/test_attack_17.py::test_a_plan_without_only_clears_an_earlier_selection",),
    ),
    Mutant(
        "committed training's inputs not compared",
        "flows/evaluate_checkpoint.py",
        '        if wrong or attrs.get("tokenizer") != tokenizer:',
        "        if False:",
        (
            "tests/test_attack_17.py::test_a_committed_trainings_inputs_are_compared_with_its_provenance",
        ),
    ),
    Mutant(
        "checkpoint metadata step not compared",
        "tasks/lm/evaluate_checkpoint.py",
        'if int(json.load(handle)["step"]) == checkpoint_step:',
        "if True:",
        (
            "tests/test_attack_17.py::test_a_checkpoint_is_found_only_when_its_metadata_names_its_step",
        ),
    ),
    Mutant(
        "identity_under accepts sibling prefix",
        "tasks/lm/checkpoint_events.py",
        'base = prefix.rstrip("/") + "/"',
        'base = prefix.rstrip("/")',
        ("tests/test_attack_17.py::test_a_path_beside_the_prefix_is_not_under_it",),
    ),
]

# issue 17: continuing from checkpoints, extending a run
EXTEND = "tests/test_extend.py"
MUTANTS += [
    Mutant(
        "an initialize_from source of another shape is not refused",
        "tasks/lm/initialize.py",
        "    if differ:\n        raise InitializeFromError(",
        "    if False:\n        raise InitializeFromError(",
        ("tests/test_continue.py::test_a_source_of_another_shape_is_refused_before_anything_runs",),
    ),
    Mutant(
        "initialize_optimizer carries the source's schedule count",
        "tasks/lm/initialize.py",
        '    if names and names[-1] == "count" and "inner_state" not in names:\n'
        "        return fresh",
        "    if False:\n        return fresh",
        (
            "tests/test_continue.py::test_a_cooldown_starts_at_the_sources_last_loss_with_or_without_its_optimizer",
        ),
    ),
    Mutant(
        "a cosine run is extended",
        "tasks/lm/schedules.py",
        'EXTENDABLE = ("constant", "wsd")',
        'EXTENDABLE = ("constant", "wsd", "cosine")',
        (
            f"{EXTEND}::test_a_cosine_run_is_never_extended",
            "tests/test_schedules.py::test_cosine_and_linear_runs_share_nothing_with_longer_ones",
        ),
    ),
    Mutant(
        "an extension trains from step 0",
        "tasks/lm/train.py",
        '        return {"resume_from": extends.checkpoint}',
        "        return {}",
        (f"{EXTEND}::test_a_constant_run_of_80_steps_trains_only_the_40_after_a_committed_40",),
    ),
    Mutant(
        "an extension starts after the decay began",
        "tasks/lm/extension.py",
        "        last = min(shared - 1, total - 2)",
        "        last = total - 2",
        (f"{EXTEND}::test_a_wsd_run_extends_from_the_step_before_its_decay",),
    ),
    Mutant(
        "the checkpoint before the decay is not kept",
        "tasks/lm/train_run.py",
        "            also=kept_step(arguments, num_train_steps),",
        "            also=None,",
        (
            "tests/test_schedules.py::test_the_step_a_longer_run_starts_from_is_kept_by_levanter",
            f"{EXTEND}::test_a_wsd_run_extends_from_the_step_before_its_decay",
        ),
    ),
    Mutant(
        "an attribute added later re-keys every identity at its default",
        "tasks/core/identity.py",
        "    return type(value) is type(default) and value == default",
        "    return False",
        (
            "tests/test_pinned.py",
            "tests/test_schedules.py::test_an_attribute_added_later_leaves_identities_as_they_were_at_its_default",
        ),
    ),
]

# attack on issue 17 (tests/test_attack_continue.py)
ATTACK = "tests/test_attack_continue.py"
MUTANTS += [
    Mutant(
        "an extension takes a same-name sibling with other inputs",
        "tasks/lm/extension.py",
        "if k != TOTAL}",
        "if k == 'lr_schedule'}",
        (f"{ATTACK}::test_a_sibling_of_the_same_name_with_other_inputs_is_never_a_source",),
    ),
    Mutant(
        "an extension takes an uncommitted or damaged sibling",
        "tasks/lm/extension.py",
        "if _lineage(other) != lineage or records.read_commit(sibling, prefix) is None:",
        "if _lineage(other) != lineage:",
        (f"{ATTACK}::test_an_uncommitted_or_damaged_sibling_is_never_a_source",),
    ),
    Mutant(
        "an extension takes the first sibling, not the latest shared checkpoint",
        "tasks/lm/extension.py",
        "(best is None or found[1] > best.step)",
        "best is None",
        (f"{ATTACK}::test_of_two_siblings_the_later_shared_checkpoint_is_the_source",),
    ),
    Mutant(
        "an extension from a longer sibling leaves nothing to train",
        "tasks/lm/extension.py",
        "last = min(shared - 1, total - 2)",
        "last = min(shared - 1, total - 1)",
        (f"{ATTACK}::test_a_longer_sibling_leaves_the_run_at_least_one_update_to_train",),
    ),
    Mutant(
        "an extension trusts a provenance that is not its folder's identity",
        "tasks/lm/extension.py",
        "        if compute_hash(name, attrs, deps) != hash_:\n            return None\n",
        "",
        (f"{ATTACK}::test_a_sibling_whose_provenance_is_not_its_identity_is_never_extended",),
    ),
    Mutant(
        "omit_at_default omits a value of another type",
        "tasks/core/identity.py",
        "    return type(value) is type(default) and value == default",
        "    return value == default",
        (f"{ATTACK}::test_an_omitted_default_is_omitted_only_at_its_own_type",),
    ),
    Mutant(
        "a warmup levanter refuses is accepted",
        "tasks/lm/schedules.py",
        '    _check_frac_or_steps("warmup", warmup, zero_ok=True)\n',
        "",
        (f"{ATTACK}::test_a_warmup_levanter_refuses_or_that_does_not_fit_the_run_is_one_line",),
    ),
]

EXTRA = {
    "a checkpoint evaluation's identity ignores the checkpoint step": [
        (
            "tasks/lm/evaluate_checkpoint.py",
            '    operational=["accelerator"],\n    name="eval/{name}/step-{checkpoint_step}",',
            '    operational=["accelerator", "checkpoint_step"],\n    name="eval/{name}",',
        )
    ],
    "learning_rate made operational in train_lm": [
        (
            "tasks/lm/train.py",
            "        *TRAINING_ATTRS,\n",
            '        *(name for name in TRAINING_ATTRS if name != "learning_rate"),\n',
        )
    ],
}


def _copy_repo(target: Path) -> None:
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for rel in files:
        source = REPO / rel
        if source.is_file():
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / rel)


def _apply(root: Path, path: str, old: str, new: str) -> None:
    file = root / path
    text = file.read_text()
    if old not in text:
        raise SystemExit(f"mutant text not found in {path}: {old!r} (update scripts/mutants.py)")
    file.write_text(text.replace(old, new, 1))


def run(mutant: Mutant, python: str, fast: bool = False) -> tuple[bool, float, str]:
    """Plant the mutant in a copy and run its guards (or, `fast`, the whole fast tier)."""
    with tempfile.TemporaryDirectory(prefix="lmflows-mutant-") as tmp:
        root = Path(tmp)
        _copy_repo(root)
        _apply(root, mutant.path, mutant.old, mutant.new)
        for path, old, new in EXTRA.get(mutant.name, []):
            _apply(root, path, old, new)
        env = {**os.environ, "PYTHONPATH": str(root)}
        where = subprocess.run(
            [python, "-c", "import tasks; print(tasks.__file__)"],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
        ).stdout.strip()
        if not where.startswith(str(root)):
            raise SystemExit(f"the copy is not what Python imports ({where}); cannot run")
        started = time.monotonic()
        result = subprocess.run(
            [
                python,
                "-m",
                "pytest",
                "-q",
                "-x",
                "-p",
                "no:cacheprovider",
                *(["-m", "not slow"] if fast else mutant.guards),
            ],  # fmt: skip
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            timeout=1800,
        )
        last = (result.stdout.strip().splitlines() or [""])[-1]
        return result.returncode != 0, time.monotonic() - started, last


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", nargs="*", default=None, help="substrings of mutant names")
    parser.add_argument("--list", action="store_true")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="run each mutant against the fast tier (make test-fast) and list those that "
        "only the full tier catches",
    )
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if args.only is None or any(s in m.name for s in args.only)]
    if args.list:
        for m in chosen:
            print(f"{m.name}: {m.path} -> {' '.join(m.guards)}")
        return 0
    python = str(REPO / ".venv" / "bin" / "python")
    if not os.path.exists(python):
        python = sys.executable
    missed = []
    for mutant in chosen:
        caught, seconds, last = run(mutant, python, fast=args.fast)
        print(
            f"{'caught' if caught else 'MISSED'}  {seconds:6.1f} s  {mutant.name}  [{last}]",
            flush=True,
        )
        if not caught:
            missed.append(mutant.name)
    print(f"{len(chosen) - len(missed)} of {len(chosen)} mutants caught")
    if args.fast and missed:
        print("need the full tier (make test): " + "; ".join(missed))
        return 0
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
