"""zraft-rqlited's command line: rqlited's flags map to zraft settings or are refused by name."""

from __future__ import annotations

from pathlib import Path

import pytest

from zraft.rqlited import UsageError, main, node_config, node_id_of, parse


def test_pyrqlites_spawn_command_line_makes_a_single_node(tmp_path: Path) -> None:
    flags = parse(["-http-addr", "localhost:4701", "-raft-addr=localhost:4702", str(tmp_path)])
    config = node_config(flags)
    assert config.data_dir == tmp_path.resolve() and config.bootstrap
    assert [(p.http, p.raft) for p in config.peers] == [("127.0.0.1:4701", "tcp://127.0.0.1:4702")]
    assert config.id == node_id_of("127.0.0.1:4702")  # rqlite's default id: the Raft address


def test_settings_map_and_string_ids_get_stable_numbers(tmp_path: Path) -> None:
    flags = parse(["--node-id", "node-a", "-raft-snap", "500", "-raft-snap-int", "30s",
                   "-raft-election-timeout", "2s", "-raft-apply-timeout=5s", "-join", "", "-bootstrap-expect", "1",
                   "-raft-non-voter=false", str(tmp_path)])
    config = node_config(flags)
    assert (config.raft.snapshot_threshold, config.raft.snapshot_interval_ms, config.raft.election_ticks,
            config.api.request_timeout_ms) == (500, 30_000, 40, 5_000)
    assert config.id == node_id_of("node-a") == node_id_of("node-a") and 0 < config.id < 1 << 62
    assert node_id_of("7") == 7 and node_id_of("node-b") != config.id


@pytest.mark.parametrize("argv, message", [
    (["-auth", "x.json", "d"], "flag -auth is not supported"),
    (["-join", "h:4002", "d"], "joining a running cluster is not supported"),
    (["-bootstrap-expect", "3", "d"], "joining a running cluster is not supported"),
    (["-raft-non-voter", "d"], "read-only nodes"),
    (["-raft-snap", "many", "d"], "-raft-snap: expected a non-negative integer"),
    (["-raft-snap-int", "10 parsecs", "d"], "-raft-snap-int"),
    (["-http-adv-addr", "10.0.0.1:4001", "d"], "binds and advertises one address"),
    (["-raft-addr"], "needs a value"),
    ([], "exactly one DATA_DIR"),
    (["a", "b"], "exactly one DATA_DIR"),
])
def test_bad_or_unsupported_flags_are_refused_by_name(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse(argv)


def test_main_reports_usage_errors_and_the_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-http-addr", "nohost.invalid:1", str(tmp_path)]) == 2
    assert "cannot resolve" in capsys.readouterr().err
    assert main(["-version"]) == 0
    assert "zraft-rqlited" in capsys.readouterr().out
    assert not (tmp_path / "zraft.toml").exists()
