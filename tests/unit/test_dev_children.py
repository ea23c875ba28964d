"""hybridrelay.dev.children: the one child process of the dev cluster, benches and tests.

Real ``sh`` children: lines awaited by pattern past the kept window, an early exit
reported with the output, and a stop that takes the whole process group.
"""

from __future__ import annotations

import asyncio
import os
import sys

import pytest

from hybridrelay.dev.children import ChildExitedError, ChildProcess

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_lines_are_consumed_in_order_even_past_the_kept_window() -> None:
    child = ChildProcess(
        "sh", ["sh", "-c", "for i in 1 2 3 4 5 6; do echo line $i; done; echo done"], keep_lines=2
    )
    await child.start()
    try:
        await child.wait(within=10)  # every line read; only the last two kept
        assert child.lines == ["line 6", "done"]
        first = await child.wait_for_line(r"line (\d)", within=5)
        assert first.group(1) == "6"  # older lines are gone, the cursor skips them
        with pytest.raises(ChildExitedError, match="line"):
            await child.wait_for_line(r"line (\d)", within=5)  # consumed: no second match
    finally:
        await child.stop()


async def test_an_exit_before_the_line_names_the_child_and_its_output() -> None:
    child = ChildProcess("quitter", ["sh", "-c", "echo giving up; exit 3"])
    await child.start()
    try:
        with pytest.raises(ChildExitedError, match="giving up") as caught:
            await child.wait_for_line("ready", within=10)
        assert "quitter" in str(caught.value)
        assert await child.wait(within=10) == 3
    finally:
        await child.stop()


async def test_stop_takes_the_whole_group_of_an_own_group_child() -> None:
    # sh ignores SIGTERM here and leaves a grandchild; stop() must not leave either behind.
    script = "trap '' TERM; sleep 60 & echo grandchild $!; wait"
    child = ChildProcess("stubborn", ["sh", "-c", script], own_group=True, stop_grace=0.5)
    await child.start()
    grandchild = 0
    try:
        grandchild = int((await child.wait_for_line(r"grandchild (\d+)", within=10)).group(1))
        assert _alive(grandchild)
    finally:
        code = await child.stop()
    assert code is not None
    async with asyncio.timeout(10):
        while _alive(grandchild):  # reparented to init, reaped there
            await asyncio.sleep(0.02)  # polling the process table, bounded by the timeout
    assert "killed" in child.output()
