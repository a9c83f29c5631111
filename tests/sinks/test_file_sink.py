"""The file sink: JSON Lines in the REST event shape, reopen on SIGHUP, rotation, file safety."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pytest
import trio

from bezant_trio.sinks.manager import SinkConfigError, SinkManager
from bezant_trio.sinks.specs import validate_sink_configs
from bezant_trio.store.hub import Hub


def _lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


async def test_file_sink_writes_one_rest_shaped_event_per_line(
    bezant_sink_manager_factory, tmp_path: Path
):
    path = tmp_path / "audit.jsonl"
    with trio.fail_after(10):
        manager: SinkManager = await bezant_sink_manager_factory(
            [{"name": "audit", "type": "file", "path": str(path), "topics": ["orders", "gap"]}]
        )
        hub = manager.hub
        published = [hub.publish("orders", {"orderId": i, "status": "Filled"}) for i in range(3)]
        hub.publish("pnl", {"ignored": True})
        await manager.wait_delivered("audit", 3)
    assert path.read_bytes() == b"".join(e.json + b"\n" for e in published)
    first = _lines(path)[0]
    assert set(first) == {"cursor", "topic", "received_at", "reset_epoch", "payload"}
    assert first["payload"] == {"orderId": 0, "status": "Filled"}


async def test_reopen_writes_to_a_new_file_after_the_old_one_was_renamed(
    bezant_sink_manager_factory, tmp_path: Path
):
    path = tmp_path / "audit.jsonl"
    with trio.fail_after(10):
        manager: SinkManager = await bezant_sink_manager_factory(
            [{"name": "audit", "type": "file", "path": str(path), "fsync": "never"}]
        )
        hub = manager.hub
        for i in range(3):
            hub.publish("orders", {"i": i})
        await manager.wait_delivered("audit", 3)
        os.rename(path, tmp_path / "audit.jsonl.1")  # what logrotate does
        manager.reopen()  # what SIGHUP does
        for i in range(3, 5):
            hub.publish("orders", {"i": i})
        await manager.wait_delivered("audit", 5)
    assert [e["cursor"] for e in _lines(tmp_path / "audit.jsonl.1")] == [1, 2, 3]
    assert [e["cursor"] for e in _lines(path)] == [4, 5]


async def test_rotation_keeps_the_newest_files(bezant_sink_manager_factory, tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    with trio.fail_after(10):
        manager: SinkManager = await bezant_sink_manager_factory(
            [
                {
                    "name": "audit",
                    "type": "file",
                    "path": str(path),
                    "batch_size": 1,
                    "rotate_bytes": 400,
                    "rotate_keep": 2,
                }
            ]
        )
        events = [manager.hub.publish("orders", {"i": i, "pad": "x" * 50}) for i in range(20)]
        await manager.wait_delivered("audit", 20)
    line = len(events[0].json) + 1
    per_file = 400 // line
    assert manager.sinks["audit"].rotations >= 2
    assert not (tmp_path / "audit.jsonl.3").exists()
    kept = _lines(tmp_path / "audit.jsonl.2") + _lines(tmp_path / "audit.jsonl.1") + _lines(path)
    cursors = [e["cursor"] for e in kept]
    assert cursors == list(range(cursors[0], 21))  # contiguous, newest last
    for name in ("audit.jsonl.2", "audit.jsonl.1", "audit.jsonl"):
        assert (tmp_path / name).stat().st_size <= 400
        assert len(_lines(tmp_path / name)) <= per_file


async def test_unwritable_file_is_retried_and_reported(bezant_sink_manager_factory, tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    with trio.fail_after(10):
        manager: SinkManager = await bezant_sink_manager_factory(
            [
                {
                    "name": "audit",
                    "type": "file",
                    "path": str(path),
                    "retry": {"min": 0.01, "max": 0.05},
                }
            ]
        )
        path.mkdir()  # the path became a directory after start-up: writes fail
        manager.hub.publish("orders", {"i": 0})
        await manager.wait_status("audit", lambda status: status["failures"] >= 2)
        status = manager.status()["audit"]
        assert status["state"] == "retrying"
        assert "IsADirectoryError" in status["last_error"]
        path.rmdir()
        await manager.wait_delivered("audit", 1)
    assert [e["cursor"] for e in _lines(path)] == [1]


@contextmanager
def _umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


async def test_the_file_and_its_rotations_are_created_0600_whatever_the_umask(
    bezant_sink_manager_factory, tmp_path: Path
):
    path = tmp_path / "audit.jsonl"
    config = {"name": "audit", "type": "file", "path": str(path), "batch_size": 1}
    with trio.fail_after(10), _umask(0o000):
        manager: SinkManager = await bezant_sink_manager_factory(
            [{**config, "rotate_bytes": 300, "rotate_keep": 2}]
        )
        for i in range(6):
            manager.hub.publish("orders", {"i": i, "pad": "x" * 50})
        await manager.wait_delivered("audit", 6)
    assert manager.sinks["audit"].rotations >= 1
    for name in ("audit.jsonl", "audit.jsonl.1"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600, name


async def test_an_existing_file_keeps_its_mode(bezant_sink_manager_factory, tmp_path: Path):
    path = tmp_path / "audit.jsonl"
    path.write_bytes(b"")
    path.chmod(0o640)  # chosen by the operator, e.g. for a log shipper's group
    with trio.fail_after(10):
        manager = await bezant_sink_manager_factory(
            [{"name": "audit", "type": "file", "path": str(path)}]
        )
        manager.hub.publish("orders", {"i": 0})
        await manager.wait_delivered("audit", 1)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert [e["cursor"] for e in _lines(path)] == [1]


def test_a_symbolic_link_at_the_path_is_refused_at_start(tmp_path: Path):
    target = tmp_path / "elsewhere"
    target.write_bytes(b"")
    path = tmp_path / "audit.jsonl"
    path.symlink_to(target)
    config = [{"name": "audit", "type": "file", "path": str(path)}]
    for check in (
        lambda: SinkManager(Hub(lambda topic: 10), config),
        lambda: validate_sink_configs(config),
    ):
        with pytest.raises(SinkConfigError) as caught:
            check()
        assert str(caught.value) == (
            f"sink 'audit' (type file): option 'path' must not be a symbolic link ({path});"
            " point it at the file itself"
        )


async def test_a_symbolic_link_planted_later_is_not_followed(
    bezant_sink_manager_factory, tmp_path: Path
):
    path = tmp_path / "audit.jsonl"
    target = tmp_path / "victim"
    target.write_bytes(b"precious\n")
    with trio.fail_after(10):
        manager: SinkManager = await bezant_sink_manager_factory(
            [
                {
                    "name": "audit",
                    "type": "file",
                    "path": str(path),
                    "retry": {"min": 0.01, "max": 0.05},
                }
            ]
        )
        manager.hub.publish("orders", {"i": 0})
        await manager.wait_delivered("audit", 1)
        os.rename(path, tmp_path / "audit.jsonl.1")  # logrotate ...
        path.symlink_to(target)  # ... and someone plants a link before SIGHUP
        manager.reopen()
        manager.hub.publish("orders", {"i": 1})
        await manager.wait_status("audit", lambda status: status["failures"] >= 2)
        status = manager.status()["audit"]
        assert status["state"] == "retrying"
        assert (
            f"{path} is a symbolic link; the file sink does not follow links"
            in (status["last_error"])
        )
        assert target.read_bytes() == b"precious\n"
        path.unlink()
        await manager.wait_delivered("audit", 2)
    assert target.read_bytes() == b"precious\n"
    assert not path.is_symlink()
    assert [e["cursor"] for e in _lines(path)] == [2]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
