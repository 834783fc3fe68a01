"""Trial rows as a table a person reads: each status shown as itself (failed, no-op,
collapsed), numbers with enough digits that differences show (0.999960, never a rounded 1; a
zero drop is 0, never -0), latency with its estimate band. Plain functions: widgets and
notebooks render what these return."""
from __future__ import annotations

import html
import json
import math

from l4opt.spec import row as rowspec

MAX_DECIMALS = 8
MIN_SIGNIFICANT = 4
# columns whose values sit near 1 and whose differences matter in the 4th-6th decimal
MIN_DECIMALS = {"cos_mean": 6, "cos_min": 6}
STATUS_STYLE = {"ok": "", "failed": "color:#b00;font-weight:bold",
                "no-op": "color:#a15c00;font-weight:bold",
                "collapsed": "color:#b00;font-weight:bold", "cached": ""}


row_status = rowspec.status  # the one status rule (l4opt.spec.row)

# The first table everywhere (dashboard, report, notebooks): laptop-sized, one sign convention.
METRIC_DROP = "metric drop (lower is better)"
SUMMARY_COLUMNS = ["recipe", "status", "metric_drop", "latency_ms", "speedup", "layers"]
SUMMARY_NAMES = {"metric_drop": METRIC_DROP, "latency_ms": "L4 latency ms (band)",
                 "speedup": "speed-up vs FP16 (band)", "layers": "8-bit layers"}


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def decimals_for(values, name: str | None = None) -> int:
    """Decimals for one column: MIN_SIGNIFICANT digits of its smallest non-zero value, more
    until distinct values look distinct and no value that is not a whole number looks like
    one below 100 (0.99996 is never '1.0000'), at most MAX_DECIMALS."""
    vals = [float(v) for v in values if _finite(v)]
    d = max([v for k, v in MIN_DECIMALS.items() if k in (name or "")], default=0)
    nonzero = [abs(v) for v in vals if v != 0]
    if not nonzero:
        return d
    if all(float(v).is_integer() for v in vals):
        return d if d else 0
    d = max(d, MIN_SIGNIFICANT - 1 - math.floor(math.log10(min(nonzero))))
    d = max(0, min(d, MAX_DECIMALS))
    while d < MAX_DECIMALS:
        shown = [round(v, d) for v in vals]
        distinct = len(set(shown)) == len(set(vals))
        # a value near 1 (a cosine, a ratio) must not pass for exactly 1; big numbers may round
        looks_whole = any(abs(v) < 100 and not v.is_integer() and round(v, d) == round(v)
                          for v in vals)
        if distinct and not looks_whole:
            break
        d += 1
    return d


def format_number(v, decimals: int) -> str:
    """One number: '–' for missing/NaN, '0' for any zero (never '-0'), ints as ints."""
    if v is None or isinstance(v, bool):
        return "–" if v is None else ("yes" if v else "no")
    if not isinstance(v, (int, float)):
        return str(v)
    if isinstance(v, float) and math.isnan(v):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if v == 0:
        return "0"
    if isinstance(v, int) or (float(v).is_integer() and decimals == 0):
        return f"{int(v)}"
    s = f"{v:.{decimals}f}"
    if s.lstrip("-").strip("0.") == "":  # rounds to zero at this precision: say so honestly
        return f"{v:.2g}"
    return s


def format_column(values, name: str | None = None) -> list[str]:
    """A column of numbers formatted alike (see decimals_for)."""
    values = [_py(v) for v in values]
    d = decimals_for(values, name)
    return [format_number(v, d) for v in values]


def _py(v):
    """numpy scalars as Python numbers; pandas' missing values as None."""
    if hasattr(v, "item") and not isinstance(v, (list, tuple, dict, str)):
        try:
            v = v.item()
        except (ValueError, AttributeError):
            pass
    if v is not None and not isinstance(v, (list, tuple, dict, str, bool, int, float)):
        try:
            import pandas as pd

            if pd.isna(v):
                return None
        except (TypeError, ValueError):
            pass
    return v


def latency_cells(ms, low, high, name: str = "latency") -> list[str]:
    """'1.234 (1.10–1.40)': the latency and, where it is an estimate with a band, the band.
    A latency that is 0, NaN or missing is no result: shown as '–'."""
    ms, low, high = [_py(v) for v in ms], [_py(v) for v in low], [_py(v) for v in high]
    good = [v if _finite(v) and v > 0 else None for v in ms]
    d = decimals_for([v for v in good if v is not None] +
                     [v for v in low + high if _finite(v) and v > 0], name)
    out = []
    for v, lo, hi in zip(good, low, high):
        if v is None:
            out.append("–")
            continue
        s = format_number(v, d)
        if _finite(lo) and _finite(hi) and (lo < v or hi > v):
            s += f" ({format_number(lo, d)}–{format_number(hi, d)})"
        out.append(s)
    return out


def layers_cells(quantized, gemm) -> list[str]:
    """'3/5': GEMM/conv layers at the recipe's precision out of all of them."""
    out = []
    for q, g in zip(quantized, gemm):
        q, g = _py(q), _py(g)
        if _finite(q) and _finite(g):
            out.append(f"{int(q)}/{int(g)}")
        elif _finite(q):
            out.append(f"{int(q)}")
        else:
            out.append("–")
    return out


def speedup_cells(s, low, high) -> list[str]:
    """'1.37× (0.61–3.05)': the speed-up over the FP16 baseline and its band; '–' without one."""
    out = []
    for v, lo, hi in zip(*[[_py(x) for x in col] for col in (s, low, high)]):
        if not (_finite(v) and v > 0):
            out.append("–")
            continue
        text = f"{_times(v)}×"
        if _finite(lo) and _finite(hi) and (lo < v or hi > v):
            text += f" ({_times(lo)}–{_times(hi)})"
        out.append(text)
    return out


def _times(v: float) -> str:
    return f"{v:.2f}" if abs(v) < 10 else f"{v:.3g}"


def rate_text(v, unit: str = "") -> str:
    """A rate for reading: thousands separators, whole numbers ('1,588,859 samples/s')."""
    v = _py(v)
    if not _finite(v):
        return "–"
    text = f"{v:,.0f}" if abs(v) >= 10 else f"{v:.3g}"
    return f"{text} {unit}".strip()


def shapes_text(shapes) -> str:
    """A row's `shapes` for reading: 'input_ids 32x64, attention_mask 32x64'."""
    shapes = _py(shapes)
    if not isinstance(shapes, dict):
        return _text(shapes)
    inputs = shapes.get("inputs", shapes)
    if not isinstance(inputs, dict) or not inputs:
        return _text(shapes)
    return ", ".join(f"{name} {'x'.join(str(d) for d in dims)}" if isinstance(dims, (list, tuple))
                     else f"{name} {dims}" for name, dims in inputs.items())


def _text(v) -> str:
    """A text cell; missing (None, NaN, pandas NA) is '–' as in numeric columns."""
    v = _py(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, (list, tuple, dict)):
        return json.dumps(v, default=str)[:200]
    return str(v)


def display_frame(df, columns, rename: dict | None = None):
    """The listed columns that exist, as strings ready to show: statuses as row_status says,
    numbers by format_column, latencies with their band ('<col>_low'/'<col>_high', or
    latency_low_ms/latency_high_ms for latency_ms), 'layers' as quantized/gemm."""
    import pandas as pd

    records = df.to_dict("records")
    out = {}
    for c in columns:
        if c == "layers":
            if "quantized_layers" in df or "gemm_layers" in df:
                out["layers"] = layers_cells(
                    df["quantized_layers"] if "quantized_layers" in df else [None] * len(df),
                    df["gemm_layers"] if "gemm_layers" in df else [None] * len(df))
            continue
        if c not in df:
            continue
        if c == "status":
            out[c] = [row_status(r) for r in records]
        elif c == "speedup":
            out[c] = speedup_cells(df[c], *(df[k] if k in df else [None] * len(df)
                                            for k in ("speedup_low", "speedup_high")))
        elif c.endswith("samples_s"):
            out[c] = [rate_text(v) for v in df[c]]
        elif c == "shapes":
            out[c] = [shapes_text(v) for v in df[c]]
        elif c.endswith("latency_ms"):
            stem = c[:-3]
            low = df[f"{stem}_low_ms"] if f"{stem}_low_ms" in df else [None] * len(df)
            high = df[f"{stem}_high_ms"] if f"{stem}_high_ms" in df else [None] * len(df)
            out[c] = latency_cells(list(df[c]), list(low), list(high), c)
        else:
            vals = [_py(v) for v in df[c]]
            numeric = [v for v in vals if v is not None]
            if numeric and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                               for v in numeric):
                out[c] = format_column(vals, c)
            else:
                out[c] = [_text(v) for v in vals]
    shown = pd.DataFrame(out, index=range(len(df)))
    return shown.rename(columns=rename or {})


def html_table(df, columns, rename: dict | None = None, dimmed=None,
               css_class: str = "l4opt-table") -> str:
    """An escaped HTML table of display_frame; rows where `dimmed` is true are greyed out,
    and the status cell is coloured by what happened."""
    shown = display_frame(df, columns, rename)
    dimmed = list(dimmed) if dimmed is not None else [False] * len(shown)
    status_col = (rename or {}).get("status", "status")
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    body = []
    for i, rec in enumerate(shown.to_dict("records")):
        style = " style='opacity:0.35'" if dimmed[i] else ""
        cls = " class='l4opt-dimmed'" if dimmed[i] else ""
        cells = []
        for c, v in rec.items():
            css = STATUS_STYLE.get(v, "") if c == status_col else ""
            cells.append(f"<td{f' style={chr(39)}{css}{chr(39)}' if css else ''}>"
                         f"{html.escape(str(v))}</td>")
        body.append(f"<tr{cls}{style}>{''.join(cells)}</tr>")
    return (f"<div class='{css_class}'><table class='dataframe'><thead><tr>" + head +
            "</tr></thead><tbody>" + "".join(body) + "</tbody></table></div>")


def trial_frame(rows):
    """Trial rows (dicts or a DataFrame) with the derived columns tables and charts read, every
    status kept: `name` (search candidate name or recipe), `metric_drop` (from metric_delta and
    the metric's direction when absent) and `cos_drop` (1 - mean cosine)."""
    import numpy as np
    import pandas as pd

    df = pd.DataFrame(rows if rows is not None else []).reset_index(drop=True)
    for c in ("recipe", "name", "workload", "key", "status"):
        if c not in df:
            df[c] = None
    for c in ("metric_delta", "metric_drop", "cos_mean"):
        df[c] = pd.to_numeric(df[c], errors="coerce") if c in df else np.nan
    hib = (df["metric_higher_is_better"].map(lambda v: v is not False)
           if "metric_higher_is_better" in df else pd.Series(True, index=df.index))
    derived = np.where(hib, -df["metric_delta"], df["metric_delta"])
    df["metric_drop"] = df["metric_drop"].where(df["metric_drop"].notna(), derived)
    df["metric_drop"] = df["metric_drop"] + 0.0  # -0.0 becomes 0.0
    df["cos_drop"] = 1.0 - df["cos_mean"]
    df["name"] = df["name"].where(df["name"].notna(), df["recipe"]).astype(object)
    df["key"] = df["key"].where(df["key"].notna(), df["name"])
    return df


# ------------------------------------------------------------------ notes, each said once

NOTE_KINDS = ("collapsed", "no-op", "failed", "fp8-int8", "notes")
NOTE_LABELS = {"collapsed": "COLLAPSED", "no-op": "NO-OP", "failed": "FAILED",
               "fp8-int8": "L4 latency", "notes": "note"}


def folded_notes(rows, kind: str = "notes", brief: bool = False) -> list[tuple[str, list[str]]]:
    """The rows' notes of one kind, each distinct note once with the recipes it concerns (in
    the rows' order), so a note repeated for several recipes is said once. `kind`: 'notes' (a
    trial's notes), 'fp8-int8' (why an FP8 or INT8 trial's L4 latency agrees with or differs
    from the other format's) or a status ('collapsed', 'no-op', 'failed': why the trial is not
    ok). `brief` keeps each note's first sentence (and folds on it)."""
    by_note: dict[str, list[str]] = {}
    for r in rows:
        for n in _notes_of(r, kind):
            n = str(n).split(". ")[0] if brief else str(n)
            who = by_note.setdefault(n, [])
            name = str(_py(r.get("name")) or r.get("recipe"))
            if name not in who:
                who.append(name)
    return list(by_note.items())


def _notes_of(row: dict, kind: str) -> list:
    """The notes of one kind that one row carries."""
    def as_list(v):
        v = _py(v)
        return [x for x in v if x] if isinstance(v, (list, tuple)) else ([v] if isinstance(
            v, str) and v else [])

    if kind == "notes":
        return as_list(row.get("notes"))
    if kind == "fp8-int8":
        return as_list(row.get("latency_notes"))[:1] if row.get("format") in ("fp8", "int8") \
            else []
    if row_status(row) != kind:
        return []
    why = _py(row.get("error")) or _py(row.get("collapse_note")) or \
        "; ".join(map(str, as_list(row.get("notes"))))
    return [why or "(no note recorded)"]


def notes_text(rows, kinds=NOTE_KINDS, brief: bool = True) -> list[str]:
    """One plain line per distinct note of each kind (folded_notes), for a notebook's output:
    'COLLAPSED int8, fp8: <why>', 'L4 latency (int8, fp8): <note>'."""
    out, said = [], set()
    for kind in kinds:
        label = NOTE_LABELS.get(kind, kind)
        for note, who in folded_notes(rows, kind, brief=brief):
            if (note, tuple(who)) in said:  # a no-op's notes already given as its reason
                continue
            said.add((note, tuple(who)))
            names = ", ".join(who)
            out.append(f"{label} {names}: {note}" if kind in ("collapsed", "no-op", "failed")
                       else f"{label} ({names}): {note}")
    return out
