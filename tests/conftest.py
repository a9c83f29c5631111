"""Shared fixtures (a hub, the HTTP app on a real Hypercorn socket, seeds) and the
suite's determinism and lanes.

- Seeds: a seeded test takes the ``seed`` fixture. CI runs the seed listed in
  :data:`SEEDS` (else one derived from the test's name), so a red run is a
  change's doing, never the draw's; ``BEZANT_SEED=N`` replays a run,
  ``BEZANT_SEED=random`` draws a fresh one. A failure prints the one command
  that replays it.
- Hypothesis: the ``ci`` profile (the default) is derandomized, without a
  deadline or an example database; ``--hypothesis-profile=dev`` (or
  ``BEZANT_HYPOTHESIS=dev``) draws at random, keeps failing examples and runs
  ten times the examples (``helpers.examples``).
- Lanes: with ``pytest -n N --dist loadgroup`` (``bash .ci/run``), each group
  of :data:`LANES` runs on one worker, the longest first, beside the rest
  (tests/README.md, "Lanes").
"""

from __future__ import annotations

import os
import random
import shlex
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio
from hypothesis import settings

from bezant_trio.http.app import create_app
from bezant_trio.http.context import HttpContext
from bezant_trio.http.server import serve_http
from bezant_trio.store.hub import Hub
from bezant_trio.testing.process import fork_children
from helpers import SSL_CONTEXT, capacity_of

# ------------------------------------------------------------------ determinism

settings.register_profile("ci", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("dev", max_examples=1000, deadline=None, print_blob=True)


def pytest_configure(config: pytest.Config) -> None:
    # After Hypothesis's own plugin: its --hypothesis-profile wins, then the
    # environment, then "ci". Test modules, which size their examples by the
    # profile (helpers.examples), are imported after this.
    chosen = config.getoption("hypothesis_profile", None)
    settings.load_profile(chosen or os.environ.get("BEZANT_HYPOTHESIS") or "ci")
    # Daemons and CLI runs fork from a process that imported the daemon once
    # (bezant_trio.testing.forkserver: a second of CPU saved per daemon).
    # BEZANT_TEST_FORK=0 execs every child; =lazy starts that process at the
    # first child (the mutation check's runs, most of which start none).
    # xdist's controller starts no child.
    controller = not hasattr(config, "workerinput") and config.getoption("numprocesses", None)
    mode = os.environ.get("BEZANT_TEST_FORK", "1")
    if mode != "0" and not controller:
        fork_children(lazy=mode == "lazy")


def pytest_unconfigure(config: pytest.Config) -> None:
    fork_children(False)


#: The seed CI runs for each seeded test (by function name; parameters share
#: it). A seed here is one whose run passed and whose figures are in
#: tests/reliability/README.md; a test not listed runs a seed derived from its
#: name. Change a seed on purpose, in its own commit.
SEEDS: dict[str, int] = {
    "test_chaos_60s": 1641214162,
    "test_chaos_10_minutes": 3488543417,
    "test_soak_ci": 942206386,
    "test_soak_1_hour": 920226023,
    "test_random_config_files_give_a_config_or_one_line_and_exit_2": 2643791927,
    "test_atheris_coverage_guided_fuzzing_finds_no_crash": 1,
}


def _replay_command(item: pytest.Item, seed: int) -> str:
    nodeid = item.nodeid.split("@", 1)[0]  # without xdist's "@group" suffix
    return (
        f"BEZANT_SEED={seed} .venv/bin/python -m pytest -p no:cacheprovider {shlex.quote(nodeid)}"
    )


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """The test's seed (see :data:`SEEDS`); printed, and repeated with a failure."""
    wanted = os.environ.get("BEZANT_SEED", "")
    node = request.node
    if wanted == "random":
        value = random.SystemRandom().randrange(2**32)
    elif wanted:
        value = int(wanted)
    else:
        value = SEEDS.get(node.originalname, zlib.crc32(node.name.encode()))
    node.bezant_seed = value
    print(f"BEZANT_SEED={value}")
    return value


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    seed = getattr(item, "bezant_seed", None)
    if seed is not None and report.failed:
        report.sections.append(("seed", f"replay: {_replay_command(item, seed)}"))


# ------------------------------------------------------------------ lanes

#: xdist groups: each runs on one worker, in this order, beside everything
#: else (which xdist spreads over the workers). Wall-clock-bound runs (a
#: stream at a fixed rate, faults that last seconds) get lanes of their own so
#: they overlap with the CPU-bound rest; the tests whose figures move with the
#: machine's load (memory and descriptors of a daemon under many connections)
#: share one lane, so they never run beside each other. Node id prefixes;
#: tests/README.md lists the lanes and their times. Longest first.
LANES: dict[str, tuple[str, ...]] = {
    "load": (
        "tests/reliability/test_http_abuse.py",
        "tests/reliability/test_hostile.py",
    ),
    "mutations": ("tests/test_mutations.py",),
    "chaos": ("tests/reliability/test_chaos.py",),
    "schemathesis": ("tests/reliability/test_openapi_schemathesis.py",),
    "faults": (
        "tests/reliability/test_faults.py",
        "tests/reliability/test_process_faults.py",
    ),
    "bench": ("tests/test_bench.py",),
    "soak": ("tests/reliability/test_soak.py",),
}


#: The longest tests outside the lanes (10-25 s each, node id prefixes): they
#: start right after the lanes, so that none of them is left for the end.
EARLY = (
    "tests/test_service.py::test_make_pyz",
    "tests/cpapi/test_connector.py::test_no_loss_with_a_poller",
    "tests/cpapi/test_connector.py::test_drops_and_stalls",
    "tests/cpapi/test_resync.py",
    "tests/realgw/",
    "tests/http/test_http_fastpath.py::test_random_queries",
    "plugins/bezant-trio-nats/tests/test_nats_faults.py",
    "tests/reliability/test_fuzz_frames.py",
)


def _lane_of(nodeid: str) -> str | None:
    for lane, prefixes in LANES.items():
        if nodeid.startswith(prefixes):
            return lane
    return None


@pytest.hookimpl(tryfirst=True)  # before xdist reads the marks
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    order = {lane: index for index, lane in enumerate(LANES)}
    for item in items:
        lane = _lane_of(item.nodeid)
        if lane is not None:
            item.add_marker(pytest.mark.xdist_group(lane))

    # The lanes first, so each starts at once, then the long tests of EARLY;
    # the rest keep their order.
    def rank(item: pytest.Item) -> int:
        lane = _lane_of(item.nodeid)
        if lane is not None:
            return order[lane]
        return len(order) + (0 if item.nodeid.startswith(EARLY) else 1)

    items.sort(key=rank)


@pytest.hookimpl(optionalhook=True)  # xdist's, in its controller
def pytest_xdist_node_collection_finished(node: Any, ids: list[str]) -> None:
    # xdist tells its scheduler an item's group by an "@lane" suffix on the node
    # id; pytest 9.2's node ids ignore the way it adds one, and every group was
    # silently dropped (pytest-dev/pytest-xdist#1386): the lanes' load-sensitive
    # tests then ran side by side. Stop, saying so, rather than run that way.
    if getattr(node.config.option, "dist", None) != "loadgroup":
        return
    lost = [nodeid for nodeid in ids if _lane_of(nodeid) and "@" not in nodeid]
    if lost:
        pytest.exit(
            f"xdist's --dist loadgroup did not name the lanes' groups ({lost[0]} has no"
            " @lane suffix): this pytest and pytest-xdist do not work together"
            " (pytest-dev/pytest-xdist#1386; see the pin in pyproject.toml)",
            returncode=3,
        )


# The mutation check (tests/test_mutations.py) runs tests against a mutated
# copy of src/: make sure that copy, not the installed package, is what runs.
if os.environ.get("BEZANT_MUTANT_SRC"):
    import bezant_trio

    _mutant = Path(os.environ["BEZANT_MUTANT_SRC"]).resolve()
    if _mutant not in Path(bezant_trio.__file__).resolve().parents:
        raise RuntimeError(f"bezant_trio comes from {bezant_trio.__file__}, not {_mutant}")


@pytest.fixture
async def hub() -> Hub:
    hub = Hub(capacity_of())
    await hub.open()
    return hub


ServeFn = Callable[..., Awaitable[str]]


@pytest.fixture
async def serve(nursery: trio.Nursery) -> AsyncIterator[ServeFn]:
    """Serve ``create_app(ctx, **options)`` on 127.0.0.1:0; returns its base URL."""
    stops: list[trio.Event] = []

    async def _serve(ctx: HttpContext, **options: Any) -> str:
        stop = trio.Event()
        stops.append(stop)
        app = create_app(ctx, **options)
        binds = await nursery.start(
            partial(serve_http, app, "127.0.0.1:0", shutdown_trigger=stop.wait)
        )
        return binds[0]

    yield _serve
    for stop in stops:
        stop.set()


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=20, verify=SSL_CONTEXT) as c:
        yield c
