"""Throughput and latency figures of a suite run as one PNG (matplotlib, the ``bench`` extra).

    python -m bench.plot bench-results.json                       # docs/img/performance.png
    python -m bench.plot bench-results.json --out other.png

Three panels: throughput in MB/s (WebSocket 64 KiB and 1 KiB messages, the nginx run,
the TCP tunnels; log scale, bars are medians, whiskers min-max), HTTP requests/s, and
latency in µs (new relayed connection p50/p99, ping-pong p50/p99 direct and relayed; log
scale). Sections that did not run are left out.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any, Final

__all__ = ["PlotUnavailableError", "main", "plot"]

DEFAULT_PNG: Final = Path("docs/img/performance.png")
COLOURS: Final = {
    "direct": "#9e9e9e",
    "relay": "#1f77b4",
    "nginx": "#2ca02c",
    "hybridrelay": "#1f77b4",
    "websocket-tunnel": "#ff7f0e",
}


LABELS: Final = {
    "direct": "direct (no proxy)",
    "relay": "hybridrelay",
    "hybridrelay": "hybridrelay",
    "nginx": "nginx",
    "websocket-tunnel": "websocket-tunnel",
}


class PlotUnavailableError(Exception):
    """matplotlib is not installed."""


Bar = tuple[str, str, dict[str, Any]]  # (group label, series name, spread dict)


def _ok(results: dict[str, Any], key: str) -> dict[str, Any] | None:
    unit = results.get("units", {}).get(key)
    return unit["result"] if unit and unit.get("status") == "ok" else None


def throughput_bars(results: dict[str, Any]) -> list[Bar]:
    bars: list[Bar] = []
    for key, label in (("bulk_64k", "WS 64 KiB"), ("nginx", "WS 64 KiB\n(nginx run)"),
                       ("bulk_1k", "WS 1 KiB"), ("bulk_128", "WS 128 B")):  # fmt: skip
        if r := _ok(results, key):
            bars += [(label, name, s) for name, s in r["mb_s"].items()]
    if r := _ok(results, "peer"):
        bars += [("TCP tunnel", name, s) for name, s in r["mb_s"].items() if name != "tcp"]
    return bars


def latency_bars(results: dict[str, Any]) -> list[tuple[str, float, str]]:
    out: list[tuple[str, float, str]] = []
    r = _ok(results, "latency")
    if r is None:
        return out
    if c := r.get("connect_latency"):
        out += [
            ("connect p50", c["p50_ms"] * 1000, COLOURS["relay"]),
            ("connect p99", c["p99_ms"] * 1000, COLOURS["relay"]),
        ]
    if p := r.get("ping_pong"):
        for q in ("p50", "p99"):
            out += [
                (f"ping-pong\ndirect {q}", p["direct"][f"{q}_us"], COLOURS["direct"]),
                (f"ping-pong\nrelayed {q}", p["relay"][f"{q}_us"], COLOURS["relay"]),
            ]
    return out


def plot(results: dict[str, Any], png: Path) -> Path:
    # Imported by name: matplotlib is an optional extra, absent where only the tests run
    # (mypy among them), and the figure code needs none of its types.
    try:
        mpl = importlib.import_module("matplotlib")
        mpl.use("Agg")
        plt = importlib.import_module("matplotlib.pyplot")
        FuncFormatter = importlib.import_module("matplotlib.ticker").FuncFormatter  # noqa: N806
    except ImportError as exc:
        raise PlotUnavailableError(
            "matplotlib is not installed (pip install -e '.[bench]')"
        ) from exc

    fig, (ax_tp, ax_http, ax_lat) = plt.subplots(
        1, 3, figsize=(15, 5.2), gridspec_kw={"width_ratios": [3.2, 1, 2.2]}
    )
    # Throughput: groups side by side, one bar per path, whiskers = min..max.
    bars = throughput_bars(results)
    groups = list(dict.fromkeys(g for g, _, _ in bars))
    plain = FuncFormatter(lambda v, _pos: f"{v:,.0f}")
    # Minor ticks of a log axis: label only 2x and 5x (20, 50, 200, ...), or they collide.
    sparse = FuncFormatter(lambda v, _pos: f"{v:,.0f}" if f"{v:.0e}"[0] in "25" else "")
    x = 0.0
    ticks, seen = [], set()
    for group in groups:
        members = [(n, s) for g, n, s in bars if g == group]
        start = x
        for name, s in members:
            err = [[s["median"] - s["min"]], [s["max"] - s["median"]]]
            label = LABELS.get(name, name)
            ax_tp.bar(x, s["median"], 0.8, color=COLOURS.get(name, "#777"),
                      label=None if label in seen else label, yerr=err, capsize=3)  # fmt: skip
            ax_tp.annotate(f"{s['median']:,.0f}", (x, s["max"]), ha="center", va="bottom",
                           fontsize=7, xytext=(0, 2), textcoords="offset points")  # fmt: skip
            seen.add(label)
            x += 1
        ticks.append(((start + x - 1) / 2, group))
        x += 0.8
    ax_tp.set_xticks([t for t, _ in ticks], [g for _, g in ticks], fontsize=8)
    if bars:
        ax_tp.set_yscale("log")
        ax_tp.set_ylim(10, max(s["max"] for _, _, s in bars) * 2.5)
        ax_tp.yaxis.set_major_formatter(plain)
        ax_tp.yaxis.set_minor_formatter(sparse)
        ax_tp.tick_params(axis="y", which="minor", labelsize=7)
    ax_tp.set_ylabel("MB/s (10⁶ bytes/s), log scale")
    ax_tp.set_title("Bulk throughput, one stream (median, min\u2013max)")
    ax_tp.legend(fontsize=8, loc="upper right", ncol=2)
    ax_tp.grid(axis="y", alpha=0.3, which="both")

    if r := _ok(results, "http"):
        for i, (name, key) in enumerate((("direct", "direct_rps"), ("relay", "relay_rps"))):
            s = r[key]
            err = [[s["median"] - s["min"]], [s["max"] - s["median"]]]
            ax_http.bar(i, s["median"], 0.7, color=COLOURS[name], yerr=err, capsize=3)
            ax_http.annotate(f"{s['median']:,.0f}", (i, s["max"]), ha="center", va="bottom",
                             fontsize=8, xytext=(0, 2), textcoords="offset points")  # fmt: skip
        ax_http.set_xticks([0, 1], ["direct", "relayed"])
    ax_http.set_ylabel("requests/s")
    ax_http.set_title("HTTP GET, concurrency 50")
    ax_http.grid(axis="y", alpha=0.3)

    lat = latency_bars(results)
    for i, (_, value, colour) in enumerate(lat):
        ax_lat.bar(i, value, 0.7, color=colour)
        ax_lat.annotate(f"{value:,.0f}", (i, value), ha="center", va="bottom", fontsize=8,
                        xytext=(0, 2), textcoords="offset points")  # fmt: skip
    ax_lat.set_xticks(range(len(lat)), [label for label, _, _ in lat], fontsize=7)
    if lat:
        ax_lat.set_yscale("log")
        ax_lat.set_ylim(10, max(v for _, v, _ in lat) * 2.5)
        ax_lat.yaxis.set_major_formatter(plain)
    ax_lat.set_ylabel("µs, log scale")
    ax_lat.set_title("Latency (µs): new relayed connection,\n64-byte ping-pong round trip")
    ax_lat.grid(axis="y", alpha=0.3, which="both")

    m = results.get("machine", {})
    fig.suptitle(
        f"hybridrelay bench ({results.get('mode', '?')} run, {results.get('started_at', '?')}): "
        f"{m.get('cpu_model', '?')}, {m.get('nproc', m.get('cpu_count', '?'))} CPUs, "
        f"Python {m.get('python', '?')}, uvloop {m.get('uvloop_version', 'no')}",
        fontsize=10,
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__.split("\n")[0])
    p.add_argument("results", type=Path, help="JSON written by python -m bench")
    p.add_argument("--out", type=Path, default=DEFAULT_PNG, help=f"PNG (default {DEFAULT_PNG})")
    args = p.parse_args(argv)
    try:
        png = plot(json.loads(args.results.read_text("utf-8")), args.out)
    except PlotUnavailableError as exc:
        print(f"plot: {exc}", file=sys.stderr)
        return 1
    print(f"plot: wrote {png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
