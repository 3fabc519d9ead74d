"""Checks that run on a CUDA device and are read later, so a checked build never syncs.

A checked CUDA build computes on the device one int32 flag saying whether its inputs failed
a check, and ``watch`` copies it asynchronously into a slot of a pinned host ring, marked
pending until the copy lands. Every later checked build first ``poll``s: slots that have
landed are read oldest first, and a failed one calls its ``report``, which raises the error
the host checks would have raised. ``wait`` syncs and reads them all. The ring is per
device and bounded: a build that finds it full waits for the oldest slot.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable

import torch

RING = 256  # pending checks per device
_PENDING = -1  # a slot's value until the device's copy lands (the checks write 0 or 1)


class _Ring:
    """A device's pinned int32 slots and the reports waiting on them, oldest first."""

    def __init__(self, device: torch.device) -> None:
        pinned = device.type == "cuda"  # what an asynchronous copy lands in
        self.host = torch.full((RING,), 0, dtype=torch.int32, pin_memory=pinned)
        self.values = self.host.numpy()  # reads and writes without torch's dispatch
        self.slots = self.host.unbind()
        self.reports: deque[tuple[int, Callable[[], None]]] = deque()
        self.next = 0


_RINGS: dict[torch.device, _Ring] = {}
_LOCK = threading.Lock()  # builds on several threads share the rings


def watch(bad: torch.Tensor, report: Callable[[], None]) -> None:
    """Read ``bad`` (a 0-dim int32 tensor, nonzero when a check failed) once its device has
    computed it, and then call ``report`` if it is nonzero (``poll``). Off CUDA the copy
    lands at once. A full ring is waited for first (no pending slot is ever reused)."""
    while True:
        with _LOCK:
            ring = _RINGS.get(bad.device)
            if ring is None:
                ring = _RINGS[bad.device] = _Ring(bad.device)
            if len(ring.reports) < RING:
                slot = ring.next
                ring.next = (slot + 1) % RING
                ring.values[slot] = _PENDING
                ring.slots[slot].copy_(bad, non_blocking=True)
                ring.reports.append((slot, report))
                return
        _sync(bad.device)
        _read(ring)


def _read(ring: _Ring) -> None:
    """Retire the landed slots, oldest first, calling each failed one's report (outside the
    lock: it re-runs the host checks, and normally raises, leaving later slots for the next
    read)."""
    while True:
        failed = None
        with _LOCK:
            while ring.reports and failed is None:
                slot, report = ring.reports[0]
                value = int(ring.values[slot])
                if value == _PENDING:
                    break
                ring.reports.popleft()
                if value:
                    failed = report
        if failed is None:
            return
        failed()


def poll(device: torch.device | None = None, wait: bool = False) -> None:
    """Report the failed checks whose bytes have landed (on ``device``, or every one),
    without waiting for the others; ``wait``: after waiting for them all."""
    for dev, ring in list(_RINGS.items()):
        if ring.reports and (device is None or dev == device):
            if wait:
                _sync(dev)
            _read(ring)


def wait(device: torch.device | None = None) -> None:
    """Wait for every pending check (on ``device``, or everywhere) and report failures."""
    poll(device, wait=True)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
