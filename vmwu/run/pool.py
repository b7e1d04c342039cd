"""A node pool: ready VMs (vmwu.vmm.pool) kept by one process for the instances it runs.

The pool learns what to keep from the instances that ask: :meth:`NodePool.take` with an
instance's warm configuration returns a ready VM for it if there is one, and in any case
makes sure that ``size`` VMs for that configuration (its *pool key*) are being made ready
for the next ones. One background thread makes them: it starts each QEMU (a ready VM
dies with the thread that started it, so this thread lives as long as the pool), waits
until the saved guest has loaded, and queues it paused. A VM taken is never put back.

While a key has ready VMs, the saved guest's RAM file and state are held in use
(``NodeCache.in_use``), so that a bounded cache does not evict what they map. A key
nobody asked for during ``idle`` seconds is dropped with its VMs. A key whose VMs fail
to start is dropped too (until an instance asks again).

Making a ready VM (a QEMU restoring, then the guest warming up) takes ~0.4 s of CPU. On a
node with few cores that would be taken from the instances running then: with ``busy``
(how many instances the owner runs now), the pool starts making one only while fewer than
``max_busy`` run (by default one per core: it takes a core no instance uses), and the
owner calls :meth:`nudge` when one ends. :meth:`close` stops everything;
if the owning process dies instead, its QEMUs die with it (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vmwu.cache import NodeCache
from vmwu.vmm.pool import ReadyVM, WarmUp, pool_key, poolable
from vmwu.vmm.qemu import MachineConfig

log = logging.getLogger(__name__)

DEFAULT_SIZE = 2
WARM_UP = True  # ready VMs mount warm-up disks once before they wait (vmwu.vmm.pool)
DEFAULT_IDLE = 300.0
_FAILURES_BEFORE_DROP = 3
WAIT = 3.0  # seconds an instance may wait for the ready VM being made


@dataclass
class _Key:
    cfg: MachineConfig
    holds: contextlib.ExitStack
    ready: deque[ReadyVM] = field(default_factory=deque)
    last_asked: float = field(default_factory=time.monotonic)
    failures: int = 0
    waiting: bool = False  # an instance waits for the VM being made


class NodePool:
    """Ready VMs under ``root`` (a private directory), ``size`` per pool key."""

    def __init__(
        self,
        root: Path,
        *,
        size: int = DEFAULT_SIZE,
        idle: float = DEFAULT_IDLE,
        cache: NodeCache | None = None,
        busy: Callable[[], int] | None = None,
        max_busy: int | None = None,
    ) -> None:
        self.root = root
        self.size = size
        self.idle = idle
        self.busy = busy
        self.max_busy = max_busy if max_busy is not None else (os.cpu_count() or 1)
        self.cache = cache or NodeCache()
        self._keys: dict[str, _Key] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._making: str | None = None  # the key of the VM being made
        self._serial = 0
        self.made = 0  # VMs made ready so far (for tests and the service's status)
        self.warmed = 0  # of which the agent warmed up
        self.warm_up: WarmUp | None = None  # made by the refill thread, once
        self._thread = threading.Thread(target=self._refill, name="vmwu-pool", daemon=True)
        self._thread.start()

    def take(self, cfg: MachineConfig) -> ReadyVM | None:
        """A ready VM for ``cfg`` (nobody else gets it), or None; either way the pool
        keeps VMs for ``cfg`` ready from now on."""
        if self.size < 1 or poolable(cfg) is not None:
            return None
        key = pool_key(cfg)
        with self._cond:
            if self._closed:
                return None
            entry = self._keys.get(key)
            if entry is None:
                entry = _Key(cfg, self._hold(cfg))
                self._keys[key] = entry
            entry.last_asked = time.monotonic()
            self._cond.notify_all()  # the refill thread: this key wants VMs
            if not entry.ready and self._making == key and not entry.waiting:
                # one is almost ready: its restore and warm-up take less than a start of
                # the instance's own would (one waiter per VM in the making)
                entry.waiting = True
                try:
                    self._cond.wait_for(lambda: bool(entry.ready) or self._making != key, WAIT)
                finally:
                    entry.waiting = False
            while entry.ready:
                candidate = entry.ready.popleft()
                if candidate.alive:
                    self._cond.notify_all()
                    return candidate
                candidate.discard()
            return None

    def _hold(self, cfg: MachineConfig) -> contextlib.ExitStack:
        holds = contextlib.ExitStack()
        for path in (cfg.ram_file, cfg.incoming):
            if path is not None:
                holds.enter_context(self.cache.in_use(path))
        return holds

    def nudge(self) -> None:
        """The owner's instances changed (one ended): the refill thread looks again."""
        with self._cond:
            self._cond.notify_all()

    def _cores_taken(self) -> bool:
        return self.busy is not None and self.busy() >= self.max_busy

    def ready_count(self) -> int:
        with self._cond:
            return sum(len(k.ready) for k in self._keys.values())

    # -- the refill thread -------------------------------------------------------------------

    def _next_wanted(self) -> tuple[str, MachineConfig] | None:
        """(key, cfg) of a key short of ready VMs, after dropping idle keys; None if all
        are full. Called with the lock held."""
        now = time.monotonic()
        for key, entry in list(self._keys.items()):
            if now - entry.last_asked > self.idle:
                self._drop(key)
        for key, entry in self._keys.items():
            if len(entry.ready) < self.size:
                return key, entry.cfg
        return None

    def _drop(self, key: str) -> None:
        entry = self._keys.pop(key)
        for vm in entry.ready:
            vm.discard()
        entry.holds.close()

    def _refill(self) -> None:
        while True:
            with self._cond:
                wanted = None
                while not self._closed:
                    wanted = self._next_wanted()
                    if wanted is not None and not self._cores_taken():
                        break
                    self._cond.wait(timeout=min(self.idle, 5.0))
                if self._closed:
                    return
                assert wanted is not None
                key, cfg = wanted
                self._serial += 1
                workdir = self.root / f"vm-{self._serial}"
                self._making = key
            vm = self._make(cfg, workdir)
            with self._cond:
                self._making = None
                self._cond.notify_all()
                entry = self._keys.get(key)
                if vm is not None and entry is not None and not self._closed:
                    entry.ready.append(vm)
                    entry.failures = 0
                    self.made += 1
                    self.warmed += vm.warmed
                    continue
                if vm is not None:
                    vm.discard()
                elif entry is not None:
                    entry.failures += 1
                    if entry.failures >= _FAILURES_BEFORE_DROP:
                        log.debug("pool: no more ready VMs for a machine that failed to start")
                        self._drop(key)

    def _make(self, cfg: MachineConfig, workdir: Path) -> ReadyVM | None:
        if self.warm_up is None and WARM_UP:
            try:
                self.warm_up = WarmUp.make(self.root / "warm-up")
            except Exception as exc:  # noqa: BLE001 - ready VMs work without it, slower
                log.debug("pool: no warm-up disks (%s)", exc)
        try:
            vm = ReadyVM(cfg, workdir, self.warm_up)
        except ValueError as exc:
            log.debug("pool: %s", exc)
            return None
        try:
            vm.launch()
            return vm
        except Exception as exc:  # noqa: BLE001 - a VM that failed: logged, not fatal
            log.debug("pool: a ready VM failed to start: %s", exc)
            vm.discard()
            return None

    # -- the end -----------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the refill thread and every ready VM (VMs already taken are their
        instances' to end)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout=30)
        with self._cond:
            for key in list(self._keys):
                self._drop(key)

    def __enter__(self) -> NodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
