"""Sweeps on Dask distributed: :class:`DaskPool`, the second executor behind ``RunPool``.

``smp experiment --cluster ADDRESS`` and ``smp explore --cluster ADDRESS`` hand their
runs to a Dask scheduler instead of starting them here.  The pool keeps
:class:`~smp.tools.sweep.RunPool`'s contract -- ``run(tasks, on_done)``, ``on_done``
returning False starts no more, ``interrupted`` set by SIGINT/SIGTERM -- so the sweeps
do not know which executor runs them.  ``ADDRESS`` is ``tcp://host:port`` (a running
scheduler) or ``local`` (a ``LocalCluster`` in this process sized to this host).  Only
this module imports dask, and only when a cluster is asked for.

One run is one Dask task (:func:`run_task`), which runs ``smp run`` in a subprocess on
its worker (a run forks its CPUs and needs /dev/shm there), in a scratch directory of
the worker's, and asks for ``resources={"cpus": ncpu}`` -- the simulated CPUs of the
run's machine profile -- so a worker started with ``dask worker --resources cpus=N``
never runs more simulated CPUs than it has cores.  When no worker offers that many, a
run asks for the largest offer (it runs alone there) and the sweep says so once.

What comes back (``_deliver``): every file of the run directory is returned with the
task result and written into the sweep's directory exactly where a local run would
have written it; events.bin and hist.log travel zlib-compressed -- unless the sweep's
``--out`` is on a filesystem the worker sees at the same path (a probe file the client
writes there is visible to the worker), where the worker puts them in place itself.
``SMP_CLUSTER_SHARED=no`` makes every file travel.

Faults, case by case:

* a worker dies during a run: its ``smp run`` dies with it (``PR_SET_PDEATHSIG``, set
  between fork and exec by a two-line wrapper, so no ``preexec_fn`` in a threaded
  worker), and the scheduler gives the task to another worker (Dask's
  ``allowed-failures``; a task that raises is retried ``RETRIES`` times).  Every
  attempt logs a start and an end event on the ``smp-run`` topic; a second start is a
  retry, printed on stderr and recorded in the run's ``Finished`` (``retries``,
  ``workers``), which the sweeps write into experiment.json / explore.json;
* SIGINT or SIGTERM to the client: every outstanding task is cancelled; a cancelled
  task sees its own state change on its worker (it polls it) and stops its ``smp run``
  (SIGTERM: machine halted, segment unlinked; SIGKILL after ``GRACE_S``); the client
  waits for the end event of every run that had started, reports those runs as
  stopped, and returns with ``interrupted`` set.  A stopped run has no run directory
  here (it is removed from the worker's scratch);
* the client dies: the scheduler releases its tasks, which stop their runs as above;
* the scheduler goes away during the sweep (or someone cancels our tasks there): Dask
  cancels the client's futures; the pool stops as on Ctrl-C, with ``interrupted``
  naming the cause, so the sweep writes what finished and exits 130;
* the scheduler cannot be reached: one line, exit status 2 (``BadInput``).

    pool = DaskPool("tcp://scheduler:8786")
    pool.run(tasks, on_done)          # as RunPool.run
    pool.close()
"""

from __future__ import annotations

import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from smp.errors import BadInput, Exit, WriteFailed
from smp.rundir import format as fmt
from smp.tools.sweep import GRACE_S, POLL_S, Finished, Task, smp_command

TOPIC = "smp-run"                 # attempts' start/end events (Dask structured events)
RETRIES = 2                       # a task that raises runs again up to this many times
TASK_POLL_S = 0.2                 # how often a task looks whether it was cancelled
SHARED_ENV = "SMP_CLUSTER_SHARED"   # auto (default): detect a shared --out; no: copy back
TIMEOUT_ENV = "SMP_CLUSTER_TIMEOUT"
CONNECT_TIMEOUT_S = 10.0
BIG_FILES = (fmt.EVENTS_FILE, fmt.HIST_FILE)     # compressed, or left on a shared --out
_INPUT_OPTIONS = ("-k", "--kernel", "-m", "--machine")

# Run between fork and exec of ``smp run`` on a worker: die with the thread that started
# us (PR_SET_PDEATHSIG = SIGTERM: the run stops cleanly and unlinks its segment); if that
# parent is already gone, do not start at all.
_GUARD = ("import ctypes, os, signal, sys\n"
          "ctypes.CDLL(None).prctl(1, signal.SIGTERM, 0, 0, 0)\n"
          "if os.getppid() != int(sys.argv[1]):\n"
          "    sys.exit(130)\n"
          "os.execv(sys.argv[2], sys.argv[2:])\n")


# ------------------------------------------------------------------ the task (worker side)

def run_task(spec: dict) -> dict:
    """Run one ``smp run`` on this worker and return its run directory's files.

    ``spec``: ``args`` (the ``smp run`` arguments; ``--out`` and input files are
    rewritten here), ``inputs`` (load scripts and profiles, bytes by relative name) and
    ``arg_inputs`` (argument index -> that name), ``out_index``, ``run_dir`` (the
    client's path of the run directory) and ``probe`` ([path, token] of the client's
    shared-filesystem probe, or None)."""
    w, key = _this_task()
    _event(w, key, "start")
    root = getattr(w, "local_directory", None) if w is not None else None
    scratch = Path(tempfile.mkdtemp(prefix="smp-task-", dir=root if root and
                                    os.path.isdir(root) else None))
    proc = None
    try:
        args = list(spec["args"])
        for i, rel in spec["arg_inputs"].items():
            p = scratch / "inputs" / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(spec["inputs"][rel])
            args[int(i)] = str(p)
        run = scratch / "run"
        args[spec["out_index"]] = str(run)
        shared = _sees_probe(spec.get("probe"))
        with open(scratch / "stderr", "w+b") as err:
            t0 = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-c", _GUARD, str(os.getpid()), *smp_command(args)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                cwd=scratch, env=_child_env())
            cancelled = False
            while True:
                try:
                    proc.wait(TASK_POLL_S)
                    break
                except subprocess.TimeoutExpired:
                    pass
                if _cancelled(w, key):
                    cancelled = True
                    _stop(proc)
                    break
            wall = time.monotonic() - t0
            err.seek(0)
            stderr = err.read().decode("utf-8", "replace")
        if cancelled:
            return {"cancelled": True}
        files, packed, stayed = _collect(run, spec["run_dir"] if shared else None)
        return {"returncode": proc.returncode, "stderr": stderr, "wall_s": wall,
                "has_dir": run.is_dir(), "files": files, "packed": packed, "stayed": stayed,
                "worker": getattr(w, "address", ""), "host": socket.gethostname()}
    finally:
        if proc is not None and proc.poll() is None:     # an exception above
            _stop(proc)
        shutil.rmtree(scratch, ignore_errors=True)
        _event(w, key, "end")


def _this_task() -> tuple[Any, Any]:
    try:
        from distributed import get_worker

        w = get_worker()
        return w, w.get_current_task()
    except (ImportError, ValueError, AttributeError):       # not on a worker (tests)
        return None, None


def _event(w: Any, key: Any, what: str) -> None:
    if w is None:
        return
    try:
        w.log_event(TOPIC, {"key": str(key), "what": what, "worker": w.address,
                            "host": socket.gethostname()})
    except Exception:  # noqa: BLE001 - a lost event only loses a report, never the run
        pass


def _cancelled(w: Any, key: Any) -> bool:
    """Whether this worker no longer wants the task's result: cancelled by the client
    (Ctrl-C, or the client is gone), or the worker is closing."""
    if w is None:
        return False
    try:
        if getattr(w.status, "name", "") in ("closing", "closed", "failed"):
            return True
        ts = w.state.tasks.get(key)
        return ts is None or ts.state not in ("executing", "long-running")
    except AttributeError:              # another distributed: rely on PR_SET_PDEATHSIG
        return False


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM (the run halts its machine and unlinks its segment), SIGKILL if it hangs."""
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(GRACE_S)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _child_env() -> dict:
    """This worker's environment, with the smp it imported first on the path, so the run
    is the code the worker runs (a checkout rather than an older install)."""
    import smp

    env = dict(os.environ)
    here = Path(smp.__file__).resolve().parent.parent
    if here.name not in ("site-packages", "dist-packages"):
        env["PYTHONPATH"] = os.pathsep.join(
            [str(here)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
    return env


def _sees_probe(probe: list | None) -> bool:
    if not probe:
        return False
    try:
        return Path(probe[0]).read_text() == probe[1]
    except OSError:
        return False


def _collect(run: Path, shared_dir: str | None) -> tuple[dict, dict, list]:
    """The run directory's files: small ones as bytes, big ones compressed or (shared
    ``--out``) copied into place here."""
    files: dict[str, bytes] = {}
    packed: dict[str, bytes] = {}
    stayed: list[str] = []
    if not run.is_dir():
        return files, packed, stayed
    for p in sorted(run.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(run).as_posix()
        if p.name not in BIG_FILES:
            files[rel] = p.read_bytes()
        elif shared_dir is None:
            packed[rel] = zlib.compress(p.read_bytes(), 6)
        else:
            dest = Path(shared_dir) / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            part = dest.with_name(f".{dest.name}.{uuid.uuid4().hex[:8]}.part")
            shutil.copyfile(p, part)
            os.replace(part, dest)
            stayed.append(rel)
    return files, packed, stayed


# The function Dask is given: a trampoline to run_task, defined outside any importable
# module so that Dask (cloudpickle) ships it by value.  The scheduler unpickles every
# task, and this way it needs dask only, not smp; the workers import smp when it runs.
_TRAMPOLINE = ("def smp_run(spec):\n"
               "    from smp.tools.cluster import run_task\n"
               "    return run_task(spec)\n")


def _task_function() -> Callable[[dict], dict]:
    ns: dict = {"__name__": "smp_cluster_task"}       # no such module: pickled by value
    exec(_TRAMPOLINE, ns)
    return ns["smp_run"]


# ------------------------------------------------------------------ the pool (client side)

def _check_address(address: str) -> None:
    if address == "local":
        return
    proto, sep, rest = address.partition("://")
    host, colon, port = rest.rpartition(":")
    if not sep or not proto or not host or not colon or not port.isdigit():
        raise BadInput(f"--cluster {address}: expected tcp://HOST:PORT (a Dask scheduler) "
                       "or local")
    if proto == "tcp":                  # fail fast when nothing listens
        try:
            socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
        except OSError as e:
            why = e.strerror or str(e) or type(e).__name__
            raise BadInput(f"--cluster {address}: cannot reach the Dask scheduler: "
                           f"{why}") from None


class DaskPool:
    """Runs tasks on a Dask cluster, with RunPool's interface (module docstring)."""

    def __init__(self, address: str, progress: Any = None):
        try:
            import logging

            import distributed
        except ImportError:
            raise BadInput(f"--cluster {address}: needs dask distributed "
                           "(pip install 'smp[cluster]')") from None
        _check_address(address)
        # the pool reports what goes wrong itself, in one line each (distributed's own
        # configuration gives some of its loggers levels of their own)
        for name in ["distributed"] + [n for n in logging.root.manager.loggerDict
                                       if n.startswith("distributed.")]:
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self.address = address
        self.progress = progress
        self.interrupted = ""
        self.retried = 0                    # runs that needed more than one attempt
        self._cluster = None
        self._lock = threading.Lock()
        self._starts: dict[str, list[dict]] = {}     # key -> each attempt's start event
        self._ends: dict[str, int] = {}
        self._notes: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._labels: dict[str, str] = {}
        self._warned: set = set()
        self._errors: dict[str, int] = {}           # a task's error -> runs that had it
        self._ours: set[str] = set()                # keys this pool cancelled
        timeout = float(os.environ.get(TIMEOUT_ENV, CONNECT_TIMEOUT_S))
        try:
            if address == "local":
                n = max(1, os.cpu_count() or 1)
                self._cluster = distributed.LocalCluster(
                    n_workers=1, threads_per_worker=n, processes=False,
                    resources={"cpus": n}, dashboard_address=":0",
                    silence_logs=logging.ERROR)
                self.client = distributed.Client(self._cluster)
            else:
                self.client = distributed.Client(address, timeout=timeout)
        except (OSError, TimeoutError) as e:
            self.close()
            raise BadInput(f"--cluster {address}: cannot reach the Dask scheduler: "
                           f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") \
                from None
        self.client.subscribe_topic(TOPIC, self._on_event)

    # ---------------------------------------------------------------- events
    def _on_event(self, event: tuple) -> None:       # the client's event loop thread
        msg = event[1]
        if not isinstance(msg, dict) or "key" not in msg:
            return
        key = msg["key"]
        with self._lock:
            if msg.get("what") == "start":
                tries = self._starts.setdefault(key, [])
                tries.append({"worker": msg.get("worker", ""), "t": time.monotonic(),
                              "ended": False})
                if len(tries) > 1 and key in self._labels:
                    before = tries[-2]
                    how = "failed" if before["ended"] else "was lost with its worker"
                    self._notes.put(f"smp: cluster: {self._labels[key]}: attempt "
                                    f"{len(tries)} on {msg.get('worker')} (the attempt on "
                                    f"{before['worker']} {how})")
            elif msg.get("what") == "end":
                self._ends[key] = self._ends.get(key, 0) + 1
                tries = self._starts.get(key, [])
                if tries:
                    tries[min(len(tries), self._ends[key]) - 1]["ended"] = True

    def _say(self, line: str) -> None:
        if self.progress is not None:
            type(self.progress).write(line, file=sys.stderr)
        else:
            print(line, file=sys.stderr)

    def _flush_notes(self) -> None:
        while True:
            try:
                self._say(self._notes.get_nowait())
            except queue.Empty:
                return

    # ---------------------------------------------------------------- submitting
    def _workers(self) -> dict:
        try:
            try:
                info = self.client.scheduler_info(n_workers=-1)
            except TypeError:                              # older distributed
                info = self.client.scheduler_info()
        except Exception:  # noqa: BLE001 - no scheduler: no worker known to run anything
            return {}
        return dict(info.get("workers", {}))

    def _wait_for_workers(self) -> dict:
        told = False
        while not self.interrupted:
            ws = self._workers()
            if ws:
                return ws
            if getattr(self.client, "status", "running") in ("closing", "closed", "failed"):
                self.interrupted = self._why_cancelled()
                break
            if not told:
                self._say(f"smp: cluster: waiting for a Dask worker at {self.address}")
                told = True
            time.sleep(0.5)
        return {}

    def _resources(self, ncpu: int, workers: dict) -> dict | None:
        offers = [r["cpus"] for w in workers.values()
                  if isinstance(r := w.get("resources") or {}, dict) and "cpus" in r]
        if not offers:
            if "none" not in self._warned:
                self._warned.add("none")
                self._say("smp: cluster: no worker offers a 'cpus' resource, so each runs "
                          "as many runs as it has threads (start workers with "
                          "--resources cpus=N; see docs/cluster.md)")
            return None
        if ncpu > max(offers):
            if ncpu not in self._warned:
                self._warned.add(ncpu)
                self._say(f"smp: cluster: runs of {ncpu} CPUs, but no worker offers more "
                          f"than cpus={max(offers):g}: such a run has a worker to itself")
            return {"cpus": max(offers)}
        return {"cpus": ncpu}

    def _spec(self, t: Task, probe: list | None) -> dict:
        """The task's description for its worker: the ``smp run`` arguments, with the
        files they name shipped as text (a worker need not see the client's paths)."""
        args = list(t.args)
        inputs: dict[str, bytes] = {}
        at: dict[int, str] = {}

        def ship(i: int) -> None:
            spec = args[i]
            if not ("/" in spec or spec.endswith(".toml")) or not Path(spec).is_file():
                return                  # a name: the worker's checkout resolves it
            rel = f"{len(inputs)}/{Path(spec).name}"
            inputs[rel] = Path(spec).read_bytes()       # as is: the manifest hashes it
            at[i] = rel

        if len(args) > 1 and not args[1].startswith("-"):
            ship(1)
        out_index = -1
        for i, a in enumerate(args[:-1]):
            if a in _INPUT_OPTIONS:
                ship(i + 1)
            elif a == "--out":
                out_index = i + 1
        if out_index < 0:
            args += ["--out", ""]
            out_index = len(args) - 1
        return {"args": args, "inputs": inputs, "arg_inputs": at, "out_index": out_index,
                "run_dir": str(t.run_dir.resolve()), "probe": probe}

    def _probe(self, tasks: list[Task]) -> tuple[Path | None, list | None]:
        """A file workers can look for: if one sees it, the sweep's directory is on a
        filesystem it shares with us, at the same path."""
        if not tasks or os.environ.get(SHARED_ENV, "auto") == "no":
            return None, None
        parents = [t.run_dir.resolve().parent for t in tasks]
        for p in set(parents):
            p.mkdir(parents=True, exist_ok=True)
        token = uuid.uuid4().hex
        path = Path(os.path.commonpath(parents)) / f".smp-cluster-probe-{token[:12]}"
        try:
            path.write_text(token)
        except OSError:
            return None, None
        return path, [str(path), token]

    # ---------------------------------------------------------------- running
    def run(self, tasks: Iterable[Task],
            on_done: Callable[[Task, Finished], bool | None]) -> None:
        """Run every task on the cluster (``on_done`` returning False cancels the tasks
        that have not started; those running finish)."""
        tasks = list(tasks)
        if not tasks:
            return
        old = {s: signal.signal(s, self._stop) for s in (signal.SIGINT, signal.SIGTERM)}
        probe_path = None
        futures: dict[Any, Task] = {}
        try:
            workers = self._wait_for_workers()
            if self.interrupted:
                return
            probe_path, probe = self._probe(tasks)
            ncpus: dict[tuple, int] = {}
            fn = _task_function()
            for i, t in enumerate(tasks):
                key = f"smp-run-{t.run_dir.name}-{uuid.uuid4().hex[:8]}"
                self._labels[key] = str(t.run_dir)
                sig = _config_of(t.args)
                if sig not in ncpus:
                    ncpus[sig] = _ncpu(sig)
                f = self.client.submit(fn, self._spec(t, probe), key=key, pure=False,
                                       retries=RETRIES, priority=len(tasks) - i,
                                       resources=self._resources(ncpus[sig], workers))
                futures[f] = t
            pending = set(futures)
            draining = False
            while pending:
                self._flush_notes()
                if not self.interrupted and self._cancelled_by_cluster(pending):
                    self.interrupted = self._why_cancelled()
                if self.interrupted:
                    self._halt(pending, futures, on_done)
                    pending.clear()
                    break
                done = [f for f in pending if f.done()]
                for f in done:
                    pending.discard(f)
                    fin = self._finished(f, futures[f])
                    if fin is None:               # cancelled before it started
                        continue
                    if self.progress is not None:
                        self.progress.update(1)
                    if on_done(futures[f], fin) is False and not draining:
                        draining = True
                        self._drain(pending)
                if not done:
                    time.sleep(POLL_S)
            self._flush_notes()
            again = sum(n - 1 for n in self._errors.values())
            if again:
                self._say(f"smp: cluster: {again} more run(s) failed with the same error")
        finally:
            left = [f for f in futures if not f.done()]
            if left:                # an exception in on_done: no run outlives the sweep
                self._cancel(left)
            if probe_path is not None:
                probe_path.unlink(missing_ok=True)
            for s, h in old.items():
                signal.signal(s, h)

    def _stop(self, signum, frame) -> None:
        self.interrupted = signal.Signals(signum).name

    def _cancel(self, futures: list) -> None:
        self._ours.update(f.key for f in futures)
        try:
            self.client.cancel(futures)
        except Exception:  # noqa: BLE001 - no scheduler left to tell: nothing runs for us
            pass

    def _cancelled_by_cluster(self, pending: set) -> bool:
        """Whether a task was cancelled that this pool did not cancel: the client lost
        its scheduler (Dask then cancels every future), or someone cancelled it there."""
        return any(f.status == "cancelled" and f.key not in self._ours for f in pending)

    def _why_cancelled(self) -> str:
        if getattr(self.client, "status", "running") != "running":
            return f"the loss of the Dask scheduler at {self.address}"
        return f"a cancellation on the Dask scheduler at {self.address}"

    def _attempts(self, key: str) -> list[dict]:
        with self._lock:
            return list(self._starts.get(key, []))

    def _running(self, key: str, workers: dict | None = None) -> bool:
        """Whether an attempt of ``key`` is under way on a worker that still exists."""
        tries = self._attempts(key)
        if not tries or tries[-1]["ended"]:
            return False
        return workers is None or tries[-1]["worker"] in workers

    def _finished(self, f: Any, t: Task) -> Finished | None:
        if f.status == "cancelled":
            return None
        tries = self._attempts(f.key)
        retries, names = max(0, len(tries) - 1), [a["worker"] for a in tries]
        if retries:
            self.retried += 1
        if f.status == "error":
            e = f.exception()
            line = " ".join(f"{type(e).__name__}: {e}".split())
            self._errors[line] = self._errors.get(line, 0) + 1
            if self._errors[line] == 1:         # the same error of every run: say it once
                self._say(f"smp: cluster: {t.run_dir}: {line}")
            return Finished(Exit.INTERNAL, f"smp: cluster: {line}\n", 0.0, retries=retries,
                            workers=names)
        res = f.result()
        if res.get("cancelled"):
            return None
        _deliver(t.run_dir, res)
        return Finished(res["returncode"], res["stderr"], res["wall_s"], retries=retries,
                        workers=names or [res.get("worker", "")])

    def _drain(self, pending: set) -> None:
        """Start no more: cancel what has not started; what runs finishes."""
        waiting = [f for f in pending if not self._attempts(f.key)]
        if waiting:
            self._cancel(waiting)

    def _halt(self, pending: set, futures: dict, on_done: Callable) -> None:
        """Ctrl-C or SIGTERM: cancel every outstanding task, wait until the runs that had
        started have stopped (each task stops its ``smp run``), report them stopped."""
        finished = [f for f in pending if f.done() and f.status != "cancelled"]
        for f in finished:                  # already back: a result like any other
            fin = self._finished(f, futures[f])
            if fin is not None:
                on_done(futures[f], fin)
        rest = [f for f in pending if f not in finished]
        t_cancel = time.monotonic()
        self._cancel(rest)
        started = [f for f in rest if self._attempts(f.key)]
        deadline = time.monotonic() + GRACE_S + 5 * TASK_POLL_S
        while time.monotonic() < deadline:
            workers = self._workers()
            if not any(self._running(f.key, workers) for f in started):
                break
            time.sleep(POLL_S)
        self._flush_notes()
        for f in started:
            tries = self._attempts(f.key)
            wall = t_cancel - tries[-1]["t"] if tries else 0.0
            on_done(futures[f], Finished(Exit.INTERRUPTED, "smp: stopped\n", wall,
                                         stopped=True, retries=max(0, len(tries) - 1),
                                         workers=[a["worker"] for a in tries]))

    def close(self) -> None:
        for x in (getattr(self, "client", None), self._cluster):
            if x is not None:
                try:
                    x.close()
                except Exception:  # noqa: BLE001 - closing a broken connection
                    pass


def _config_of(args: list[str]) -> tuple:
    """What decides a run's CPU count: script, machine, kernel, overrides, --cpus."""
    script = args[1] if len(args) > 1 and not args[1].startswith("-") else None
    machine = kernel = cpus = None
    ov: list[str] = []
    for i, a in enumerate(args[:-1]):
        v = args[i + 1]
        if a in ("-m", "--machine"):
            machine = v
        elif a in ("-k", "--kernel"):
            kernel = v
        elif a == "-o":
            ov.append(v)
        elif a == "--cpus":
            cpus = v
    return script, machine, kernel, tuple(ov), cpus


def _ncpu(sig: tuple) -> int:
    """The run's simulated CPUs, from its resolved machine profile (1 if the run's input
    is bad: the run itself reports that)."""
    from smp.run import configure
    from smp.workload.script import load_script

    script, machine, kernel, ov, cpus = sig
    try:
        cfg = configure(load_script(script), machine, kernel, list(ov),
                        int(cpus) if cpus is not None else None)
        return int(cfg.machine.ncpu)
    except (BadInput, ValueError):
        return 1


def _deliver(d: Path, res: dict) -> None:
    """Write a run's files, as the worker returned them, where a local run would have."""
    if not res.get("has_dir"):
        return
    items = [(rel, data) for rel, data in res["files"].items()]
    items += [(rel, zlib.decompress(data)) for rel, data in res["packed"].items()]
    path = d
    try:
        d.mkdir(parents=True, exist_ok=True)
        for rel, data in items:
            if Path(rel).is_absolute() or ".." in Path(rel).parts:
                continue
            path = d / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        for stray in d.glob(".*.part"):                 # a worker that died copying
            stray.unlink(missing_ok=True)
    except OSError as e:
        raise WriteFailed(path, e) from None
