"""The digits domain: CTRL on a CPU with a small pixel diffusion model.

A `UNet2DModel` pre-trained (unconditionally) on scikit-learn's digits, upsampled to 16x16, gets
LoRA adapters and/or a zero-initialised label pathway (per-label channel biases in every resnet
block, driven by `cond["y"]`), and accepts CTRL's new condition y as `cond["class_emb"]` added to
its time embedding. The reward classifier p(y | x) is trained on labelled digits of the "train" split; an
independent classifier trained on the disjoint "heldout" split judges the samples.

    domain = build()                               # shipped weights, 20 DDIM steps, eta = 1
    traj = rollout(domain.policy, 8, shape=domain.sample_shape)
    domain.evaluate({"x0": traj.x0, "y": y}, out_dir)

Label budgets (`build(label_budget=N)`): `offline_data()` returns a class-balanced subset of N
labelled train-split digits (for CFG and classifier guidance), and the reward classifier is
retrained on that same subset (`train_budget_classifier`), so every method sees the same N labels;
the judge is unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from domains.images.classifiers import (
    Calibrated,
    NoisyDigitsCNN,
    load_classifier,
    train_budget_classifier,
)
from domains.images.data import label_subset, load_digits
from domains.images.lora import ReferenceView, add_lora, lora_parameters
from domains.images.metrics import (
    frechet_distance,
    label_agreement,
    save_class_grids,
    save_grid,
    within_class_diversity,
)
from domains.images.pixel import DIGITS_LORA_TARGETS, WEIGHTS_DIR, PixelDenoiser, load_digits_model
from rldiff.core.gaussian import GaussianPolicy
from rldiff.core.rollout import rollout


def quadratic_timesteps(num_steps: int, num_train_timesteps: int = 1000) -> Tensor:
    """t_i = round((N - 1) ((T - i) / T)^2), i = 0..T-1: dense near t = 0, so that no single
    low-noise step dominates the trajectory KL (with uniform "trailing" steps and eta = 1 the last
    step, t = 49 -> alpha-bar_0, carries ~80% of the KL of a perturbation; see docs/images.md).
    Duplicates (T close to N) are removed."""
    t = [round((num_train_timesteps - 1) * ((num_steps - i) / num_steps) ** 2) for i in range(num_steps)]
    return torch.tensor(sorted(set(t), reverse=True), dtype=torch.long)


def make_policy(denoiser: Any, scheduler: Any, num_steps: int, eta: float, spacing: str = "quadratic",
                **kwargs: Any) -> GaussianPolicy:
    """A DDIM GaussianPolicy over the scheduler's alpha-bars with "quadratic" or the scheduler's own spacing."""
    if spacing == "scheduler":
        return GaussianPolicy.from_scheduler(denoiser, scheduler, num_steps, eta=eta, **kwargs)
    if spacing != "quadratic":
        raise ValueError(f"spacing must be 'quadratic' or 'scheduler', got {spacing!r}")
    ts = quadratic_timesteps(num_steps, scheduler.config.num_train_timesteps)
    return GaussianPolicy(denoiser, scheduler.alphas_cumprod, ts, final_alpha_cumprod=scheduler.final_alpha_cumprod,
                          eta=eta, **kwargs)


class DigitLogProb(nn.Module):
    """r(x) = log p(y | x) under a digit classifier, y = `cond["y"]` when given, else `target`.

    Differentiable (CTRL, reward backprop); with a fixed `target` it is DDPO's "make a 3" reward.
    """

    differentiable = True

    def __init__(self, classifier: nn.Module, target: int | None = None) -> None:
        super().__init__()
        self.classifier = classifier
        self.target = target

    def forward(self, x0: Tensor, cond: Any = None) -> Tensor:
        y = cond.get("y") if isinstance(cond, dict) else None
        if y is None:
            if self.target is None:
                raise ValueError("DigitLogProb needs cond['y'] or a fixed `target` digit")
            y = torch.full((x0.shape[0],), self.target, dtype=torch.long, device=x0.device)
        lp = torch.log_softmax(self.classifier(x0), dim=-1)  # [B, 10]
        if y.dtype.is_floating_point:  # soft labels [B, 10]
            return (y * lp).sum(-1)
        return lp.gather(-1, y.long()[:, None]).squeeze(-1)


def _features(judge: nn.Module, x: Tensor) -> Tensor:
    return torch.cat([judge.features(x[i:i + 512]) for i in range(0, len(x), 512)])


@torch.no_grad()
def sample_quality(x0: Tensor, out_dir: Path | None = None, eval_classifier: nn.Module | None = None) -> dict[str, float]:
    """Quality of unconditional digit samples as the independent classifier sees them.

    Args:
        x0: [N, 1, 16, 16] samples in [-1, 1].
        out_dir: where to write `grid.png` (rows = predicted digit), or None.
        eval_classifier: the judge; default the shipped `digits_eval_classifier`.

    Returns:
        class_balance_entropy (of the predicted digits; log 10 = 2.303 is perfectly balanced),
        frac_class_<k>, fd_to_real (Frechet distance to the held-out digits in the judge's feature
        space), fd_real_to_real (train vs held-out digits, the floor), diversity / diversity_real.
    """
    judge = eval_classifier if eval_classifier is not None else load_classifier(WEIGHTS_DIR / "digits_eval_classifier")
    x0 = x0.detach().float().cpu().clamp(-1, 1)
    pred = torch.cat([judge(x0[i:i + 512]) for i in range(0, len(x0), 512)]).argmax(-1)
    counts = torch.bincount(pred, minlength=10).float()
    frac = counts / counts.sum()
    x_real, y_real = load_digits("heldout")
    x_train, _ = load_digits("train")
    f_real = _features(judge, x_real)
    out = {"class_balance_entropy": float(-(frac * frac.clamp(min=1e-12).log()).sum()),
           **{f"frac_class_{k}": float(frac[k]) for k in range(10)},
           "fd_to_real": frechet_distance(_features(judge, x0), f_real),
           "fd_real_to_real": frechet_distance(_features(judge, x_train), f_real),
           "diversity": within_class_diversity(x0, pred), "diversity_real": within_class_diversity(x_real, y_real)}
    if out_dir is not None:
        save_class_grids(x0, pred, out_dir, range(10))
    return out


class DigitsDomain:
    """The `RLDomain` for digits (see `rldiff.train.protocol.RLDomain`).

    Attributes:
        policy: GaussianPolicy over the LoRA-adapted UNet (DDIM, eta), reference = adapters disabled.
        trainable: {"denoiser": PixelDenoiser}; only its LoRA parameters and label tables require gradients.
        sample_shape: (1, 16, 16).
        reward: DigitLogProb (log p(y | x) under the reward classifier).
        classifier: the calibrated reward classifier, x -> logits / T (frozen).
        eval_classifier: the independent judge (frozen; never used in training).
        num_labels: 10.
        label_index: indices into the "train" split of the labelled digits this domain may use
            (`offline_data`); all 1,197 unless a label budget was set.
    """

    sample_shape = (1, 16, 16)
    num_labels = 10

    def __init__(
        self,
        unet: nn.Module,
        scheduler: Any,
        classifier: Calibrated,
        eval_classifier: Calibrated,
        *,
        num_steps: int = 20,
        eta: float = 1.0,
        lora_rank: int = 8,
        lora_targets: tuple[str, ...] = DIGITS_LORA_TARGETS,
        reward_target: int | None = None,
        gradient_checkpointing: bool = False,
        reference_samples: int = 1000,
        spacing: str = "quadratic",
        label_pathway: bool = False,
        label_scale: float = 1.0,
        label_knots: int = 1,
        label_index: Tensor | None = None,
    ) -> None:
        self.unet = add_lora(unet, rank=lora_rank, target_modules=lora_targets) if lora_rank > 0 else unet.requires_grad_(False)
        self.denoiser = PixelDenoiser(self.unet, num_labels=self.num_labels if label_pathway else 0, label_scale=label_scale,
                                      label_knots=label_knots)
        reference = ReferenceView(self.denoiser, self.unet)
        self.policy = make_policy(self.denoiser, scheduler, num_steps, eta, spacing, reference=reference,
                                  gradient_checkpointing=gradient_checkpointing, condition_dim=self.denoiser.condition_dim)
        # the pre-trained model as a policy of its own (same view, no LoRA), for reference samples
        self.reference_policy = make_policy(reference, scheduler, num_steps, eta, spacing)
        self.trainable = {"denoiser": self.denoiser}
        self.classifier = classifier.eval().requires_grad_(False)
        self.eval_classifier = eval_classifier.eval().requires_grad_(False)
        self.reward = DigitLogProb(self.classifier, reward_target)
        self.reference_samples = reference_samples
        self._reference_x0: Tensor | None = None
        self.num_train_timesteps = len(scheduler.alphas_cumprod)
        self.label_index = label_index

    # ------------------------------------------------------------------ offline labels
    def offline_data(self, split: str = "train") -> tuple[Tensor, Tensor]:
        """The labelled digits this domain may train on: (x [N, 1, 16, 16] in [-1, 1], y [N]).

        Only the "train" split exists here (the held-out split belongs to the judge); with a label
        budget it is the class-balanced subset `label_index`.
        """
        if split != "train":
            raise ValueError(f"the digits domain offers labelled data of the 'train' split only, got {split!r} "
                             "(the 'heldout' split trains the independent judge)")
        x, y = load_digits("train")
        if self.label_index is not None:
            x, y = x[self.label_index], y[self.label_index]
        return x, y

    def noisy_classifier(self) -> nn.Module:
        """A fresh, untrained p(y | x_t, t) (`NoisyDigitsCNN`) for classifier guidance."""
        return NoisyDigitsCNN(num_classes=self.num_labels, num_train_steps=self.num_train_timesteps)

    def sample_cond(self, num: int, generator: torch.Generator) -> dict[str, Any] | None:
        """Digits are unconditional: no base condition."""
        return None

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def reference_x0(self) -> Tensor:
        """`reference_samples` samples of the pre-trained model (adapters off, fixed seed), cached."""
        if self._reference_x0 is None:
            g = torch.Generator().manual_seed(1234)
            chunks = [rollout(self.reference_policy, min(500, self.reference_samples - i), None, generator=g, shape=self.sample_shape,
                              keep_states=False).x0 for i in range(0, self.reference_samples, 500)]
            self._reference_x0 = torch.cat(chunks).clamp(-1, 1)
        return self._reference_x0

    @torch.no_grad()
    def evaluate(self, samples: dict[str, Any], out_dir: Path) -> dict[str, float]:
        """Judge samples with the independent classifier; write grids and a JSON of the metrics.

        Args:
            samples: {"x0": [N, 1, 16, 16], "y": [N] requested digits (optional: without it only
                the distribution metrics are computed)}.
            out_dir: where `grid.png`, `grid_y<k>.png` and `metrics.json` go.

        Returns:
            accuracy, macro_f1, acc_class_<k> (eval classifier vs requested y), reward_accuracy
            (the training classifier's view, for contrast), diversity (within-class mean pairwise
            pixel distance; real held-out digits score `diversity_real`), fd_to_pretrained
            (Frechet distance to the pre-trained model's samples in the eval classifier's feature
            space), fd_to_pretrained_same_class (fine-tuned "k"s vs pre-trained samples judged "k",
            in the judge's logit space, averaged over k), fd_to_real (to the held-out digits; the
            pre-trained model scores `fd_pretrained_to_real`, train vs held-out digits
            `fd_real_to_real`). Without y: the `sample_quality` metrics.
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        x0 = samples["x0"].detach().float().cpu().clamp(-1, 1)  # [N, 1, 16, 16]
        y = samples.get("y")
        judge = self.eval_classifier
        metrics: dict[str, float] = {"num_samples": float(len(x0))}
        quality = sample_quality(x0, None, judge)
        ref = self.reference_x0()
        f_x, f_ref = _features(judge, x0), _features(judge, ref)
        if y is None:
            metrics.update(quality)
            labels = torch.cat([judge(x0[i:i + 512]) for i in range(0, len(x0), 512)]).argmax(-1)
        else:
            y = torch.as_tensor(y).long().cpu()
            if y.ndim == 2:  # soft labels: judge against the heaviest class
                y = y.argmax(-1)
            pred = torch.cat([judge(x0[i:i + 512]) for i in range(0, len(x0), 512)]).argmax(-1)  # [N]
            metrics.update(label_agreement(pred, y, self.num_labels))
            metrics["reward_accuracy"] = float((self.classifier(x0).argmax(-1) == y).float().mean())
            metrics.update({k: quality[k] for k in ("fd_to_real", "fd_real_to_real", "diversity_real")})
            metrics["diversity"] = within_class_diversity(x0, y)
            labels = y
            # per class: the fine-tuned "k"s against the pre-trained samples the judge calls "k", in
            # the judge's 10-d logit space (100 samples per class cannot fill a 192-d covariance)
            l_x = torch.cat([judge(x0[i:i + 512]) for i in range(0, len(x0), 512)])
            l_ref = torch.cat([judge(ref[i:i + 512]) for i in range(0, len(ref), 512)])
            ref_pred = l_ref.argmax(-1)
            per = [frechet_distance(l_x[y == k], l_ref[ref_pred == k]) for k in range(self.num_labels)
                   if int((y == k).sum()) >= 2 and int((ref_pred == k).sum()) >= 2]
            if per:
                metrics["fd_to_pretrained_same_class"] = float(sum(per) / len(per))
        metrics["fd_to_pretrained"] = frechet_distance(f_x, f_ref)
        metrics["fd_pretrained_to_real"] = frechet_distance(f_ref, _features(judge, load_digits("heldout")[0]))
        save_class_grids(x0, labels, out_dir, range(self.num_labels))
        save_grid(ref[:100], out_dir / "grid_pretrained.png")
        (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=1))
        return metrics

    def lora_parameters(self) -> list[nn.Parameter]:
        """The trainable LoRA parameters of the UNet."""
        return lora_parameters(self.unet)


def build(
    weights: str | None = None,
    num_steps: Annotated[int, Field(ge=1, le=1000)] = 20,
    eta: Annotated[float, Field(gt=0)] = 1.0,
    lora_rank: Annotated[int, Field(ge=0)] = 8,
    lora_targets: tuple[str, ...] = DIGITS_LORA_TARGETS,
    reward_target: Annotated[int, Field(ge=0, le=9)] | None = None,
    gradient_checkpointing: bool = False,
    reference_samples: Annotated[int, Field(ge=2)] = 1000,
    spacing: Literal["quadratic", "scheduler"] = "quadratic",
    threads: Annotated[int, Field(ge=0)] = 0,
    label_pathway: bool = False,
    label_scale: Annotated[float, Field(gt=0)] = 1.0,
    label_knots: Annotated[int, Field(ge=1)] = 1,
    label_budget: Annotated[int, Field(ge=10, le=1197)] | None = None,
    label_seed: int = 0,
    classifier: str | None = None,
) -> DigitsDomain:
    """Build the digits domain from (shipped) weights.

    Args:
        weights: folder with unet/, scheduler/, digits_classifier.* and digits_eval_classifier.*;
            None = the shipped `domains/images/weights/digits`.
        num_steps: DDIM steps T.
        eta: DDIM eta (> 0: log-probs and KL need stochastic steps; 1 = DDPM variance).
        lora_rank: LoRA rank on the UNet (0 = no LoRA: only CTRL's y-embedding can be trained).
        lora_targets: module-name suffixes that get LoRA.
        reward_target: a fixed digit for `reward` when the condition carries no y (DDPO/backprop).
        gradient_checkpointing: recompute each denoiser call in backward (saves memory).
        reference_samples: pre-trained samples drawn once for the distance metrics.
        spacing: "quadratic" (dense near t = 0; balances the per-step KL) or "scheduler" (the
            scheduler's own "trailing" spacing).
        threads: torch CPU threads (0 = leave as is).
        label_pathway: give the denoiser its own zero-initialised per-label, per-resnet-block channel
            biases, driven by `cond["y"]` (see `PixelDenoiser`); CTRL's y-embedding still applies.
        label_scale: forward multiplier of those tables (= their learning-rate multiplier under Adam).
        label_knots: tables per block at evenly spaced timesteps, interpolated in t (1 = time-independent).
        label_budget: use only this many labelled train-split digits (class-balanced,
            `label_subset(y, label_budget, label_seed)`): `offline_data` returns them, and unless
            `classifier` is given the reward classifier is retrained on them
            (`train_budget_classifier`, ~10-20 s). None (or all 1,197) = every train-split label
            and the shipped reward classifier.
        label_seed: which subset.
        classifier: path (without extension) of a reward classifier saved by `save_classifier`
            to use instead (e.g. one trained by `train_budget_classifier` and cached).

    Returns:
        DigitsDomain.
    """
    if threads:
        torch.set_num_threads(threads)
    root = Path(weights) if weights is not None else WEIGHTS_DIR
    if not root.is_dir():
        raise FileNotFoundError(f"digits weights folder {root} does not exist; expected unet/, scheduler/, "
                                "digits_classifier.{json,safetensors}, digits_eval_classifier.{json,safetensors}")
    unet, scheduler = load_digits_model(root)
    label_index = None
    if label_budget is not None and label_budget < len(load_digits("train")[1]):
        label_index = label_subset(load_digits("train")[1], label_budget, label_seed)
    if classifier is not None:
        reward_classifier = load_classifier(classifier)
    elif label_index is not None:
        reward_classifier = train_budget_classifier(label_budget, label_seed)[0]
    else:
        reward_classifier = load_classifier(root / "digits_classifier")
    return DigitsDomain(
        unet, scheduler, reward_classifier, load_classifier(root / "digits_eval_classifier"),
        num_steps=num_steps, eta=eta, lora_rank=lora_rank, lora_targets=tuple(lora_targets),
        reward_target=reward_target, gradient_checkpointing=gradient_checkpointing,
        reference_samples=reference_samples, spacing=spacing, label_pathway=label_pathway, label_scale=label_scale,
        label_knots=label_knots, label_index=label_index,
    )
