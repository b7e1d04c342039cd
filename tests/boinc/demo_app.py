"""A BOINC app written with vmwu's BoincSession, for tests under the real client.

Counts ``--steps`` steps of ``--step-cpu`` CPU seconds each (busy work, so the client
sees CPU time), reporting its fraction done and CPU time, checkpointing its step counter
to ``counter`` in the slot every ``--checkpoint-every`` steps, and following the client:
suspend/resume (no step while suspended), quit (checkpoint, exit 0), abort (exit 194),
client gone (exit 0). What it sees goes to stderr (the slot's stderr.txt) and, for the
test to wait on, into ``demo_state`` in the slot. At the end it writes
``steps=N first=K`` to its output ``out.txt`` through the soft link, and finishes.
Run with a shebang naming the Python that has vmwu installed.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from vmwu.wrapper.boinc.api import EXIT_ABORTED_BY_CLIENT, BoincSession, ClientMessage


def busy(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--step-cpu", type=float, default=0.25)
    p.add_argument("--checkpoint-every", type=int, default=2)
    args = p.parse_args()
    slot = Path.cwd()
    session = BoincSession(slot)
    counter = slot / "counter"
    step = int(counter.read_text()) if counter.exists() else 0
    first = step
    session.log(f"demo app starting at step {step} of {args.steps}")

    def cpu() -> float:
        return session.init.wu_cpu_time + time.process_time()

    while step < args.steps:
        for message in session.poll():
            session.log(f"demo app got {message.value}")
            if message is ClientMessage.QUIT or message is ClientMessage.CLIENT_GONE:
                write(counter, str(step))
                return 0
            if message is ClientMessage.ABORT:
                return EXIT_ABORTED_BY_CLIENT
        write(
            slot / "demo_state",
            f"step={step} suspended={int(session.state.suspended)} "
            f"heartbeats={session.state.heartbeats}\n",
        )
        if session.state.suspended:
            time.sleep(0.1)
            continue
        busy(args.step_cpu)
        step += 1
        if step % args.checkpoint_every == 0:
            write(counter, str(step))
            session.checkpoint_completed(cpu())
        session.report(cpu(), step / args.steps)
    out = session.names.resolve("out.txt")
    Path(out).write_text(f"steps={step} first={first}\n")
    return session.finish(0, cpu_time=cpu())


if __name__ == "__main__":
    raise SystemExit(main())
