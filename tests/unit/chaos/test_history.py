"""History format: writer/reader round trip, pairing rules, rejection of malformed input."""

from __future__ import annotations

import json
import math

import pytest

from zraft.chaos.history import HistoryError, HistoryWriter, load_history, pair, parse_event, read_events


def test_writer_reader_round_trip(tmp_path):
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path, clock=iter(range(100))) as out:
        out.invoke(0, "write", "k", 1)
        out.invoke(1, "read", "k")
        out.complete(0, "ok", "write", "k", 1)
        out.complete(1, "ok", "read", "k", 1)
        out.invoke(2, "cas", "k", [1, 2])
        out.complete(2, "fail", "cas", "k", [1, 2])
        out.invoke(3, "write", "k", 3)  # never completes
    ops = load_history(path)
    assert [(o.f, o.outcome) for o in ops] == [("write", "ok"), ("read", "ok"), ("cas", "fail"),
                                               ("write", "info")]
    assert ops[1].result == 1 and ops[1].call == 1.0 and ops[1].ret == 3.0
    assert ops[3].ret == math.inf and ops[2].value == [1, 2]


def test_real_clock_is_monotonic(tmp_path):
    path = tmp_path / "h.jsonl"
    with HistoryWriter(path) as out:
        for i in range(50):
            out.invoke(i, "add", None, i)
            out.complete(i, "ok", "add", None, i)
    assert len(load_history(path)) == 50


def _write(tmp_path, lines):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def _line(**kw):
    base = {"process": 0, "type": "invoke", "f": "write", "key": "k", "value": 1, "time": 0}
    base.update(kw)
    return json.dumps({k: v for k, v in base.items() if v is not ...})


@pytest.mark.parametrize("lines, needle", [
    (["{not json"], "invalid JSON"),
    (["[1, 2]"], "JSON object"),
    ([_line(time=...)], "missing field"),
    ([_line(extra=1)], "unknown field"),
    ([_line(type="done")], "type must be"),
    ([_line(f="delete")], "f must be"),
    ([_line(time="soon")], "time must be"),
    ([_line(process=True)], "process must be"),
    ([_line(key=[1])], "key must be"),
    ([_line(f="cas", value=[1])], "cas value"),
    ([_line(f="write", value={"a": 1})], "scalar"),
    ([_line(f="transfer", value={"from": "a", "to": "b"})], "transfer value"),
    ([_line(f="read", type="ok", value={"a": "x"})], "balance"),
])
def test_malformed_lines_are_rejected_with_line_number(tmp_path, lines, needle):
    with pytest.raises(HistoryError, match=needle) as err:
        read_events(_write(tmp_path, ["", *lines]))
    assert err.value.line == 2


@pytest.mark.parametrize("lines, needle", [
    ([_line(), _line(time=1)], "still outstanding"),
    ([_line(type="ok")], "no outstanding"),
    ([_line(), _line(type="ok", key="other", time=1)], "does not match"),
    ([_line(time=5), _line(type="ok", time=4)], "backwards"),
])
def test_pairing_errors(tmp_path, lines, needle):
    with pytest.raises(HistoryError, match=needle):
        load_history(_write(tmp_path, lines))


def test_info_completion_has_infinite_return():
    events = [parse_event({"process": "a", "type": "invoke", "f": "write", "key": 1, "value": 5, "time": 1}),
              parse_event({"process": "a", "type": "info", "f": "write", "key": 1, "value": 5, "time": 2})]
    (op,) = pair(events)
    assert op.outcome == "info" and op.ret == math.inf and op.value == 5
