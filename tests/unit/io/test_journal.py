"""The node-local journal of answers: read back what was appended, skip a torn line, forget on request."""
from __future__ import annotations

from inpars_ray.io.journal import Journal, answer_key, run_key


def test_appended_answers_are_read_back_and_a_torn_line_is_skipped(tmp_path):
    journal = Journal(run_key("gs://b/run/parts", "cfg"), root=tmp_path)
    journal.append("part-a", answer_key("prompt 1"), {"text": "q1", "token_logprobs": [-0.5, -1e-9]})
    journal.append("part-a", answer_key("prompt 2"), {"text": "q2", "token_logprobs": []})
    with open(journal.folder / "part-a.jsonl", "ab") as fh:  # a kill in the middle of a write
        fh.write(b'{"key": "' + answer_key("prompt 3").encode() + b'", "val')
    got = journal.read("part-a")
    assert got == {answer_key("prompt 1"): {"text": "q1", "token_logprobs": [-0.5, -1e-9]},
                   answer_key("prompt 2"): {"text": "q2", "token_logprobs": []}}
    assert journal.read("part-b") == {}


def test_discard_forgets_one_batch_and_clear_the_run(tmp_path):
    journal = Journal(run_key("/runs/x", "cfg"), root=tmp_path)
    other = Journal(run_key("/runs/x", "another cfg"), root=tmp_path)
    for j in (journal, other):
        j.append("part-a", "k", 1)
        j.append("part-b", "k", 2)
    journal.discard("part-a")
    assert journal.read("part-a") == {} and journal.read("part-b") == {"k": 2}
    journal.clear()
    assert not journal.folder.exists()
    assert other.read("part-a") == {"k": 1}  # another config's journal is untouched


def test_an_unwritable_journal_is_logged_and_never_raises(tmp_path, caplog):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    journal = Journal("run", root=blocker)  # its folder cannot be created under a file
    journal.append("part-a", "k", 1)
    journal.append("part-a", "k2", 2)
    assert journal.read("part-a") == {}
    assert sum("cannot journal" in r.message for r in caplog.records) == 1  # said once, not per answer
