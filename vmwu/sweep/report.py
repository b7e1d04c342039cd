"""``vmwu sweep report DIR``: a PNG timeline of the sweep, one row per job, time across;
each attempt drawn from its submission (light: queued) through its start to its end,
coloured by how it ended. matplotlib with the Agg backend (no display needed)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vmwu.errors import BadInput, HostDiskFull, HostFailure
from vmwu.hostfs import replacing
from vmwu.sweep.journal import Journal

COLOURS = {
    "done": "#2e7d32",
    "failed": "#c62828",
    "cancelled": "#ef6c00",
    "retried": "#8e24aa",
    "running": "#1565c0",
    "queued": "#b0bec5",
}


@dataclass
class Segment:
    job: str
    start: float
    end: float
    kind: str  # a COLOURS key


def segments(events: list[dict[str, Any]], now: float) -> list[Segment]:
    """Queued and running stretches of every attempt, from the journal's events."""
    out: list[Segment] = []
    open_: dict[str, tuple[str, float]] = {}  # job -> (queued|running, since)
    for ev in events:
        job, at, state = ev["job"], float(ev["at"]), ev["state"]
        if state in ("submitting", "submitted"):
            if job not in open_:
                open_[job] = ("queued", at)
        elif state == "running":
            if job in open_:
                kind, since = open_[job]
                if kind == "queued":
                    out.append(Segment(job, since, at, "queued"))
            open_[job] = ("running", at)
        elif state in ("done", "failed", "cancelled", "pending") and job in open_:
            _, since = open_.pop(job)
            out.append(Segment(job, since, at, "retried" if state == "pending" else state))
    for job, (kind, since) in open_.items():
        out.append(Segment(job, since, now, "running" if kind == "running" else "queued"))
    return out


def _label(params: dict[str, Any]) -> str:
    text = " ".join(f"{k}={v}" for k, v in params.items())
    return text if len(text) <= 32 else text[:31] + "…"


def draw_timeline(journal: Journal, out: Path) -> Path:
    import time

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    events = journal.events()
    if not events:
        raise BadInput(f"{journal.path.parent}: no job has been submitted yet")
    segs = segments(events, time.time())
    jobs = journal.jobs()
    order = [r.id for r in jobs]
    labels = [_label(r.params) for r in jobs]
    rows = {job: i for i, job in enumerate(order)}
    t0 = min(s.start for s in segs) if segs else float(events[0]["at"])
    height = max(2.5, min(40.0, 0.18 * len(order) + 1.5))
    fig, ax = plt.subplots(figsize=(10, height))
    for seg in segs:
        if seg.job in rows:
            ax.barh(
                rows[seg.job],
                max(seg.end - seg.start, 0.05),
                left=seg.start - t0,
                height=0.8,
                color=COLOURS[seg.kind],
                linewidth=0,
            )
    ax.set_ylim(len(order) - 0.5, -0.5)
    if len(order) <= 40:
        ax.set_yticks(range(len(order)), labels, fontsize=7)
    else:
        ax.set_ylabel(f"{len(order)} jobs")
        ax.set_yticks([])
    ax.set_xlabel("seconds since the first submission")
    counts = journal.counts()
    ax.set_title(
        f"{journal.meta().get('plan_source', '')}: "
        + ", ".join(f"{v} {k}" for k, v in counts.items() if v),
        fontsize=9,
    )
    used = {s.kind for s in segs}
    ax.legend(
        handles=[Patch(color=c, label=k) for k, c in COLOURS.items() if k in used],
        loc="upper left",
        bbox_to_anchor=(1.0, 1.0),
        fontsize=7,
    )
    fig.tight_layout()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        with replacing(out) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    except HostDiskFull:
        raise
    except HostFailure as err:
        raise BadInput(f"cannot write {out}: {err.message}") from None
    except OSError as err:
        raise BadInput(f"cannot write {out}: {err.strerror}") from None
    finally:
        plt.close(fig)
    return out
