"""Run fuzz targets with hypothesis: one relay per target, every example counted, nothing hidden.

Both the CI tests (a bounded, derandomized number of examples) and the long campaign
(``python -m tests.fuzz``) call :func:`run_target`. Examples are not shrunk and a
failing one does not stop the run: each violation is counted under its property and
the first few examples that caused it are kept as they were sent, so one run shows
every kind of failure at once, with a reproduction for each.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from hypothesis import given, seed as hypothesis_seed, settings

from tests.fuzz.profiles import CI
from tests.fuzz.subjects import (
    ErrorLog,
    InProcessSubject,
    NoRelay,
    ProcessSubject,
    Subject,
    capture_errors,
    healthy,
)
from tests.fuzz.targets import EXAMPLE_TIMEOUT, PROPERTIES, TARGETS, Findings, TargetState

__all__ = ["TargetResult", "brief", "fuzz_session", "run_target"]

RelayKind = Literal["in-process", "process"]

SAMPLES_PER_PROPERTY: Final = 3
HEALTH_EVERY: Final = 100  # examples between /healthz checks (and at the end)
MEMORY_BOUND_KIB: Final = 64 * 1024  # relay RSS growth after warm-up that counts as a leak
WARMUP_EXAMPLES: Final = 200


@dataclass
class TargetResult:
    """What one target's campaign found; :meth:`to_json` is its line of the campaign report."""

    target: str
    relay: str
    examples: int = 0
    violations: dict[str, int] = field(default_factory=dict)
    samples: dict[str, list[str]] = field(default_factory=dict)
    duration_s: float = 0.0
    rss_start_kib: int | None = None
    rss_warm_kib: int | None = None
    rss_end_kib: int | None = None

    def record(self, findings: Findings, example: object) -> None:
        for prop, detail in findings.items:
            self.violations[prop] = self.violations.get(prop, 0) + 1
            kept = self.samples.setdefault(prop, [])
            if len(kept) < SAMPLES_PER_PROPERTY:
                kept.append(f"example {self.examples}: {brief(example)}\n  -> {detail[:3000]}")

    def failures(self, prop: str) -> str:
        """A readable account of ``prop``'s violations ('' when there are none)."""
        count = self.violations.get(prop, 0)
        if not count:
            return ""
        shown = "\n".join(self.samples.get(prop, []))
        return (
            f"{self.target}: {PROPERTIES[prop]}: {count} of {self.examples} examples; "
            f"the first ones:\n{shown}"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "relay": self.relay,
            "examples": self.examples,
            "failures": sum(self.violations.values()),
            "violations": dict(sorted(self.violations.items())),
            "samples": self.samples,
            "duration_s": round(self.duration_s, 1),
            "relay_rss_kib": {
                "start": self.rss_start_kib,
                "after_warmup": self.rss_warm_kib,
                "end": self.rss_end_kib,
            },
        }


def brief(value: object, limit: int = 100) -> str:
    """``repr`` of an example with long strings and bytes cut (their length kept)."""
    if isinstance(value, str | bytes) and len(value) > limit:
        return f"{value[:limit]!r}...<{len(value)}>"
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = ", ".join(
            f"{f.name}={brief(getattr(value, f.name), limit)}" for f in dataclasses.fields(value)
        )
        return f"{type(value).__name__}({fields})"
    if isinstance(value, tuple | list):
        inner = ", ".join(brief(item, limit) for item in value)
        return (
            f"({inner},)"
            if isinstance(value, tuple) and len(value) == 1
            else (f"({inner})" if isinstance(value, tuple) else f"[{inner}]")
        )
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{brief(k, limit)}: {brief(v, limit)}" for k, v in value.items()) + "}"
        )
    return repr(value)


@contextlib.contextmanager
def fuzz_session() -> Iterator[tuple[asyncio.Runner, ErrorLog, Path]]:
    """An event loop, the process's error log and a temp directory for one campaign."""
    with (
        asyncio.Runner() as runner,
        capture_errors() as errors,
        tempfile.TemporaryDirectory(prefix="hybridrelay-fuzz-") as tmp,
    ):
        yield runner, errors, Path(tmp)


async def _start_subject(
    kind: RelayKind, directory: Path, errors: ErrorLog, *, needed: bool
) -> Subject:
    directory.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - once per campaign
    if not needed:
        return NoRelay(errors)
    if kind == "process":
        return await ProcessSubject.start(directory, errors)
    return await InProcessSubject.start(directory, errors)


def _classify(entries: list[str]) -> tuple[list[str], list[str]]:
    """Split error entries into the relay's and the listener agent's (by logger name)."""
    agent_loggers = (
        "logger=hybridrelay.listener",
        "logger=hybridrelay.client",
        "logger=hybridrelay.bridge",
    )
    agent = [e for e in entries if any(name in e for name in agent_loggers)]
    return [e for e in entries if e not in agent], agent


def run_target(
    name: str,
    *,
    examples: int,
    relay: RelayKind = "in-process",
    base: settings = CI,
    seed: int | None = None,
) -> TargetResult:
    """Run ``examples`` examples of target ``name`` against one fresh relay."""
    target = TARGETS[name]
    result = TargetResult(target=name, relay=relay if target.needs_relay else "none")
    started = time.monotonic()
    with fuzz_session() as (runner, errors, tmp):
        subject = runner.run(_start_subject(relay, tmp / name, errors, needed=target.needs_relay))
        state: TargetState | None = None
        try:
            result.rss_start_kib = subject.rss_kib()
            state = runner.run(target.setup(subject))
            _probe(runner, target.strategy, state, subject, errors, result, examples, base, seed)
            findings = Findings()
            if not runner.run(healthy(subject)):
                findings.add("relay_down", "/healthz did not answer 200 at the end of the campaign")
            result.rss_end_kib = subject.rss_kib()
            warm = result.rss_warm_kib
            if warm is not None and result.rss_end_kib is not None:
                grown = result.rss_end_kib - warm
                if grown > MEMORY_BOUND_KIB and relay == "process":
                    findings.add("memory_grew", f"relay RSS grew {grown} KiB after warm-up")
            result.record(findings, "end of campaign")
        finally:
            findings = Findings()
            mark = (errors.count, len(errors.entries))
            if state is not None:
                try:
                    runner.run(state.close())
                except Exception:  # noqa: BLE001 - reported as a finding, not raised
                    findings.add("harness_error", traceback.format_exc())
            try:
                runner.run(subject.stop())
            except AssertionError as exc:  # InProcessRelay.stop() checks for leaks
                findings.add("relay_leak", str(exc))
            _errors_since(errors, mark, findings)
            result.record(findings, "teardown")
    result.duration_s = time.monotonic() - started
    return result


def _errors_since(errors: ErrorLog, mark: tuple[int, int], findings: Findings) -> None:
    count, kept = mark
    if errors.count == count:
        return
    relay_entries, agent_entries = _classify(errors.since(kept))
    if agent_entries:
        findings.add("agent_error_logged", "\n".join(agent_entries)[:3000])
    if relay_entries or not agent_entries:
        findings.add("error_logged", "\n".join(relay_entries)[:3000] or "(entry not kept)")


def _probe(
    runner: asyncio.Runner,
    strategy: Any,
    state: TargetState,
    subject: Subject,
    errors: ErrorLog,
    result: TargetResult,
    examples: int,
    base: settings,
    seed: int | None,
) -> None:
    async def bounded(example: object, findings: Findings) -> None:
        async with asyncio.timeout(EXAMPLE_TIMEOUT):
            await state.check(example, findings)

    @settings(base, max_examples=examples)
    @given(strategy)
    def probe(example: object) -> None:
        result.examples += 1
        findings = Findings()
        mark = (errors.count, len(errors.entries))
        try:
            runner.run(bounded(example, findings))
        except TimeoutError:
            findings.add("hang", f"the example did not finish within {EXAMPLE_TIMEOUT:g} s")
        except Exception:  # noqa: BLE001 - a harness bug is a finding like any other
            findings.add("harness_error", traceback.format_exc())
        _errors_since(errors, mark, findings)
        if subject.exited():
            findings.add("relay_down", "the relay exited")
        elif result.examples % HEALTH_EVERY == 0 and not runner.run(healthy(subject)):
            findings.add("relay_down", "/healthz did not answer 200")
        if result.examples == WARMUP_EXAMPLES:
            result.rss_warm_kib = subject.rss_kib()
        result.record(findings, example)
        if subject.exited():
            raise _RelayGoneError

    if seed is not None:
        probe = hypothesis_seed(seed)(probe)
    with contextlib.suppress(_RelayGoneError):
        probe()
    if result.rss_warm_kib is None:
        result.rss_warm_kib = subject.rss_kib()


class _RelayGoneError(Exception):
    """Stops a campaign whose relay died: every further example would fail the same way."""
