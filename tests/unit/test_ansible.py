"""The Ansible role's config template renders a node config that zraft accepts."""

from __future__ import annotations

from pathlib import Path

import jinja2
import yaml

from zraft.config import from_dict

ROLE = Path(__file__).resolve().parents[2] / "ansible" / "roles" / "zraft"


def render_for(node_id: int) -> str:
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    hosts = {f"db{i}": {"ansible_host": f"10.0.0.{i}", "zraft_node_id": i} for i in (1, 2, 3)}
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, trim_blocks=True)
    template = env.from_string((ROLE / "templates" / "zraft.toml.j2").read_text())
    context = {**defaults, **hosts[f"db{node_id}"], "groups": {"zraft": list(hosts)}, "hostvars": hosts}
    return template.render(context)


def test_rendered_config_is_valid_for_every_node() -> None:
    import tomllib

    for node_id in (1, 2, 3):
        config = from_dict(tomllib.loads(render_for(node_id)))
        assert config.id == node_id
        assert [p.raft for p in config.peers] == [f"tcp://10.0.0.{i}:4002" for i in (1, 2, 3)]
        assert config.me().http == f"10.0.0.{node_id}:4001"
        assert config.raft.tick_ms == 50


def test_playbook_installs_every_unit() -> None:
    tasks = (ROLE / "tasks" / "main.yml").read_text()
    for unit in Path(__file__).resolve().parents[2].joinpath("systemd").iterdir():
        assert unit.name in tasks, f"{unit.name} is not installed by the role"
