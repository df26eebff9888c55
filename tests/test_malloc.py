"""``rl_statetune.malloc.keep_freed_memory``: freed tensors' pages are reused, not faulted in again.

Each case runs in a fresh process (mallopt is process-wide): rounds of allocating, filling and freeing a 64 MiB
tensor, the page faults counted over the last 10 of 20. With glibc's defaults every round maps fresh pages (16,384
faults a round); with the thresholds raised the pages stay in the heap, and after the first few rounds none fault.
And the CLI and each Ray learner call it.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

ROUNDS = """
import resource, torch
from rl_statetune.malloc import keep_freed_memory
kept = keep_freed_memory()
for i in range(20):
    if i == 10:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.empty(16 * 2**20).fill_(1.0)    # 64 MiB of float32
    del x
print(kept, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def faults(setting: str) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env["RL_STATETUNE_MALLOPT"] = setting
    out = subprocess.run([sys.executable, "-c", ROUNDS], env=env, capture_output=True, text=True, check=True)
    kept, n = out.stdout.split()
    return kept == "True", int(n)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt: Linux with glibc only")
def test_freed_pages_are_reused():
    kept, with_setting = faults("1")
    off, without = faults("0")
    assert kept and not off
    assert without > 9 * 16_384, without               # every round faulted its 64 MiB in again
    assert with_setting < 16_384, (with_setting, without)   # not one round's worth


def test_the_cli_and_each_ray_learner_set_it(monkeypatch, tmp_path):
    """The setting is process-wide, so every process that runs steps sets it itself: ``rl-statetune`` at its start
    (before the command, which here fails on a missing config), and each Ray learner in its constructor (its own
    process: the CLI's call does not reach it). Fails with either call dropped."""
    from rl_statetune.cli import main
    from rl_statetune.rl.config import RLConfig
    from rl_statetune.rl.workers import LearnerWorker

    calls = []
    monkeypatch.setattr("rl_statetune.malloc.keep_freed_memory", lambda: calls.append("set") or True)
    assert main(["tune", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert calls == ["set"]
    cfg = RLConfig.model_validate({"model": {"path": "embedded"}, "reward": {"terms": {"verifier": 1.0}},
                                   "train": {"out_dir": str(tmp_path / "run")}})
    LearnerWorker(cfg.model_dump(mode="json"), rank=0, world_size=1, queue=None)
    assert calls == ["set", "set"]
