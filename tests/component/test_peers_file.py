"""peers.json recovery on a real log store (zraft.procs.peers_file): the configuration entry is
appended once, at the end of the log in the node's term, the file is consumed, and a bad file
is refused with the log untouched."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from zraft.config import ConfigError
from zraft.logstore import FileLogStore
from zraft.procs.peers_file import CONSUMED_FILE, PEERS_FILE, read_peers, recover_if_asked
from zraft.raft import ConfState, Entry, EntryKind, HardState, RaftLog, SnapshotMeta


def a_log(folder: Path) -> FileLogStore:
    """Three voters' log: a bootstrap configuration, then entries of terms 1 and 2."""
    store = FileLogStore(folder)
    store.apply_snapshot(SnapshotMeta(conf=ConfState(voters=(1, 2, 3))))
    entries = [Entry(1, 1, EntryKind.NORMAL, b"a"), Entry(1, 2, EntryKind.NORMAL, b"b"),
               Entry(2, 3, EntryKind.NORMAL, b"c")]
    store.save(HardState(term=3, vote=1, commit=2), entries, sync=True)
    return store


def write(folder: Path, doc: object) -> Path:
    path = folder / PEERS_FILE
    path.write_text(json.dumps(doc))
    return path


def test_the_configuration_is_appended_once_in_the_nodes_term(tmp_path: Path) -> None:
    store = a_log(tmp_path)
    write(tmp_path, [{"id": "1", "address": "10.0.0.1:4002"}, {"id": 4, "non_voter": True}])
    recovered = recover_if_asked(store, tmp_path, my_id=1)
    assert recovered is not None and recovered.index == 4
    assert recovered.conf == ConfState(voters=(1,), learners=(4,))
    assert not (tmp_path / PEERS_FILE).exists() and (tmp_path / CONSUMED_FILE).exists()
    assert recover_if_asked(store, tmp_path, my_id=1) is None  # consumed
    store.close()
    reopened = FileLogStore(tmp_path)
    initial = reopened.load()
    assert [e.index for e in initial.entries] == [1, 2, 3, 4]
    assert initial.entries[-1] == Entry(3, 4, EntryKind.CONF, ConfState((1,), (4,)).encode())
    assert initial.hard_state.commit == 2  # nothing is declared committed: the new leader commits it
    assert RaftLog(initial.snapshot, initial.entries, initial.hard_state.commit, 0).latest_conf().voters == (1,)
    reopened.close()


@pytest.mark.parametrize("doc, message", [
    ({"id": "1"}, "non-empty list"),
    ([], "non-empty list"),
    (["1"], "must be an object"),
    ([{"id": "x"}], "positive integer"),
    ([{"id": True}], "positive integer"),
    ([{"id": "1"}, {"id": 1}], "listed twice"),
    ([{"id": "1", "non_voter": True}], "names no voter"),
    ([{"id": "2"}], "not a voter in it"),
    ([{"id": "1", "voter": True}], "unknown keys"),
    ([{"id": "1", "non_voter": "yes"}], "non_voter must be"),
])
def test_a_bad_file_is_refused_and_changes_nothing(tmp_path: Path, doc: object, message: str) -> None:
    store = a_log(tmp_path)
    path = write(tmp_path, doc)
    with pytest.raises(ConfigError, match=message):
        recover_if_asked(store, tmp_path, my_id=1)
    assert path.exists() and store.last_index() == 3
    store.close()


def test_not_json_and_an_empty_node_are_refused(tmp_path: Path) -> None:
    (tmp_path / PEERS_FILE).write_text("[{")
    with pytest.raises(ConfigError, match="not JSON"):
        read_peers(tmp_path / PEERS_FILE, 1)
    (tmp_path / "empty").mkdir()
    empty = FileLogStore(tmp_path / "empty")
    write(tmp_path / "empty", [{"id": "1"}])
    with pytest.raises(ConfigError, match="holds no data"):
        recover_if_asked(empty, tmp_path / "empty", my_id=1)
    empty.close()
