"""The bench's floor of a Python fault (scripts/fault_floor.py) stays the fault it stands
for: the same locks in the same order and the same kernel state as ``uvm_fault``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
from kernharness import RW, booted

from smp.kern import lock, pmap
from smp.kern import uvm as U
from smp.kern.param import NBPG, VM_PROT_WRITE
from smp.kern.uvm_fault import uvm_fault
from smp.kern.uvm_map import EF_COPY, EF_FILE, uvm_mmap

ROOT = Path(__file__).resolve().parents[1]
NFAULTS = 40
# the interrupt controller's arrays hold host-clock times (and cnt's pmap_enter_ns, below)
NOT_STATE = {"intr_glob", "isrc", "isrc_pend"}


def _floor_module():
    spec = importlib.util.spec_from_file_location("fault_floor",
                                                  ROOT / "scripts" / "fault_floor.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _faults(monkeypatch, make_fault) -> tuple[list[tuple[str, int]], dict, list[int]]:
    """NFAULTS sequential write faults after a warm-up; (lock calls, arrays, frames)."""
    with booted(["physmem=8M"]) as b:
        tid = b.switch_to(0)
        va = uvm_mmap(tid, NFAULTS + 8, RW, EF_COPY)
        assert uvm_fault(tid, va, VM_PROT_WRITE) == 0      # the PTP and the pv page
        calls: list[tuple[str, int]] = []
        real_lock, real_unlock = lock.simple_lock, lock.simple_unlock

        def traced_lock(lk: int) -> None:
            calls.append(("lock", lk))
            real_lock(lk)

        def traced_unlock(lk: int) -> None:
            calls.append(("unlock", lk))
            real_unlock(lk)

        monkeypatch.setattr(lock, "simple_lock", traced_lock)
        monkeypatch.setattr(lock, "simple_unlock", traced_unlock)
        fault = make_fault()
        for i in range(1, NFAULTS + 1):
            assert fault(tid, va + i * NBPG, VM_PROT_WRITE) == 0
        monkeypatch.undo()
        arrays = {k: np.array(v) for k, v in b.a.items() if k not in NOT_STATE}
        frames = [pmap.pmap_extract(b.pm(0), va + i * NBPG) for i in range(NFAULTS + 1)]
        return calls, arrays, frames


def test_floor_takes_the_faults_locks_and_leaves_its_state(monkeypatch):
    floor = _floor_module()
    calls, arrays, frames = _faults(monkeypatch, lambda: uvm_fault)
    fcalls, farrays, fframes = _faults(monkeypatch, floor.make_floor_fault)
    assert len(calls) > 8 * NFAULTS
    assert fcalls == calls
    assert fframes == frames and min(frames) >= 0
    differ = [k for k in arrays if not np.array_equal(arrays[k], farrays[k])]
    assert differ == ["cnt"]
    cols = sorted({U.COUNTERS[int(c)] for c in np.nonzero(arrays["cnt"] != farrays["cnt"])[1]})
    assert cols == ["pmap_enter_ns"], cols


def test_floor_refuses_a_fault_it_does_not_model():
    floor = _floor_module()
    with booted(files=[16]) as b:
        tid = b.switch_to(0)
        va = uvm_mmap(tid, 8, RW, EF_FILE | EF_COPY, uobj=0)
        fault = floor.make_floor_fault()
        with pytest.raises(AssertionError, match="not the bench's"):
            fault(tid, va, VM_PROT_WRITE)
