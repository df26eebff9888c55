"""Nothing lost, nothing silent: run folders, non-finite runs, state files, configs and signals.

Each case runs through the real CLI (``rl_statetune.cli.main``) or a real process where a process is stopped.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from rl_statetune.cli import main as cli_main
from rl_statetune.state import StateFileError, load_state, save_state

REPO = Path(__file__).resolve().parents[1]


def write_cfg(path: Path, ckpt, out: Path, steps: int = 2, **extra) -> Path:
    cfg = {"model": {"path": str(ckpt)}, "data": {"train_size": 16, "eval_size": 4},
           "train": {"steps": steps, "batch_size": 4, "ckpt_every": 1, "out_dir": str(out), "eval": False},
           "optim": {"lr": 0.3, "lr_final": 0.03}}
    for k, v in extra.items():
        cfg[k] = {**cfg.get(k, {}), **v}
    path.write_text(yaml.safe_dump(cfg))
    return path


def one_line_error(capsys, *fragments: str) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err, err
    lines = [x for x in err.splitlines() if "error:" in x]
    assert lines, err
    for f in fragments:
        assert f in err, (f, err)
    return err


def test_a_run_is_never_overwritten_without_resume_or_overwrite(tiny_world_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = write_cfg(tmp_path / "c.yaml", tiny_world_ckpt, out)
    assert cli_main(["tune", "--config", str(cfg), "--no-progress"]) == 0
    state = (out / "state.pth").read_bytes()
    result = (out / "result.json").read_text()
    metrics = (out / "metrics.jsonl").read_text()
    capsys.readouterr()

    assert cli_main(["tune", "--config", str(cfg), "--no-progress", "--set", "train.steps=3"]) == 2
    one_line_error(capsys, str(out), "--resume", "--overwrite")
    assert (out / "state.pth").read_bytes() == state and (out / "metrics.jsonl").read_text() == metrics

    # a finished run resumed: nothing rewritten, its stored result returned, and not "state written" (24.12)
    assert cli_main(["tune", "--config", str(cfg), "--no-progress", "--resume"]) == 0
    said = capsys.readouterr().out
    assert (out / "result.json").read_text() == result and "nan" not in said.lower()
    assert "state written" not in said and "nothing was written" in said

    # resume with another config names the key
    assert cli_main(["tune", "--config", str(cfg), "--no-progress", "--resume", "--set", "train.steps=5"]) == 2
    one_line_error(capsys, "train.steps: 2 -> 5")

    assert cli_main(["tune", "--config", str(cfg), "--no-progress", "--overwrite", "--set", "train.steps=3"]) == 0
    assert json.loads((out / "result.json").read_text())["steps"] == 3
    assert len((out / "metrics.jsonl").read_text().splitlines()) < len(metrics.splitlines()) + 3


def test_diverged_runs_stop_and_write_no_state(tiny_world_ckpt, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = write_cfg(tmp_path / "c.yaml", tiny_world_ckpt, out, steps=4)
    assert cli_main(["tune", "--config", str(cfg), "--no-progress", "--set", "optim.lr=1e20"]) == 2
    one_line_error(capsys, "not finite", "optim.lr")
    assert not (out / "state.pth").exists() and not (out / "state.safetensors").exists()
    if (out / "checkpoint.pt").exists():  # the checkpoints written before the bad step hold finite values
        ck = torch.load(out / "checkpoint.pt", weights_only=False)
        assert all(torch.isfinite(v).all() for v in ck["tunable"].values())

    # skip mode (issue 24.5): step 1 leaves a finite but diverged state (|S0| ~ 1e20), steps 2-4 are skipped; more
    # than train.max_skipped_share (0.5) of the steps skipped: no state, one line with the count
    assert cli_main(["tune", "--config", str(cfg), "--no-progress", "--overwrite", "--set", "optim.lr=1e20",
                     "--set", "train.on_nonfinite=skip"]) == 2
    one_line_error(capsys, "3 of 4 steps were skipped", "train.max_skipped_share 0.5")
    assert not (out / "state.pth").exists() and not (out / "state.safetensors").exists()
    # allowed to skip them all, the diverged state is still refused (issue 24.2): its logits are NaN
    assert cli_main(["tune", "--config", str(cfg), "--no-progress", "--overwrite", "--set", "optim.lr=1e20",
                     "--set", "train.on_nonfinite=skip", "--set", "train.max_skipped_share=1"]) == 2
    one_line_error(capsys, "logits NaN or inf", "optim.lr", str(out / "state.pth"))
    assert not (out / "state.pth").exists() and not (out / "state.safetensors").exists()
    # a skipped step within the share: written, and the count is said
    real = torch.nn.utils.clip_grad_norm_
    calls = {"n": 0}

    def nan_on_step_2(params, max_norm):
        calls["n"] += 1
        return torch.tensor(float("nan")) if calls["n"] == 2 else real(params, max_norm)

    import rl_statetune.run.setup as setup
    mp = pytest.MonkeyPatch()
    mp.setattr(setup.torch.nn.utils, "clip_grad_norm_", nan_on_step_2)
    try:
        assert cli_main(["tune", "--config", str(cfg), "--no-progress", "--overwrite",
                         "--set", "train.on_nonfinite=skip"]) == 0
    finally:
        mp.undo()
    assert json.loads((out / "result.json").read_text())["skipped_steps"] == 1
    assert "1 of 4 steps skipped" in capsys.readouterr().out
    assert torch.isfinite(load_state(out / "state.pth").time_state).all()


def test_a_diverged_finite_state_is_an_error_not_an_empty_answer(tiny_world_ckpt, tmp_path, capsys):
    """Issue 24.2: |S0| ~ 1e20 is finite but every logit is NaN; generate, held-out checks name it and stop."""
    from rl_statetune.checkpoint import load_model
    from rl_statetune.data import Example
    from rl_statetune.lm import NonFiniteLogits
    from rl_statetune.run.heldout import held_out
    from rl_statetune.tokenizer import WorldTokenizer
    from rl_statetune.upscale import load_tunable

    big = save_state(tmp_path / "big.pth", torch.full((2, 2, 8, 8), 1e20))
    assert cli_main(["generate", "--model", str(tiny_world_ckpt), "--state", str(big), "--prompt", "Q: hi\nA:"]) == 2
    one_line_error(capsys, "big.pth", "NaN or inf")
    model = load_model(str(tiny_world_ckpt))
    with pytest.raises(NonFiniteLogits, match="NaN or inf"):
        held_out(model, WorldTokenizer(), [Example("Q: 1 + 1?\nA:", " 2", "2")], load_tunable(big, model.config))


def test_non_finite_state_files_are_never_written_nor_loaded(tmp_path, tiny_world_ckpt, capsys):
    bad = torch.zeros(2, 2, 8, 8)
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(StateFileError, match="NaN or inf"):
        save_state(tmp_path / "s.pth", bad)
    assert not (tmp_path / "s.pth").exists()
    torch.save({f"blocks.{i}.att.time_state": bad[i] for i in range(2)}, tmp_path / "nan.pth")
    with pytest.raises(StateFileError, match=r"blocks\.1\.att\.time_state.*NaN"):
        load_state(tmp_path / "nan.pth")
    assert cli_main(["generate", "--model", str(tiny_world_ckpt), "--state", str(tmp_path / "nan.pth"),
                     "--prompt", "Q: hi\nA:"]) == 2
    one_line_error(capsys, "nan.pth", "NaN")


def test_corrupt_state_files_name_the_file(tmp_path, tiny_world_ckpt, capsys):
    good = save_state(tmp_path / "good.pth", torch.zeros(2, 2, 8, 8))
    (tmp_path / "trunc.pth").write_bytes(good.read_bytes()[:100])
    (tmp_path / "junk.pth").write_bytes(os.urandom(4096))
    st = save_state(tmp_path / "good.safetensors", torch.zeros(2, 2, 8, 8))
    (tmp_path / "bad.safetensors").write_bytes(st.read_bytes()[:50])
    for name in ("trunc.pth", "junk.pth", "bad.safetensors"):
        with pytest.raises(StateFileError, match=name.replace(".", r"\.")) as e:
            load_state(tmp_path / name)
        assert "weights_only" not in str(e.value)
        assert cli_main(["generate", "--model", str(tiny_world_ckpt), "--state", str(tmp_path / name),
                         "--prompt", "x"]) == 2
        one_line_error(capsys, name)


@pytest.mark.parametrize("case, args, fragment", [
    ("yaml", ["--config", "{bad_yaml}"], "not valid YAML"),
    ("dir", ["--config", "{tmp}"], "is not a file"),
    ("nested", ["--config", "{cfg}", "--set", "train.steps.x=5"], "train.steps is a value"),
    ("bracket", ["--config", "{cfg}", "--set", "train.steps=[1"], "not a valid YAML value"),
    ("empty-key", ["--config", "{cfg}", "--set", "=5"], "section.key=value"),
    ("unknown", ["--config", "{cfg}", "--set", "train.stepz=1"], "train.stepz"),
    ("missing", ["--config", "{tmp}/nope.yaml"], "no config file"),
    ("empty", ["--config", "{tmp}/empty.yaml"], "holds no settings"),      # issue 24.6
    ("comments", ["--config", "{tmp}/comments.yaml"], "holds no settings"),
])
def test_config_errors_are_one_line(tiny_world_ckpt, tmp_path, capsys, case, args, fragment):
    (tmp_path / "bad.yaml").write_text("train:\n  steps: [1\n")
    (tmp_path / "empty.yaml").write_text("")
    (tmp_path / "comments.yaml").write_text("# nothing here yet\n")
    cfg = write_cfg(tmp_path / "c.yaml", tiny_world_ckpt, tmp_path / "run")
    args = [a.format(bad_yaml=tmp_path / "bad.yaml", tmp=tmp_path, cfg=cfg) for a in args]
    assert cli_main(["tune", *args, "--no-progress"]) == 2
    one_line_error(capsys, fragment)


def test_unwritable_out_dir_and_bad_temperature(tiny_world_ckpt, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cfg = write_cfg(tmp_path / "c.yaml", tiny_world_ckpt, blocker / "run")
    assert cli_main(["tune", "--config", str(cfg), "--no-progress"]) == 2
    one_line_error(capsys, "cannot create run folder", "train.out_dir")
    for t in ("nan", "-1", "x"):
        with pytest.raises(SystemExit) as e:
            cli_main(["generate", "--model", str(tiny_world_ckpt), "--prompt", "x", "--temperature", t])
        assert e.value.code == 2
        assert "--temperature" in capsys.readouterr().err


def test_stop_strings_keep_non_ascii(tiny_world_ckpt):
    from rl_statetune.cli import _escapes

    assert _escapes("答案\\n") == "答案\n" and _escapes("é") == "é"


def test_stale_temp_files_are_cleaned_and_states_are_world_readable(tiny_world_ckpt, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".checkpoint.pt.tmp12345").write_bytes(b"half")
    cfg = write_cfg(tmp_path / "c.yaml", tiny_world_ckpt, out, steps=1)
    old = os.umask(0o022)
    try:
        assert cli_main(["tune", "--config", str(cfg), "--no-progress"]) == 0
    finally:
        os.umask(old)
    assert not list(out.glob(".*.tmp*"))
    for f in ("state.pth", "state.safetensors", "checkpoint.pt"):
        assert (out / f).stat().st_mode & 0o777 == 0o644, f


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signals_checkpoint_the_current_step_and_resume(tiny_world_ckpt, tmp_path, sig, code):
    """A real `tune` process, signalled mid-run: it writes a checkpoint at the end of the current step, exits
    143 / 130 with one line, and --resume finishes with the state of an uninterrupted run."""
    steps = 24
    cfg = write_cfg(tmp_path / "c.yaml", tiny_world_ckpt, tmp_path / "run", steps=steps,
                    train={"ckpt_every": 10_000, "log_every": 1})
    cmd = [sys.executable, "-m", "rl_statetune.cli", "tune", "--config", str(cfg), "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.time() + 120
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 2) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err[-2000:]
    assert "Traceback" not in err and "--resume" in err
    ck = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert 2 <= ck["step"] < steps
    assert not (tmp_path / "run" / "state.pth").exists()

    assert cli_main(["tune", "--config", str(cfg), "--no-progress", "--resume"]) == 0
    whole = write_cfg(tmp_path / "w.yaml", tiny_world_ckpt, tmp_path / "whole", steps=steps,
                      train={"ckpt_every": 10_000, "log_every": 1})
    assert cli_main(["tune", "--config", str(whole), "--no-progress"]) == 0
    assert torch.equal(load_state(tmp_path / "run" / "state.pth").time_state,
                       load_state(tmp_path / "whole" / "state.pth").time_state)


def test_a_full_disk_ends_in_one_line_naming_the_file(tiny_world_ckpt, tmp_path, capsys):
    """A real 1 MiB tmpfs, filled up: the run stops with one line, no traceback (needs root for mount)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root; the full-disk case was not run")
    try:
        (mnt / "run").mkdir()
        fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)
        try:
            while True:
                os.write(fd, b"x" * 4096)
        except OSError:
            pass
        finally:
            os.close(fd)
        cfg = write_cfg(tmp_path / "c.yaml", tiny_world_ckpt, mnt / "run", steps=2)
        code = cli_main(["tune", "--config", str(cfg), "--no-progress"])
        assert code == 2
        err = one_line_error(capsys, str(mnt / "run"))
        assert "no space left" in err.lower()
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_sigterm_during_rl_checkpoints_and_resumes(tiny_world_ckpt, tmp_path):
    out = tmp_path / "rl"
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"path": str(tiny_world_ckpt)}, "data": {"train_size": 8, "eval_size": 4},
        "guide": {"task_rationales": True}, "reward": {"kind": "match", "samples": 2},
        "train": {"steps": 30, "batch_size": 2, "log_every": 1, "ckpt_every": 1000, "out_dir": str(out),
                  "eval": False}}))
    proc = subprocess.Popen([sys.executable, "-m", "rl_statetune.cli", "rl", "--config", str(cfg), "--no-progress"],
                            cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    metrics = out / "metrics.jsonl"
    deadline = time.time() + 120
    while (not metrics.exists() or len(metrics.read_text().splitlines()) < 2) and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "--resume" in err
    step = torch.load(out / "checkpoint.pt", weights_only=False)["step"]
    assert 2 <= step < 30
    assert cli_main(["rl", "--config", str(cfg), "--no-progress", "--resume"]) == 0
    assert json.loads((out / "result.json").read_text())["steps"] == 30


def test_a_run_folder_is_locked_while_a_run_uses_it(tiny_world_ckpt, tmp_path, capsys):
    """Issue 24.1: a real `tune` process holds its folder; a second run into it (even with --overwrite) is refused
    in one line naming the holder's PID and leaves the live run's files alone; once the holder is killed (SIGKILL:
    no clean-up) its lock is taken over."""
    out = tmp_path / "run"
    cfg = write_cfg(tmp_path / "c.yaml", tiny_world_ckpt, out, steps=100_000, train={"log_every": 1})
    proc = subprocess.Popen([sys.executable, "-m", "rl_statetune.cli", "tune", "--config", str(cfg),
                             "--no-progress"], cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        metrics = out / "metrics.jsonl"
        deadline = time.time() + 120
        while (not metrics.exists() or not metrics.read_text()) and time.time() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None
        assert cli_main(["tune", "--config", str(cfg), "--no-progress", "--overwrite",
                         "--set", "train.steps=2"]) == 2
        one_line_error(capsys, f"PID {proc.pid}", str(out))
        assert proc.poll() is None and metrics.exists() and (out / "checkpoint.pt").exists()
        steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
        assert steps == list(range(1, len(steps) + 1))   # one run's steps, not two interleaved
    finally:
        proc.kill()
        proc.wait()
    assert cli_main(["tune", "--config", str(cfg), "--no-progress", "--overwrite", "--set", "train.steps=2"]) == 0
    assert json.loads((out / "result.json").read_text())["steps"] == 2
    # released on exit: the same process can open the folder again
    assert cli_main(["tune", "--config", str(cfg), "--no-progress", "--resume", "--set", "train.steps=2"]) == 0


def test_rl_with_a_huge_lr_names_optim_lr_not_a_multinomial_traceback(tmp_path, capsys):
    """Issue 24.4: optim.lr=1e20 leaves a finite, diverged state after step 1; step 2's policy is NaN. One line
    naming optim.lr, before torch.multinomial; no state written."""
    out = tmp_path / "rl"
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"path": "embedded"}, "data": {"train_size": 8, "eval_size": 4},
        "guide": {"task_rationales": True}, "reward": {"kind": "match", "samples": 4},
        "optim": {"lr": 1e20},
        "train": {"steps": 3, "batch_size": 2, "log_every": 1, "out_dir": str(out), "eval": False}}))
    assert cli_main(["rl", "--config", str(cfg), "--no-progress"]) == 2
    one_line_error(capsys, "step 2", "policy is not finite", "optim.lr 1e+20")
    assert not (out / "state.pth").exists()


def test_an_upscaled_runs_files_say_what_they_carry(tiny_world_ckpt, tmp_path, capsys):
    """Issue 24.11: state.pth of an upscaled run holds S0 only; the summary and the log say so and name the file
    carrying the whole state."""
    out = tmp_path / "run"
    cfg = write_cfg(tmp_path / "c.yaml", tiny_world_ckpt, out, steps=1,
                    upscale={"enabled": True, "features": 8, "support_texts": 4})
    assert cli_main(["tune", "--config", str(cfg), "--no-progress"]) == 0
    said = capsys.readouterr().out
    assert f"{out}/state.pth holds S0 ONLY" in said and f"{out}/state.safetensors carries the whole upscaled" in said
    plain = write_cfg(tmp_path / "p.yaml", tiny_world_ckpt, tmp_path / "plain", steps=1)
    assert cli_main(["tune", "--config", str(plain), "--no-progress"]) == 0
    assert "S0 ONLY" not in capsys.readouterr().out


def test_generate_refuses_max_new_tokens_0_before_loading_the_model(tmp_path, capsys, monkeypatch):
    """Issue 24.12: checked by the parser, the model is never loaded."""
    import rl_statetune.checkpoint

    def no_load(*a, **k):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(rl_statetune.checkpoint, "load_model", no_load)
    for bad in ("0", "-3", "x"):
        with pytest.raises(SystemExit) as e:
            cli_main(["generate", "--model", "embedded", "--prompt", "x", "--max-new-tokens", bad])
        assert e.value.code == 2 and "--max-new-tokens" in capsys.readouterr().err


def test_resume_trims_the_metrics_after_the_checkpoint(tiny_world_ckpt, tmp_path, capsys, monkeypatch):
    """Issue 24.10: a crash after step 5 with the checkpoint at step 3 logged steps 4-5, which --resume logs again;
    the log must hold every step once."""
    import rl_statetune.trainer as trainer

    out = tmp_path / "run"
    cfg = write_cfg(tmp_path / "c.yaml", tiny_world_ckpt, out, steps=8, train={"ckpt_every": 3, "log_every": 1})
    real, calls = trainer.target_loss, {"n": 0}

    def crash_in_step_6(*a, **k):
        calls["n"] += 1
        if calls["n"] == 6:
            raise KeyboardInterrupt   # a second Ctrl-C: stops at once, no checkpoint
        return real(*a, **k)

    monkeypatch.setattr(trainer, "target_loss", crash_in_step_6)
    assert cli_main(["tune", "--config", str(cfg), "--no-progress"]) == 130
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5] and torch.load(out / "checkpoint.pt", weights_only=False)["step"] == 3
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "lo')   # a line the crash cut short
    monkeypatch.setattr(trainer, "target_loss", real)
    assert cli_main(["tune", "--config", str(cfg), "--no-progress", "--resume"]) == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 9)), steps


@pytest.mark.parametrize("model", ["{tmp}/models/task-guide", "models/no-such-guide", "./guide/"])
def test_a_missing_guide_model_folder_is_named(tmp_path, capsys, monkeypatch, model):
    """Issue 24.9: transformers said "Repo id must be in the form 'repo_name' or 'namespace/repo_name'"."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    model = model.format(tmp=tmp_path)
    cfg = tmp_path / "rl.yaml"
    cfg.write_text(yaml.safe_dump({
        "model": {"path": "embedded"}, "data": {"train_size": 4, "eval_size": 2},
        "guide": {"inline": {"backend": "transformers", "options": {"model": model}}},
        "train": {"steps": 1, "batch_size": 2, "out_dir": str(tmp_path / "rl"), "eval": False}}))
    assert cli_main(["rl", "--config", str(cfg), "--no-progress"]) == 2
    err = one_line_error(capsys, f"no model folder at {model}", "does not exist")
    assert "Repo id" not in err
