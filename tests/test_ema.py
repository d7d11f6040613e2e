"""`train.ema_decay`: the moving average of the trainable parameters that evaluations sample from."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from torch import nn

from rldiff.config import RecipeError, load_recipe
from rldiff.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from rldiff.train.ema import EMA_FILE, ParameterEMA
from rldiff.train.trainer import evaluate_checkpoint, train
from tests.fixtures import DUMMY_RECIPE

pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


def _config(*overrides: str):
    return load_recipe(DUMMY_RECIPE, ["logging.tensorboard=false", *overrides]).config


class _Net:
    """An 'algorithm' with one trainable vector and one frozen one."""

    def __init__(self) -> None:
        self.net = nn.Module()
        self.net.w = nn.Parameter(torch.zeros(3))
        self.net.frozen = nn.Parameter(torch.ones(2), requires_grad=False)
        self.opt = torch.optim.SGD([self.net.w], lr=0.1)

    def modules(self):
        return {"policy": self.net}

    def optimizers(self):
        return {"sgd": self.opt}


def test_the_average_follows_its_recurrence_and_is_swapped_in_and_out():
    algo = _Net()
    ema = ParameterEMA(algo.modules(), decay=0.5, start=2)
    assert list(ema.named) == ["policy.w"]  # frozen parameters are not averaged
    shadow, values = torch.zeros(3), [torch.full((3,), float(v)) for v in (1, 2, 4, 8, 16, 32)]
    for k, v in enumerate(values, start=1):
        with torch.no_grad():
            algo.net.w.copy_(v)
        ema.step()
        s = max(0, k - 2 - 1)  # updates counted after `start`
        d = 0.0 if s == 0 else min((1 + s) / (10 + s), 0.5)
        shadow = d * shadow + (1 - d) * v
    assert ema.num_updates == 6
    with ema.averaged():
        torch.testing.assert_close(algo.net.w.detach(), shadow)
        assert not torch.equal(shadow, values[-1])
    assert torch.equal(algo.net.w.detach(), values[-1])  # the raw values are back
    with pytest.raises(ValueError, match=r"ema_decay must be in \(0, 1\)"):
        ParameterEMA(algo.modules(), decay=1.0)


def test_the_average_survives_a_checkpoint_and_a_missing_one_restarts(tmp_path: Path):
    accelerator = Accelerator(cpu=True)
    algo = _Net()
    ema = ParameterEMA(algo.modules(), decay=0.9)
    for v in (1.0, 3.0, 5.0):
        with torch.no_grad():
            algo.net.w.fill_(v)
        ema.step()
    save_checkpoint(tmp_path, 3, algo, accelerator, seed=0, keep=2, ema=ema)
    assert set(load_file(tmp_path / "step_000003" / EMA_FILE)) == {"policy.w"}

    fresh = _Net()
    restored = ParameterEMA(fresh.modules(), decay=0.9)
    load_checkpoint(tmp_path / "step_000003", fresh, accelerator, restored)
    assert restored.num_updates == 3 and restored.current_decay == ema.current_decay
    with ema.averaged(), restored.averaged():
        assert torch.equal(fresh.net.w, algo.net.w)
    assert torch.equal(fresh.net.w.detach(), torch.full((3,), 5.0))

    (tmp_path / "step_000003" / EMA_FILE).unlink()  # a run that trained without an average
    again = ParameterEMA(_Net().modules(), decay=0.9)
    assert again.load(tmp_path / "step_000003") is False and again.num_updates == 0

    other = nn.Module()
    other.v = nn.Parameter(torch.zeros(3))
    stranger = ParameterEMA({"policy": other}, decay=0.9)
    stranger.save(tmp_path)
    with pytest.raises(ValueError, match=r"averages parameters \['policy.v', 'policy.w'\]"):
        ParameterEMA(_Net().modules(), decay=0.9).load(tmp_path)


def test_training_with_an_average_evaluates_it_and_resumes_bit_for_bit(tmp_path: Path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "ema").mkdir()
    plain = train(_config(), tmp_path / "plain", show_progress=False)
    averaged = train(_config("train.ema_decay=0.9"), tmp_path / "ema", show_progress=False)
    ckpt = latest_checkpoint(tmp_path / "ema" / "checkpoints")
    # the raw parameters train exactly as without the average; the evaluation samples differ
    raw = load_file(ckpt / "model.safetensors")
    ref = load_file(latest_checkpoint(tmp_path / "plain" / "checkpoints") / "model.safetensors")
    assert sorted(raw) == sorted(ref) and all(torch.equal(raw[k], ref[k]) for k in ref)
    assert averaged.eval_metrics["mean_abs_error"] != plain.eval_metrics["mean_abs_error"]
    assert evaluate_checkpoint(_config("train.ema_decay=0.9"), tmp_path / "ema").metrics == averaged.eval_metrics

    run_dir = tmp_path / "resumed"  # killed before checkpoint 40 was committed
    shutil.copytree(tmp_path / "ema", run_dir)
    (run_dir / "checkpoints" / "latest").write_text("step_000030\n")  # step_000040 is uncommitted
    resumed = train(_config("train.ema_decay=0.9"), run_dir, resume=True, show_progress=False)
    assert resumed.eval_metrics == averaged.eval_metrics
    want = load_file(ckpt / EMA_FILE)
    got = load_file(run_dir / "checkpoints" / "step_000040" / EMA_FILE)
    assert all(torch.equal(got[k], want[k]) for k in want)


@pytest.mark.parametrize("value", ["1.0", "-0.1"])
def test_a_decay_outside_0_1_is_a_recipe_error(value: str):
    with pytest.raises(RecipeError, match="ema_decay"):
        load_recipe(DUMMY_RECIPE, [f"train.ema_decay={value}"])
