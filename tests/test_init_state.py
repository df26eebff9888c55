"""``train.init_state``: a tune or rl run starts its tunables from a state file (supervised tuning, then RL).

* tune -> tune and tune -> rl: with an lr too small to move anything, the second run's state equals the first's
  to float32 rounding, and its held-out "before" is the first run's "after" (the starting state's accuracy, not
  the frozen model's). Starting from zero instead (the option ignored in ``make_tunable``) fails both.
* An upscaled state carries S~0, R and its feature bases through.
* A missing file or a plain / upscaled mismatch with ``upscale.enabled`` ends the command in one line.
"""

from __future__ import annotations

import pytest
import torch

from rl_statetune.cli import main as cli_main
from rl_statetune.config import TuneConfig
from rl_statetune.rl.config import RLConfig
from rl_statetune.rl.driver import run_rl
from rl_statetune.state import load_state
from rl_statetune.trainer import tune

DATA = {"target_format": "sentence", "train_size": 16, "eval_size": 12}
STILL = {"lr": 1e-12, "lr_final": 1e-12}     # a second run that cannot move the state


def first_run(tmp_path, **upscale) -> tuple[object, str]:
    cfg = TuneConfig.model_validate({
        "model": {"path": "embedded"}, "data": DATA, "upscale": upscale,
        "train": {"steps": 4, "batch_size": 8, "out_dir": str(tmp_path / "first"), "eval_max_new_tokens": 24}})
    return tune(cfg, progress=False), str(tmp_path / "first" / "state.safetensors")


def test_tune_then_tune_and_rl_start_from_the_state(tmp_path):
    first, path = first_run(tmp_path)
    assert first.acc_after > first.acc_before          # the state changed what the model answers
    start = load_state(path).time_state
    second = tune(TuneConfig.model_validate({
        "model": {"path": "embedded"}, "data": DATA, "optim": STILL,
        "train": {"steps": 1, "batch_size": 8, "out_dir": str(tmp_path / "second"), "eval_max_new_tokens": 24,
                  "init_state": path}}), progress=False)
    assert second.acc_before == first.acc_after
    torch.testing.assert_close(load_state(tmp_path / "second" / "state.safetensors").time_state, start)
    rl = run_rl(RLConfig.model_validate({
        "model": {"path": "embedded"}, "data": DATA, "optim": STILL,
        "reward": {"terms": {"verifier": 1.0}, "samples": 2, "max_new_tokens": 16},
        "train": {"steps": 1, "batch_size": 4, "out_dir": str(tmp_path / "rl"), "eval_max_new_tokens": 24,
                  "init_state": path}}), progress=False)
    assert rl.acc_before == first.acc_after
    torch.testing.assert_close(load_state(tmp_path / "rl" / "state.safetensors").time_state, start)


def test_an_upscaled_state_carries_its_lifted_state_and_bases(tmp_path):
    _, path = first_run(tmp_path, enabled=True, features=16)
    tune(TuneConfig.model_validate({
        "model": {"path": "embedded"}, "data": DATA, "optim": STILL,
        "upscale": {"enabled": True, "features": 16, "r_lr": 1e-12},
        "train": {"steps": 1, "batch_size": 8, "out_dir": str(tmp_path / "second"), "eval": False,
                  "init_state": path}}), progress=False)
    a, b = load_state(path), load_state(tmp_path / "second" / "state.safetensors")
    assert any(k.endswith(".state") and v.abs().max() > 0 for k, v in a.extras.items())
    for k, v in a.extras.items():
        torch.testing.assert_close(b.extras[k], v, msg=k)


@pytest.mark.parametrize("upscaled_run, message", [
    (None, "train.init_state: no state file at"),
    (False, "holds a plain state but upscale.enabled is true; set it to false"),
])
def test_a_missing_or_mismatched_start_is_one_line(tmp_path, capsys, upscaled_run, message):
    path = str(tmp_path / "nothing.safetensors")
    if upscaled_run is not None:
        _, path = first_run(tmp_path)
    assert cli_main(["tune", "--config", "configs/quickstart.yaml", "--set", "model.path=embedded",
                     "--set", f"train.init_state={path}",
                     "--set", "upscale.enabled=true", "--set", f"train.out_dir={tmp_path / 'out'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def test_a_warm_start_that_keeps_learning_R_says_so(tmp_path, caplog):
    """R's lr (upscale.r_lr) is its own, not scaled by optim.lr: a warm start from an upscaled state with R still
    learning (by gradient or by DBP) moves every entry of R at the first step; the run says so in one warning."""
    _, path = first_run(tmp_path, enabled=True, features=16)

    def second(name, **kw):
        caplog.clear()
        tune(TuneConfig.model_validate({
            "model": {"path": "embedded"}, "data": DATA, "optim": STILL, **kw,
            "train": {"steps": 1, "batch_size": 8, "out_dir": str(tmp_path / name), "eval": False,
                      "init_state": path}}), progress=False)
        return [r.getMessage() for r in caplog.records if "R keeps learning" in r.getMessage()]

    (said,) = second("r", upscale={"enabled": True, "features": 16})
    assert "upscale.r_lr=0.01" in said and "upscale.train_r: false" in said and "DBP" not in said
    (said,) = second("dbp", upscale={"enabled": True, "features": 16, "train_r": False}, dbp={"enabled": True})
    assert "by DBP" in said and "upscale.r_lr=" not in said
    assert second("kept", upscale={"enabled": True, "features": 16, "train_r": False}) == []
