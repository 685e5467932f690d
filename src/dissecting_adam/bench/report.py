"""The check's report: ``report.json`` (strict JSON) and ``report.md`` (for people).

The document is plain data: a ``header`` (device, date, commit, budget, what was tiny),
``sections`` (the records of ``sections.run_sections``: status, seconds, notes, tables of
rows, data) and ``recommendations``. Both files are written to a temp file and renamed.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def plain(obj):
    """JSON-ready: non-finite floats -> None (strict JSON has no NaN), tuples -> lists,
    paths and other objects -> str."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, dict):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    return str(obj)


def to_json(doc: dict) -> str:
    return json.dumps(plain(doc), indent=2, allow_nan=False) + "\n"


def cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        if value != 0 and abs(value) < 0.01:
            return f"{value:.2e}"
        return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.3g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def table_md(table: dict) -> list[str]:
    cols = table["columns"] or list(dict.fromkeys(k for row in table["rows"] for k in row))
    if not table["rows"]:
        return [f"**{table['title']}**", "", "(nothing measured)", ""]
    lines = [
        f"**{table['title']}**",
        "",
        "| " + " | ".join(cols) + " |",
        "|" + "|".join(" --- " for _ in cols) + "|",
    ]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in cols) + " |" for row in table["rows"]]
    return [*lines, ""]


def markdown(doc: dict) -> str:
    h = doc["header"]
    lines = [f"# {h['title']}", ""]
    if h.get("tiny_note"):
        lines += [f"**{h['tiny_note']}**", ""]
    lines += [f"- {key}: {cell(value)}" for key, value in h["facts"].items()]
    lines.append("")
    for n, sec in enumerate(doc["sections"], 1):
        lines += [f"## {n}. {sec['title']}: {sec['status']}", ""]
        if "seconds" in sec:
            lines += [f"{sec['seconds']:.1f} s of a {sec['share_s']:.1f} s share.", ""]
        error = sec.get("error")
        if error:
            lines += ["```", error["error"], *error["traceback"], "```", ""]
        for note in sec.get("notes") or []:
            first, *rest = note.split("\n")
            lines += [f"- {first}", *(["", "```", *rest, "```"] if rest else [])]
        if sec.get("notes"):
            lines.append("")
        for table in sec.get("tables") or []:
            lines += table_md(table)
    lines += ["## Recommendations", ""]
    recs = (doc.get("recommendations") or {}).get("lines") or []
    lines += [f"- {r}" for r in recs] or ["- none (the sections they rest on have not run)"]
    return "\n".join(lines) + "\n"


def write(out: Path, doc: dict) -> None:
    """``out/report.json`` and ``out/report.md``, each replaced atomically."""
    out.mkdir(parents=True, exist_ok=True)
    for name, text in (("report.json", to_json(doc)), ("report.md", markdown(doc))):
        tmp = out / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, out / name)
