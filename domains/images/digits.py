"""The digits domain: CTRL on a CPU with a small pixel diffusion model.

A `UNet2DModel` pre-trained (unconditionally) on scikit-learn's digits, upsampled to 16x16, gets
LoRA adapters and accepts CTRL's new condition y as `cond["class_emb"]` added to its time
embedding. The reward classifier p(y | x) is trained on labelled digits of the "train" split; an
independent classifier trained on the disjoint "heldout" split judges the samples.

    domain = build()                               # shipped weights, 20 DDIM steps, eta = 1
    traj = rollout(domain.policy, 8, shape=domain.sample_shape)
    domain.evaluate({"x0": traj.x0, "y": y}, out_dir)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import Tensor, nn

from domains.images.classifiers import Calibrated, load_classifier
from domains.images.data import load_digits
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


class DigitsDomain:
    """The `RLDomain` for digits (see `rldiff.train.protocol.RLDomain`).

    Attributes:
        policy: GaussianPolicy over the LoRA-adapted UNet (DDIM, eta), reference = adapters disabled.
        trainable: {"denoiser": PixelDenoiser}; only its LoRA parameters require gradients.
        sample_shape: (1, 16, 16).
        reward: DigitLogProb (log p(y | x) under the reward classifier).
        classifier: the calibrated reward classifier, x -> logits / T (frozen).
        eval_classifier: the independent judge (frozen; never used in training).
        num_labels: 10.
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
    ) -> None:
        self.unet = add_lora(unet, rank=lora_rank, target_modules=lora_targets) if lora_rank > 0 else unet.requires_grad_(False)
        self.denoiser = PixelDenoiser(self.unet)
        self.policy = GaussianPolicy.from_scheduler(
            self.denoiser, scheduler, num_steps, eta=eta, reference=ReferenceView(self.denoiser, self.unet),
            gradient_checkpointing=gradient_checkpointing, condition_dim=self.denoiser.condition_dim,
        )
        # the pre-trained model as a policy of its own (same view, no LoRA), for reference samples
        self.reference_policy = GaussianPolicy.from_scheduler(self.policy.reference, scheduler, num_steps, eta=eta)
        self.trainable = {"denoiser": self.denoiser}
        self.classifier = classifier.eval().requires_grad_(False)
        self.eval_classifier = eval_classifier.eval().requires_grad_(False)
        self.reward = DigitLogProb(self.classifier, reward_target)
        self.reference_samples = reference_samples
        self._reference_x0: Tensor | None = None

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
            pixel distance; real held-out digits score `diversity_real`), fd_to_pretrained and
            fd_to_real (Frechet distances in the eval classifier's feature space; the pre-trained
            model scores `fd_pretrained_to_real`, the two real splits `fd_real_to_real`).
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        x0 = samples["x0"].detach().float().cpu().clamp(-1, 1)  # [N, 1, 16, 16]
        y = samples.get("y")
        judge = self.eval_classifier
        pred = torch.cat([judge(x0[i:i + 512]) for i in range(0, len(x0), 512)]).argmax(-1)  # [N]
        metrics: dict[str, float] = {"num_samples": float(len(x0))}
        labels = pred
        if y is not None:
            y = torch.as_tensor(y).long().cpu()
            if y.ndim == 2:  # soft labels: judge against the heaviest class
                y = y.argmax(-1)
            metrics.update(label_agreement(pred, y, self.num_labels))
            metrics["reward_accuracy"] = float((self.classifier(x0).argmax(-1) == y).float().mean())
            labels = y
        else:
            counts = torch.bincount(pred, minlength=self.num_labels).float()
            metrics["class_balance_entropy"] = float(-(counts / counts.sum() * (counts / counts.sum()).clamp(min=1e-12).log()).sum())
        x_real, y_real = load_digits("heldout")
        x_train, _ = load_digits("train")
        ref = self.reference_x0()
        feats = lambda x: torch.cat([judge.features(x[i:i + 512]) for i in range(0, len(x), 512)])
        f_x, f_real, f_ref = feats(x0), feats(x_real), feats(ref)
        metrics["diversity"] = within_class_diversity(x0, labels)
        metrics["diversity_real"] = within_class_diversity(x_real, y_real)
        metrics["fd_to_pretrained"] = frechet_distance(f_x, f_ref)
        metrics["fd_to_real"] = frechet_distance(f_x, f_real)
        metrics["fd_pretrained_to_real"] = frechet_distance(f_ref, f_real)
        metrics["fd_real_to_real"] = frechet_distance(feats(x_train), f_real)
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
    threads: Annotated[int, Field(ge=0)] = 0,
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
        threads: torch CPU threads (0 = leave as is).

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
    return DigitsDomain(
        unet, scheduler, load_classifier(root / "digits_classifier"), load_classifier(root / "digits_eval_classifier"),
        num_steps=num_steps, eta=eta, lora_rank=lora_rank, lora_targets=tuple(lora_targets),
        reward_target=reward_target, gradient_checkpointing=gradient_checkpointing,
        reference_samples=reference_samples,
    )
