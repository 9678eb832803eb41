"""docs/errors.md, row by row: every bad input and every interrupt it lists is tied to the test
that produces its message, by a fragment of the message that the documented line shows and that
the test checks for. A row added, removed or renumbered, a message reworded on one side only,
or a test that no longer checks its row's message fails here.

The messages themselves are produced by the named tests (through `bertzoo` as a user types
it); this file keeps the page and those tests in step.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ERRORS = ROOT / "docs" / "errors.md"

# row -> (the test that produces the message, a fragment of it that test checks)
BAD_INPUT = {
    1: ("test_errors.py::test_unknown_yaml_key_suggests_the_closest",
        "error: Subcommand 'fit' does not accept option '"),
    2: ("test_errors.py::test_unknown_command_line_option_suggests_the_closest",
        "error: unrecognized arguments: --data.max_lenght=64; did you "),
    3: ("test_errors.py::test_wrong_type_names_the_key_and_the_expected_type",
        "data.batch_size: expected int >= 1, got 'lots'"),
    4: ("test_registry.py::test_cli_with_unknown_or_broken_task",
        "(did you mean 'classification'?)"),
    5: ("test_cli.py::test_task_name_from_the_command_line_or_the_recipe",
        "--task ner conflicts with "),
    6: ("test_errors.py::test_backbone_and_config_together",
        "bertzoo fit: error: give either model.backbone (a checkpoint to start from) or "),
    7: ("test_pretraining.py::test_bad_inputs_fail_before_training",
        "max_seq_length (128) exceeds the model's max_position_embeddings (64)"),
    8: ("test_pretraining.py::test_bad_inputs_fail_before_training",
        "the tokenizer has 200 tokens but model.config has vocab_size 999"),
    9: ("test_pretraining_data.py::test_missing_file_is_a_clear_error",
        "data.train_files: no such file: "),
    10: ("test_pretraining.py::test_bad_inputs_fail_before_training",
         "empty.txt has no documents"),
    11: ("test_pretraining.py::test_bad_inputs_fail_before_training",
         "single.txt has a single document; next sentence prediction needs at least two"),
    12: ("test_cli.py::test_bad_input_is_a_message_not_a_traceback",
         "missing column(s) 'sentence'"),
    13: ("test_classification.py::test_label_in_dev_not_seen_in_training",
         ", line 3: label '2' was not seen in training "),
    14: ("test_classification.py::test_empty_and_header_only_files",
         "has no rows (empty or header only)"),
    15: ("test_ner_data.py::test_bad_conll_lines_name_file_and_line",
         "is the tag missing"),
    16: ("test_qa.py::test_ambiguous_or_missing_answer_is_an_error_naming_the_question",
         "question q1: answer 'Stockholm' does not occur"),
    17: ("test_qa.py::test_doc_stride_too_large_for_the_question_is_a_clear_error",
         "5 tokens long, which leaves "),
    18: ("test_errors.py::test_checkpoint_of_another_task_names_both",
         "bertzoo.tasks.classification.ClassificationModule (task 'classification'), but this "),
    19: ("test_errors.py::test_truncated_checkpoint_names_the_file",
         "PytorchStreamReader failed reading zip archive: failed finding central directory)"),
    20: ("test_errors.py::test_truncated_checkpoint_names_the_file",
         "PytorchStreamReader failed reading zip archive: failed finding central directory)"),
    21: ("test_errors.py::test_checkpoint_holding_objects_is_refused_unread",
         "(UnpicklingError: Weights only load failed: it would construct test_errors.Payload, "),
    22: ("test_errors.py::test_tokenizer_folder_without_vocabulary",
         "vocab.txt; a BERT tokenizer folder needs one of them"),
    23: ("test_checkpoint.py::test_folder_without_weights",
         "has no weights: expected model.safetensors"),
    24: ("test_cli.py::test_run_folders_and_ckpt_path_last",
         "--ckpt_path last: no last.ckpt under runs/"),
    25: ("test_registry.py::test_broken_plugin_is_reported_and_skipped",
         "task 'broken' from broken-import cannot be used: "),
    26: ("test_registry.py::test_duplicate_of_a_built_in_name",
         "duplicate task name 'classification': registered "),
    27: ("test_validation.py::test_out_of_range_values_are_refused_when_parsed",
         "data.batch_size: expected int >= 1, got 0"),
    28: ("test_validation.py::test_out_of_range_value_in_a_recipe",
         "data.max_train_samples: expected int >= 1 or "),
    29: ("test_validation.py::test_pretraining_probabilities_are_ranges",
         "data.mlm_probability: expected float in "),
    30: ("test_validation.py::test_task_length_longer_than_the_positions",
         "data.max_length (512) exceeds the model's max_position_embeddings "),
    31: ("test_validation.py::test_pair_column_that_is_the_text_column",
         "data.text_pair_column is data.text_column ('sentence'): a pair "),
    32: ("test_validation.py::test_a_trainer_setting_lightning_refuses",
         "bertzoo fit: error: trainer: To use the `DeepSpeedStrategy`, you must have DeepSpeed "),
    33: ("test_validation.py::test_foreign_data_files_are_named",
         "a NUL byte; this looks like a binary file, "),
    34: ("test_validation.py::test_foreign_data_files_are_named",
         "is UTF-16 text; expected UTF-8 text (save it as UTF-8)"),
    35: ("test_validation.py::test_foreign_data_files_are_named",
         "line 1: byte 0xe9 is not UTF-8; expected UTF-8 text (save "),
    36: ("test_validation.py::test_damaged_tokenizer_and_config_files_are_named",
         "binary file, not a tokenizer.json (UTF-8 JSON)"),
    37: ("test_validation.py::test_damaged_tokenizer_and_config_files_are_named",
         "config.json is not UTF-8 JSON text (byte 0: invalid "),
    38: ("test_validation.py::test_padding_multiple_beyond_the_positions",
         "data.pad_to_multiple_of (600) pads a batch of data.max_length (128) "),
    39: ("test_glue.py::test_a_backbone_shorter_than_max_length_is_refused_before_the_first_step",
         "data.max_length (128) exceeds the model's max_position_embeddings "),
    40: ("test_glue.py::test_cola_files_without_a_header", "fields, but data.column_names "),
    41: ("test_glue.py::test_hub_split_names_and_their_check",
         "data.dataset_splits: unknown split"),
    42: ("test_glue.py::test_a_config_json_as_model_config", "model.config: no such file: "),
    43: ("test_schedules.py::test_an_unknown_scheduler_is_refused_by_the_command_line",
         "Got value: cosin"),
    44: ("test_schedules.py::test_an_unknown_scheduler_is_refused_by_the_command_line",
         "model.decay_fraction: expected float in (0, 1], got 1.5"),
    45: ("test_glue.py::test_unknown_task_names_are_refused",
         "--tasks: unknown GLUE task(s) sts; the tasks are cola, sst2, "),
    46: ("test_chinese.py::test_without_jieba_the_error_names_the_extra",
         "jieba is not installed; install the Chinese extra: "),
    47: ("test_streaming_resume.py::test_a_streamed_run_stopped_by_ctrl_c_resumes_bitwise",
         "stream resumes exactly only with the same layout: resume with the same "),
    48: ("test_validation.py::test_warmup_longer_than_max_steps_is_refused_before_data_is_read",
         "model.warmup (300 steps) is longer than the run "),
    49: ("test_validation.py::test_warmup_longer_than_the_epochs_refused_before_a_step",
         "optimizer steps: trainer.max_epochs="),
    50: ("test_validation.py::test_global_batch_that_does_not_divide_is_refused",
         "is not a multiple of data.batch_size ("),
    51: ("test_validation.py::test_global_batch_that_does_not_divide_is_refused",
         "trainer.accumulate_grad_batches (2) contradicts global_batch_size ("),
    52: ("test_validation.py::test_a_damaged_recipe_is_named", ": not valid YAML (expected "),
    53: ("test_validation.py::test_an_empty_value_in_a_recipe_is_refused",
         "got null (an empty value in "),
}
INTERRUPTS = {
    "non-finite training loss (NaN/inf)":
        ("test_resume.py::test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint",
         "train/loss is nan at step 8 (epoch 1, batch 1 of the epoch)"),
    "Ctrl-C during training":
        ("test_resume.py::test_pretraining_interrupted_mid_epoch_resumes_bitwise",
         "stopped: Ctrl-C at step 3 (epoch 0); saved "),
    "SIGTERM (a scheduler preempting the job)":
        ("test_resume.py::test_sigterm_saves_like_ctrl_c_and_a_second_ctrl_c_stops_without_saving",
         "stopped: SIGTERM at step 2 (epoch 0)"),
    # The message is Lightning's own; the test checks the exit and that nothing was saved.
    "a second Ctrl-C":
        ("test_resume.py::test_sigterm_saves_like_ctrl_c_and_a_second_ctrl_c_stops_without_saving",
         None),
    "a crash or full disk while a checkpoint is written":
        ("test_resume.py::test_a_crash_while_saving_leaves_the_previous_checkpoint_whole",
         "No space left on device"),
}


def table_rows(section: str) -> list[list[str]]:
    """The cells of each body row of the table under the `## section` heading."""
    text = ERRORS.read_text().split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or line.startswith("|---"):
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if cells[0] in ("#", "event") or cells[0].startswith("**"):
            continue  # the header, and group headings such as **config**
        rows.append(cells)
    return rows


def shown(cell: str) -> str:
    """The text of a cell's code spans: the message as the user sees it (<br> = new line). A
    message holding backticks is written as a ``double-backtick`` span."""
    return "\n".join("".join(a or b for a, b in re.findall(r"`` (.+?) ``|`([^`]*)`", part))
                     for part in cell.split("<br>"))


def source_of(reference: str) -> str:
    """The source of `file::function` in tests/, its decorators (parameters) included."""
    file_name, function = reference.split("::")
    source = (ROOT / "tests" / file_name).read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == function:
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            return "\n".join(source.splitlines()[first - 1:node.end_lineno])
    raise AssertionError(f"docs/errors.md names {reference}, which does not exist")


def referenced_tests(cell: str) -> list[str]:
    return re.findall(r"`(test_\w+\.py(?:::\w+)?)`", cell)


def test_the_tables_have_exactly_these_rows():
    bad_input = table_rows("The table")
    assert [int(cells[0]) for cells in bad_input] == sorted(BAD_INPUT) == list(range(1, 54))
    assert [cells[0] for cells in table_rows("Interrupts and failures")] == list(INTERRUPTS)


@pytest.mark.parametrize("row", sorted(BAD_INPUT))
def test_bad_input_row_is_the_message_its_test_checks(row):
    cells = {int(c[0]): c for c in table_rows("The table")}[row]
    message, tests = shown(cells[2]), cells[3]
    reference, fragment = BAD_INPUT[row]
    # one message, as bertzoo prints it (or the argument parser, for a bad argument)
    assert re.match(r"(bertzoo \w+: )?error: ", message), message
    assert fragment in message, f"row {row}: the page no longer shows {fragment!r}"
    assert reference in referenced_tests(tests), f"row {row} does not name {reference}"
    assert fragment in source_of(reference), f"{reference} does not check {fragment!r}"
    for other in referenced_tests(tests):  # every test the row names exists
        if "::" in other:
            source_of(other)
        else:
            assert (ROOT / "tests" / other).is_file(), other


@pytest.mark.parametrize("event", list(INTERRUPTS))
def test_interrupt_row_is_the_message_its_test_checks(event):
    rows = table_rows("Interrupts and failures")
    at = [c[0] for c in rows].index(event)
    message, tests = shown(rows[at][1]), rows[at][3]
    if tests == "same test":
        tests = rows[at - 1][3]
    reference, fragment = INTERRUPTS[event]
    assert reference in referenced_tests(tests), f"{event}: the row does not name {reference}"
    source = source_of(reference)
    if fragment is not None:
        assert fragment in message, f"{event}: the page no longer shows {fragment!r}"
        assert fragment in source, f"{reference} does not check {fragment!r}"
