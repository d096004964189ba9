"""Built-in contrastive tasks and user JSONL files (tokenizer only, no forward passes)."""

from __future__ import annotations

import json

import pytest

from saelab.base.errors import UserError
from saelab.circuits.tasks import BUILTIN_TASKS, load_task


@pytest.fixture(scope="module")
def tokenizer(model):
    return model.tokenizer


@pytest.mark.parametrize("name", BUILTIN_TASKS)
def test_builtin_tasks_are_aligned_single_token_contrasts(tokenizer, name):
    task = load_task(name, tokenizer, bos_id=1, n=16, seed=5)
    assert task.clean.shape == task.patch.shape and task.clean.shape[0] == 16
    assert (task.clean[:, 0] == 1).all()
    differs = (task.clean != task.patch).sum(1)
    assert (differs == 1).all()  # exactly one token changes: the subject (or IOI's S2 name)
    assert (task.correct != task.wrong).all()
    again = load_task(name, tokenizer, bos_id=1, n=16, seed=5)
    assert [e.clean for e in again.examples] == [e.clean for e in task.examples]
    if name.startswith("sva"):
        plural = [
            e.correct in (" are", " were") or (name == "sva-within-rc" and e.correct[-1] != "s")
            for e in task.examples
        ]
        assert 0 < sum(plural) < len(plural)


def test_a_user_jsonl_file(tokenizer, tmp_path):
    path = tmp_path / "t.jsonl"
    rows = [
        {"clean": "The cat", "patch": "The cats", "correct": " is", "wrong": " are"},
        {"clean": "The dogs", "patch": "The dog", "correct": " are", "wrong": " is"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    task = load_task(str(path), tokenizer, bos_id=1, n=10)
    assert len(task) == 2 and task.name == "t"
    assert task.correct.tolist() == [
        tokenizer(" is")["input_ids"][0],
        tokenizer(" are")["input_ids"][0],
    ]


@pytest.mark.parametrize(
    "line, message",
    [
        ("{not json", "t.jsonl:2: not valid JSON"),
        ('{"clean": "The cat", "correct": " is"}', "t.jsonl:2: missing"),
        (
            '{"clean": "The cat", "patch": "The big cats", "correct": " is", "wrong": " are"}',
            "different token lengths",
        ),
        (
            '{"clean": "The cat", "patch": "The cats", "correct": " is", "wrong": " is"}',
            "same token",
        ),
    ],
)
def test_bad_jsonl_rows_name_their_line(tokenizer, tmp_path, line, message):
    path = tmp_path / "t.jsonl"
    good = '{"clean": "The dog", "patch": "The dogs", "correct": " is", "wrong": " are"}'
    path.write_text(good + "\n" + line + "\n")
    with pytest.raises(UserError, match=message) as err:
        load_task(str(path), tokenizer, bos_id=1)
    assert "\n" not in str(err.value)
