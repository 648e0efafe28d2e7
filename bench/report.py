"""Markdown of a ``make bench`` result: ``python -m bench.report RESULT.json``.

Prints the figures table and oncechat's breakdowns (by phase, by
operation, GSI writes, pushed frames, the burst and the resumes), ready
for docs/performance.md.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from bench.perf import _fmt


def _md(rows: list[list[Any]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(str(c) for c in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def render(result: dict[str, Any]) -> str:
    out = []
    p = result["params"]
    out.append(f"Commit `{result.get('commit')}`, started {result.get('started')}, {result.get('seconds')} s; "
               f"paced: {p['messages']} messages each way every {p['pace']} s; closed loop: "
               f"{p['conversations']} conversations x {p['rounds']} messages; burst {p['burst']}; "
               f"resume {', '.join(str(m) for m in p['memberships'])} memberships; imports best of {p['imports']}.")
    out.append("")
    rows: list[list[Any]] = [["figure", "oncechat", "wschat", "relay", "ratio", "target", "met?"]]
    for r in result["table"]:
        ratio = f"{r['ratio']}x {r['ratio_to']}" if r.get("ratio") is not None else ""
        rows.append([r["figure"].replace("  ", "&nbsp;&nbsp;"), _fmt(r.get("oncechat")), _fmt(r.get("wschat")),
                     _fmt(r.get("relay")), ratio, r.get("target", ""),
                     {True: "yes", False: "**no**", None: ""}[r.get("met")]])
    out.append(_md(rows))
    once = result["apps"].get("oncechat") or {}
    paced = once.get("paced")
    if paced:
        out += ["", "#### oncechat, paced 1:1, per delivered message, by phase", ""]
        rows = [["phase", "AWS requests", "WRU (of which GSI)", "RRU", "cancelled transactions"]]
        for phase, v in paced["by_phase"].items():
            rows.append([phase, v["requests"], f"{v['wru']} ({v['index_wru']})", v["rru"], v["cancelled"]])
        out.append(_md(rows))
        out += ["", "#### oncechat, paced 1:1, per delivered message, by operation", ""]
        rows = [["phase", "operation [tables]", "requests", "WRU (of which GSI)", "RRU", "cancelled"]]
        for key, v in paced["by_operation"].items():
            phase, op = key.split(" ", 1)
            rows.append([phase, op, v["requests"], f"{v['wru']} ({v['index_wru']})", v["rru"], v["cancelled"]])
        out.append(_md(rows))
        d = max(1, paced["delivered"])
        out += ["", "#### oncechat, paced 1:1: GSI writes per delivered message", ""]
        rows = [["index", "kind", "phase", "writes", "WRU"]]
        for w in paced["index_writes"]:
            rows.append([w["index"], w["kind"], w["phase"], round(w["writes"] / d, 3), round(w["wru"] / d, 3)])
        out.append(_md(rows))
        for key, what in (("push_types", "Pushed frames"), ("route_response_types", "Route responses")):
            sent = paced["raw"]["cloud"].get(key) or {}
            if sent:
                out += ["", f"{what} per delivered message: "
                        + ", ".join(f"{k} {round(v / d, 3)}" for k, v in sorted(sent.items())) + "."]
        lam = paced["raw"]["cloud"]["lambdas"]
        out += ["", "Lambda invocations in the window: "
                + ", ".join(f"{k} {int(v['invocations'])} ({v['ms'] / max(1, v['invocations']):.0f} ms each)"
                            for k, v in sorted(lam.items()))
                + f"; counting-proxy time subtracted: "
                  f"{paced.get('proxy_overhead_ms', paced.get('accounting_overhead_ms'))} ms per delivered message."]
    b = once.get("burst")
    if b:
        out += ["", f"Burst: {json.dumps({k: v for k, v in b.items()})}"]
    for r in once.get("resume") or []:
        out += ["", f"Resume {r['memberships']}: {json.dumps({k: v for k, v in r.items() if k != 'errors'})}"]
    imp = result.get("imports")
    if imp:
        out += ["", f"Cold imports (best of {imp['runs']}, ms): "
                + ", ".join(f"{k[:-3]} {v}" for k, v in imp.items() if k.endswith("_ms")) + "."]
    for app, figures in result["apps"].items():
        for failure in figures.get("failures", []):
            out.append(f"\n**{app} failed:** {failure}")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        print(render(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
