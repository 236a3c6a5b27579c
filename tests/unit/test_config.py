"""Node configuration: the example file is valid and complete, and bad files fail clearly."""

from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from zraft.config import (ApiSettings, ConfigError, NodeConfig, RaftSettings, StoreSettings, from_dict, load, render,
                          with_overrides)

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "zraft.example.toml"


def minimal(**node: object) -> dict[str, object]:
    return {"node": {"id": 1, "data_dir": "/tmp/x", **node},
            "peers": [{"id": 1, "raft": "tcp://127.0.0.1:1", "http": "127.0.0.1:2", "api_zmq": "tcp://127.0.0.1:3"}]}


def test_example_config_loads_and_documents_every_setting() -> None:
    config = load(EXAMPLE)
    assert config.id == 1 and len(config.peers) == 3
    text = EXAMPLE.read_text()
    for settings in (RaftSettings, StoreSettings, ApiSettings):
        for f in fields(settings):
            assert f"\n{f.name} = " in text, f"{f.name} is not documented in the example"
    # the example shows the defaults
    assert config.raft == RaftSettings() and config.store == StoreSettings() and config.api == ApiSettings()


def test_local_sockets_default_to_ipc_in_the_data_dir() -> None:
    config = from_dict(minimal())
    assert config.raft_rpc == "ipc:///tmp/x/raft.sock"
    assert config.store_pub == "ipc:///tmp/x/store-pub.sock"


def test_render_round_trips(tmp_path: Path) -> None:
    config = from_dict(minimal())
    path = tmp_path / "n.toml"
    path.write_text(render(config))
    assert load(path) == config


@pytest.mark.parametrize("raw, message", [
    ({"node": {"id": 1}}, "peers"),
    (minimal(id=0), "node.id"),
    (minimal(id=2), "not in its own peers"),
    (minimal(colour="blue"), "unknown keys"),
    ({**minimal(), "raft": {"tick_ms": -5}}, "tick_ms"),
    ({**minimal(), "raft": {"tick_msec": 5}}, "unknown keys"),
    ({**minimal(), "peers": [{"id": 1}]}, "lacks"),
])
def test_bad_configs_are_rejected_with_a_clear_message(raw: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(raw)


def test_unreadable_or_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[node\nid=")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)


def test_too_long_ipc_path_is_a_clear_error(tmp_path):
    from zraft.config import ConfigError, from_dict

    raw = {"node": {"id": 1, "data_dir": str(tmp_path / ("d" * 120))},
           "peers": [{"id": 1, "raft": "tcp://127.0.0.1:1", "http": "127.0.0.1:2", "api_zmq": "tcp://127.0.0.1:3"}]}
    with pytest.raises(ConfigError, match="Unix socket path may be at most 107 bytes"):
        from_dict(raw)


def test_cluster_moves_sockets_out_of_a_deep_data_folder(tmp_path):
    from zraft.cluster import write_configs
    from zraft.config import load

    deep = tmp_path / ("d" * 90)
    config = load(write_configs(deep, 1, 4001)[0])
    assert len(config.store_pub.removeprefix("ipc://")) <= 100
    shallow = load(write_configs(tmp_path / "c", 1, 4001)[0])
    assert shallow.store_pub == f"ipc://{shallow.data_dir}/store-pub.sock"


def test_the_write_step_bound_is_the_one_entries_may_carry() -> None:
    from zraft.config import MAX_WRITE_STEPS, StoreSettings
    from zraft.store.command import DEFAULT_BUDGET, MAX_BUDGET

    assert MAX_WRITE_STEPS == MAX_BUDGET and StoreSettings().max_write_steps == DEFAULT_BUDGET
    with pytest.raises(ConfigError):
        StoreSettings(max_write_steps=MAX_BUDGET + 1)


def _sample() -> NodeConfig:
    return from_dict({"node": {"id": 1}, "peers": [{"id": 1, "raft": "tcp://127.0.0.1:1", "http": "127.0.0.1:2",
                                                    "api_zmq": "tcp://127.0.0.1:3"}]})


def test_overrides_take_bare_or_sectioned_keys_and_integers_in_any_base() -> None:
    config = with_overrides(_sample(), ["read_workers=8", "raft.tick_ms=0x20", "api.max_connections = 1_000"])
    assert config.store.read_workers == 8
    assert config.raft.tick_ms == 32
    assert config.api.max_connections == 1000
    assert config.store.max_wait_ms == StoreSettings().max_wait_ms  # untouched


@pytest.mark.parametrize("assignment, message", [
    ("read_workers", "expected KEY=VALUE"),
    ("=3", "expected KEY=VALUE"),
    ("no_such_setting=1", "no such setting"),
    ("disk.tick_ms=1", "no section [disk]"),
    ("api.tick_ms=1", "[api] has no setting 'tick_ms'"),
    ("tick_ms=fast", "is not an integer"),
    ("tick_ms=0", "must be a positive integer"),
    ("store.max_write_steps=1000000000000000", "store.max_write_steps"),
])
def test_a_bad_override_is_a_clear_error(assignment: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        with_overrides(_sample(), [assignment])


def test_cluster_up_refuses_a_bad_override_before_starting_anything(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from zraft.cli import main

    result = CliRunner().invoke(main, ["cluster", "up", "--dir", str(tmp_path / "c"), "--http-port", "4890",
                                       "--set", "snapshot_thresold=5"])
    assert result.exit_code == 1
    assert "snapshot_thresold: no such setting" in result.output
    assert not (tmp_path / "c" / "supervisord.conf").exists()
