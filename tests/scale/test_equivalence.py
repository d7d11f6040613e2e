"""N data-parallel workers x batch B make the same update as 1 worker x batch N*B.

`tests.scale.fixtures.RowBankCTRL` makes the rows of the two setups identical (each worker takes
its slice of one bank of labels, conditions, x_T and noises), so the parameters must agree up to
float reduction order, and the workers must hold identical parameters after every update
although their local losses differ. That holds only if every trainable parameter's gradient is
averaged over workers: CTRL's y-embedding lives outside the denoiser, and the CTRL reference code
leaves it unsynchronised.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from rldiff.config.loader import load_recipe
from rldiff.train.checkpoint import latest_checkpoint
from rldiff.train.trainer import per_process_config, train, update_seed
from tests.scale._dp import data_parallel
from tests.scale._net import is_loopback
from tests.scale.conftest import ROW_BANK

STEPS = 3


def _dumps(folder: Path, rank: int, step: int) -> tuple[dict[str, torch.Tensor], float]:
    path = folder / f"rank{rank}_step{step}.safetensors"
    with safe_open(str(path), "pt") as f:
        loss = float(f.metadata()["loss"])
    return load_file(str(path)), loss


def _assert_equivalent(two: Path, one: Path, *, lr: float) -> None:
    """Workers identical to each other; gradients and parameters equal to the 1-process run's.

    Gradients (averaged over workers, clipped) agree to float reduction order: within 1e-3 of their
    largest entry (a missing sync would differ by their own size: the workers' rows differ).
    Parameters after AdamW agree to 1e-6 on at least 99% of the coordinates and within a quarter of
    a learning-rate step everywhere: AdamW divides each step by sqrt(v) + eps, so a coordinate
    whose gradient is as small as eps (1e-8; the tiny SD's LoRA-A right after LoRA-B leaves zero)
    moves by an amount that float-order noise in that gradient changes visibly."""
    for step in range(STEPS):
        (r0, loss0), (r1, loss1), (ref, _) = _dumps(two, 0, step), _dumps(two, 1, step), _dumps(one, 0, step)
        assert loss0 != loss1, "the workers saw the same rows: the test would not see a missing sync"
        assert r0.keys() == ref.keys() and "grad/y_embedding.weight" in ref
        close = total = 0
        for name, value in ref.items():
            assert torch.equal(r0[name], r1[name]), f"step {step}: {name} differs between the workers"
            diff = (r0[name] - value).abs()
            if name.startswith("grad/"):
                assert float(diff.max()) <= 1e-3 * float(value.abs().max()) + 1e-12, f"step {step}: {name}"
            else:
                assert float(diff.max()) <= 0.25 * lr, f"step {step}: {name} off by {float(diff.max())}"
                close += int((diff <= 1e-6 + 1e-4 * value.abs()).sum())
                total += diff.numel()
        assert close >= 0.99 * total, f"step {step}: only {close} of {total} parameters agree to 1e-6"
    emb = ref["y_embedding.weight"]
    assert float(emb[:-1].abs().max()) > 1e-3, "the y-embedding did not move: the check would be vacuous"


def test_per_process_batch_and_rank_seeds():
    config = load_recipe("toy/ctrl", ["algorithm.batch_size=64"]).config
    assert per_process_config(config, 1) is config
    assert per_process_config(config, 4).algorithm["batch_size"] == 16
    assert config.algorithm["batch_size"] == 64  # the recipe itself is left alone
    with pytest.raises(Exception, match="not a multiple of the 3"):
        per_process_config(config, 3)
    default = load_recipe("toy/ctrl", []).config
    del default.algorithm["batch_size"]  # the algorithm's own default (64) is divided too
    assert per_process_config(default, 2).algorithm["batch_size"] == 32
    seeds = {update_seed(0, 5, r, 2) for r in range(2)} | {update_seed(0, 5)}
    assert len(seeds) == 3  # each worker draws its own share, unlike a single process
    assert update_seed(0, 5) == update_seed(0, 5, 0, 1)


@pytest.mark.timeout(600)
def test_toy_ctrl_two_ray_workers_equal_one_worker_with_twice_the_batch(scale_runs, tmp_path, fresh_accelerate_state):
    """`rldiff launch` on the two-node cluster (one worker per node) vs 1 process in-process."""
    job = scale_runs.equivalence
    status, output = job.result(timeout=540)
    assert status == 0, output[-5000:]
    one = tmp_path / "one"
    one.mkdir()
    config = load_recipe("toy/ctrl", [*ROW_BANK, f"algorithm.dump_dir={tmp_path / 'dumps1'}"]).config
    train(config, one, show_progress=False)
    two = job.cwd / "dumps"
    _assert_equivalent(two, tmp_path / "dumps1", lr=3e-3)

    # the run directory is the usual one, written by rank 0, its checkpoint registered with Ray Train
    run = job.run_dir
    ckpt = latest_checkpoint(run / "checkpoints")
    assert ckpt is not None and ckpt.name == f"step_{STEPS:06d}"
    final = load_file(str(ckpt / "model.safetensors"))
    last, _ = _dumps(two, 0, STEPS - 1)
    assert all(torch.equal(final[k], last[k]) for k in last if not k.startswith("grad/"))
    snapshot = json.loads((run / "checkpoints" / "checkpoint_manager_snapshot.json").read_text())
    assert f"step_{STEPS:06d}" in json.dumps(snapshot)
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in logged] == list(range(1, STEPS + 1))
    # the logged metrics are the whole batch's: the mean of the two workers' local losses
    for entry, step in zip(logged, range(STEPS)):
        local = [_dumps(two, r, step)[1] for r in range(2)]
        assert entry["loss"] == pytest.approx(sum(local) / 2, rel=1e-6)

    # two nodes, both on 127.0.0.1; every connection in the cluster's namespace on loopback, and
    # worker-to-worker (gloo) links among them
    assert [n["ip"] for n in scale_runs.cluster.nodes] == ["127.0.0.1", "127.0.0.1"]
    established = [s for s in scale_runs.watch.seen if s.state == "ESTABLISHED"]
    assert established and all(is_loopback(s.local[0]) and is_loopback(s.remote[0]) for s in established)
    assert scale_runs.watch.links_between("ray::RayTrainWo"), "no worker-to-worker (gloo) connection was seen"


@pytest.mark.timeout(400)
def test_tiny_sd_ctrl_two_processes_equal_one_process_with_twice_the_batch(tmp_path, fresh_accelerate_state):
    """The same on a tiny SD-architecture pipeline (UNet LoRA + y through the class-embedding path,
    CFG with the null label), with two plain gloo processes (`accelerate launch`-style, no Ray)."""
    from domains.images.rewards import ImageClassifier, save_image_classifier
    from domains.images.tiny import save_tiny_sd_pipeline

    sd = save_tiny_sd_pipeline(tmp_path / "sd")
    torch.manual_seed(0)
    clf = save_image_classifier(ImageClassifier(4, size=16, width=4), tmp_path / "clf")
    overrides = [
        f"domain.model={sd}", "domain.dtype=fp32", "domain.device=cpu", "domain.num_steps=2", "domain.resolution=16",
        f"domain.classifier.path={clf}", "algorithm._component_=tests.scale.fixtures.RowBankCTRL",
        "algorithm.batch_size=4", "algorithm.grad=all", "train.mixed_precision=no", "train.cpu=true",
        f"train.steps={STEPS}", "train.eval_samples=0", "train.checkpoint_every=0", "logging.tensorboard=false",
    ]
    results = data_parallel(tmp_path / "two", "images/sd15_ctrl_compressibility",
                            [*overrides, f"algorithm.dump_dir={tmp_path / 'dumps2'}"])
    assert all(r.returncode == 0 for r in results), "\n".join(r.stdout[-3000:] for r in results)
    one = tmp_path / "one"
    one.mkdir()
    config = load_recipe("images/sd15_ctrl_compressibility", [*overrides, f"algorithm.dump_dir={tmp_path / 'dumps1'}"]).config
    train(config, one, show_progress=False)
    _assert_equivalent(tmp_path / "dumps2", tmp_path / "dumps1", lr=1e-3)
    lora = {k: v for k, v in _dumps(tmp_path / "dumps1", 0, STEPS - 1)[0].items() if "lora_B" in k and "grad/" not in k}
    assert lora and max(float(v.abs().max()) for v in lora.values()) > 0


@pytest.mark.timeout(300)
def test_an_unsynchronised_y_embedding_is_caught(tmp_path):
    """The CTRL reference code averages the denoiser's gradients only; with that bug the workers'
    y-embeddings drift apart and the equivalence check above fails."""
    overrides = [o for o in ROW_BANK if not o.startswith(("train.steps", "algorithm.batch_size"))]
    overrides += ["train.steps=2", "algorithm.batch_size=16", "algorithm.leave_embedding_unsynced=true",
                  f"algorithm.dump_dir={tmp_path / 'dumps'}"]
    results = data_parallel(tmp_path / "two", "toy/ctrl", overrides)
    assert all(r.returncode == 0 for r in results), "\n".join(r.stdout[-3000:] for r in results)
    (a, _), (b, _) = _dumps(tmp_path / "dumps", 0, 1), _dumps(tmp_path / "dumps", 1, 1)
    assert not torch.equal(a["y_embedding.weight"], b["y_embedding.weight"])
    assert all(torch.equal(a[k], b[k]) for k in a if "y_embedding" not in k)  # the denoiser stays in sync
