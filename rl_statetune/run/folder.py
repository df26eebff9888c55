"""A run folder (``train.out_dir``) from start to finish: nothing in it is lost or silently replaced.

* One run at a time: a run holds ``.run.lock`` (``flock``, with its PID inside) from ``open`` to ``close`` (the OS
  drops it when the process dies, so the lock of a killed run is taken over); a second run is refused, naming the
  holder's PID.
* A folder that already holds a run is only continued with ``resume`` or replaced with ``overwrite``.
* ``resume`` refuses a checkpoint written with another configuration and names the keys that differ.
* A finished run is never rewritten: resuming it returns its stored result.
* Temp files of interrupted atomic writes (``.NAME.tmpPID``) are removed when a run starts.
* SIGINT / SIGTERM during the loop ask it to stop after the current step, with a checkpoint
  (:func:`stop_on_signals`, :class:`Interrupted`).
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import math
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from rl_statetune.atomic import WriteError, atomic_torch_save, atomic_write

log = logging.getLogger("rl_statetune.run")

CHECKPOINT, METRICS, RESULT, LOCK = "checkpoint.pt", "metrics.jsonl", "result.json", ".run.lock"
STATE_FILES = ("state.pth", "state.safetensors")
RUN_FILES = (CHECKPOINT, METRICS, *STATE_FILES, RESULT)


class RunError(ValueError):
    """The run folder cannot be used as asked (exists, no checkpoint, other config, not writable)."""


class Interrupted(Exception):
    """SIGINT / SIGTERM stopped the run after a step; its checkpoint was written."""

    def __init__(self, signum: int, step: int, out: Path):
        self.signum, self.step, self.out = signum, step, out
        name = signal.Signals(signum).name
        super().__init__(f"{name} at step {step}: checkpoint written to {out / CHECKPOINT}; "
                         "continue with --resume")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out |= flatten(v, f"{prefix}.{k}" if prefix else str(k))
    return out


def config_diff(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every leaf that differs between two nested config mappings."""
    a, b = flatten(old), flatten(new)
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in sorted(a.keys() | b.keys())
            if a.get(k, "<unset>") != b.get(k, "<unset>")]


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    return v


class MetricsLog:
    """``metrics.jsonl``: one JSON line per logged step, flushed at once; use as a context manager."""

    def __init__(self, path: Path):
        self.path = path
        self.f = open(path, "a")  # noqa: SIM115 - closed by __exit__ / close

    def write(self, rec: dict) -> None:
        rec = {k: round(v, 6) if isinstance(v, float) else v for k, v in rec.items()}
        try:
            self.f.write(json.dumps(_json_safe(rec)) + "\n")
            self.f.flush()
        except OSError as e:
            raise WriteError(e.errno, f"cannot write {self.path}: {e.strerror}") from None

    def close(self) -> None:
        try:
            self.f.close()
        except OSError:  # the disk filled up: the error was raised by write already
            pass

    def __enter__(self) -> "MetricsLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RunLock:
    """An exclusive ``flock`` on ``FOLDER/.run.lock`` holding the owner's PID (for the message of the next run)."""

    def __init__(self, folder: Path):
        self.path = folder / LOCK
        self.fd: int | None = None

    def acquire(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise RunError(f"cannot create {self.path}: {e.strerror}; choose another train.out_dir") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunError(f"{self.path.parent} is in use by another run (PID {holder}, lock {self.path}); "
                               "wait for it to finish or stop it, or choose another train.out_dir") from None
            log.warning("cannot lock %s (%s): nothing stops a second run from using this folder at the same time",
                        self.path, e.strerror)
            return
        stale = os.pread(fd, 32, 0).decode(errors="replace").strip()
        if stale and stale != str(os.getpid()):
            log.info("taking over %s from PID %s, which no longer runs", self.path, stale)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError as e:
            os.close(fd)
            raise RunError(f"cannot write {self.path}: {e.strerror}; free some space or choose another "
                           "train.out_dir") from None
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)   # closing the descriptor drops the flock
            self.fd = None


class RunDir:
    """The output folder of one run, checked and prepared by :meth:`open`."""

    def __init__(self, path: str | Path, config: dict, resume: bool = False, overwrite: bool = False):
        if resume and overwrite:
            raise RunError("--resume and --overwrite exclude each other: continue the run, or start over")
        self.path, self.config, self.resume, self.overwrite = Path(path), config, resume, overwrite
        self.saved: dict | None = None   # the checkpoint a resumed run continues from (read, checked by open)
        self.lock = RunLock(self.path)

    def close(self) -> None:
        """Release the folder's lock (call when the run ends, however it ends)."""
        self.lock.release()

    def open(self) -> dict | None:
        """Create / check / lock the folder (with ``resume``, read and check the checkpoint into ``saved``). Returns
        the stored result when resuming a run that already finished. Call :meth:`close` when the run ends."""
        p = self.path
        if p.exists() and not p.is_dir():
            raise RunError(f"train.out_dir {p} is a file, not a folder; choose another train.out_dir")
        try:
            p.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RunError(f"cannot create run folder {p}: {e.strerror}; choose another train.out_dir") from None
        if not os.access(p, os.W_OK | os.X_OK):
            raise RunError(f"run folder {p} is not writable; choose another train.out_dir or fix its permissions")
        self.lock.acquire()
        for tmp in p.glob(".*.tmp*"):
            log.warning("removing %s, left by an interrupted write", tmp)
            tmp.unlink(missing_ok=True)
        present = [f for f in RUN_FILES if (p / f).exists()]
        if self.resume:
            saved = self.saved = self.load_checkpoint()
            result = p / RESULT
            if result.exists() and saved["step"] >= self.config["train"]["steps"]:
                log.info("%s already finished (%d steps); nothing to do", p, saved["step"])
                return json.loads(result.read_text())
            self.trim_metrics(saved["step"])
            return None
        if present and not self.overwrite:
            raise RunError(f"{p} already holds a run ({', '.join(present)}); pass --resume to continue it or "
                           "--overwrite to replace it (or choose another train.out_dir)")
        for f in present:
            (p / f).unlink()
        if self.overwrite and present:
            log.warning("--overwrite: removed %s from %s", ", ".join(present), p)
        return None

    def trim_metrics(self, step: int) -> None:
        """Keep the metrics of steps up to the checkpoint's: the resumed run logs the later ones again."""
        path = self.path / METRICS
        if not path.exists():
            return
        keep, dropped = [], 0
        for line in path.read_text().splitlines():
            try:
                ok = json.loads(line)["step"] <= step
            except (ValueError, KeyError, TypeError):   # a line cut short by the crash
                ok = False
            if ok:
                keep.append(line)
            else:
                dropped += 1
        if dropped:
            log.info("%s: dropped %d lines after step %d (the resumed run logs those steps again)", path, dropped,
                     step)
            text = "".join(x + "\n" for x in keep)
            atomic_write(path, lambda tmp: tmp.write_text(text))

    # -- checkpoints -------------------------------------------------------------------------------------------
    def load_checkpoint(self) -> dict:
        path = self.path / CHECKPOINT
        if not path.exists():
            raise RunError(f"--resume: no checkpoint at {path}; start without --resume (with --overwrite if the "
                           "folder holds other files of a run)")
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as e:  # noqa: BLE001 - re-raised as one line
            raise RunError(f"--resume: cannot read {path} ({type(e).__name__}: {e}); start over with "
                           "--overwrite") from None
        diff = config_diff(saved.get("config", {}), self.config)
        if diff:
            raise RunError(f"--resume: {path} was written with another configuration ({'; '.join(diff)}); "
                           "resume with the same config, or start a new run (--overwrite or another out_dir)")
        return saved

    def save_checkpoint(self, step: int, payload: dict) -> Path:
        """Atomic: a crash mid-write leaves the previous checkpoint."""
        return atomic_torch_save({"step": step, "config": self.config, **payload}, self.path / CHECKPOINT)

    # -- results -----------------------------------------------------------------------------------------------
    def metrics(self) -> MetricsLog:
        return MetricsLog(self.path / METRICS)

    def write_result(self, result: dict) -> Path:
        result = {k: v for k, v in result.items() if k != "already_finished"}   # a flag for the caller only
        text = json.dumps(_json_safe(result), indent=2)
        return atomic_write(self.path / RESULT, lambda tmp: tmp.write_text(text))


class StopFlag:
    """Set by the first SIGINT / SIGTERM; a second SIGINT stops at once (KeyboardInterrupt)."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def stop_on_signals() -> Iterator[StopFlag]:
    """While inside, SIGINT / SIGTERM only set the flag (the loop checkpoints and raises :class:`Interrupted`).
    Outside the main thread (no signal handlers there) the flag is never set."""
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signum = signum
        log.warning("%s: stopping after this step (checkpoint first); press Ctrl-C again to stop at once",
                    signal.Signals(signum).name)

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)
