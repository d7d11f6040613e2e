"""The DNA domain: a pre-trained masked-diffusion model of cell-type-specific DNase peaks, LoRA
adapters and CTRL's class-embedding adapter, a gReLU classifier p(cell line | x), a held-out
gReLU oracle, and the evaluation of generated sequences.

    domain = domains.dna.build()                      # the shipped weights, CPU-sized
    traj = rollout(domain.policy, 8, cond={"class_emb": torch.zeros(8, domain.policy.condition_dim)})

Satisfies `rldiff.train.protocol.RLDomain`.
"""

from __future__ import annotations

import gzip
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from domains.dna.data import CELL_LINES, SEQ_LEN, SequenceSet, encode, load_dnase
from domains.dna.evaluate import CELL_TYPE_MOTIFS, evaluate_sequences
from domains.dna.grelu_models import (
    CLASSIFIER_CHROMS,
    ORACLE_CHROMS,
    GReLUClassifier,
    load_grelu,
    specificity,
)
from domains.dna.model import VOCAB, DNADenoiser, load_denoiser, with_lora
from rldiff.core.masked import MaskedPolicy

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
DEFAULT_DENOISER = WEIGHTS_DIR / "denoiser.safetensors"
DEFAULT_CLASSIFIER = WEIGHTS_DIR / "classifier.safetensors"
DEFAULT_ORACLE = WEIGHTS_DIR / "oracle.safetensors"


def default_baseline(num_steps: int) -> Path:
    """The shipped pre-trained samples drawn with `num_steps` sampling steps (T = 10 and 50 are shipped)."""
    return WEIGHTS_DIR / f"pretrained_samples_T{num_steps}.txt.gz"


class CellTypeReward(nn.Module):
    """Differentiable cell-type-specificity reward from a (calibrated) classifier.

    kind="log_prob":    r(x, y) = log p(y | x)                                 (CTRL's reward)
    kind="specificity": r(x, y) = log p(y | x) - max_{k != y} log p(k | x)    (gReLU `Specificity`)

    The target y is `cond["y"]` (LongTensor [B]) when present, else the fixed `target`.
    Gradients flow through the one-hot x0 [B, L, 5] (the mask channel is dropped).
    """

    differentiable = True

    def __init__(self, classifier: nn.Module, kind: str = "log_prob", target: int | None = None) -> None:
        super().__init__()
        if kind not in ("log_prob", "specificity"):
            raise ValueError(f"unknown reward kind {kind!r}; valid: log_prob, specificity")
        self.classifier = classifier
        self.kind = kind
        self.target = target

    def forward(self, x0: Tensor, cond: Any = None) -> Tensor:
        y = cond.get("y") if isinstance(cond, dict) else None
        if y is None:
            if self.target is None:
                raise ValueError("CellTypeReward needs cond['y'] (LongTensor [B]) or a fixed target")
            y = torch.full((x0.shape[0],), self.target, dtype=torch.long, device=x0.device)
        logp = torch.log_softmax(self.classifier(x0), dim=-1)  # [B, K]
        if self.kind == "log_prob":
            return logp.gather(1, y.long().view(-1, 1)).squeeze(1)
        return specificity(logp, y)


class LabelConditioned(nn.Module):
    """The trainable denoiser plus a zero-initialised embedding of `cond["y"]` added to its time
    embedding (through `cond["class_emb"]`): the conditional policy of DDPO / reward backprop
    runs over all cell lines with one set of weights (`build(label_conditioning=True)`).

    The embedding is zero at construction, so at step 0 the network computes exactly the
    pre-trained one; the domain's reference view wraps the LoRA'd network directly and never
    sees this embedding, so the KL reference stays the pre-trained model.
    """

    def __init__(self, net: nn.Module, num_labels: int, dim: int, scale: float = 1.0) -> None:
        super().__init__()
        self.net = net
        self.num_labels = num_labels
        self.scale = scale  # output = scale * weight: with Adam, an embedding lr `scale` times the LoRA lr
        self.embedding = nn.Embedding(num_labels, dim)
        nn.init.zeros_(self.embedding.weight)  # zero-init: step 0 = pre-trained model

    @property
    def condition_dim(self) -> int:
        return self.net.condition_dim

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        y = cond.get("y") if isinstance(cond, dict) else None
        if y is None:
            raise ValueError("a label-conditioned DNA policy needs cond['y'] (LongTensor [B]); "
                             "use domain.sample_cond to draw it")
        emb = self.scale * self.embedding(y.to(x_t.device).long())
        if emb.shape[0] != x_t.shape[0]:
            emb = emb.expand(x_t.shape[0], -1)
        prev = cond.get("class_emb")
        return self.net(x_t, t, {**cond, "class_emb": emb if prev is None else prev + emb})


@dataclass
class _Baseline:
    tokens: Tensor  # [M, L] pre-trained samples
    elbo: float | None = None


class DNADomain:
    """Everything the algorithms and the trainer read for DNA (see `build` for the arguments).

    Attributes:
        policy: MaskedPolicy over ACGT (V=4, mask=4), L=200; denoiser = LoRA'd pre-trained
            network, reference = the same network with adapters disabled; condition_dim set.
        trainable: {"denoiser": LoRADenoiser} (only LoRA parameters require grad), plus
            {"y_embedding": LabelConditioned.embedding} with `label_conditioning`.
        sample_shape: None (masked policy).
        reward: CellTypeReward on the classifier.
        classifier: GReLUClassifier, calibrated logits [B, 4].
        oracle: held-out GReLUClassifier (evaluation only).
        num_labels: 4 (CELL_LINES order).
        label_conditioning: `sample_cond` draws y (balanced over the cell lines) and the policy's
            denoiser adds a trainable, zero-initialised embedding of `cond["y"]` to its time
            embedding (`LabelConditioned`); the reference ignores it.
    """

    sample_shape = None

    def __init__(self, denoiser: DNADenoiser, classifier: GReLUClassifier, oracle: GReLUClassifier | None, *,
                 num_steps: int = 50, lora_rank: int = 8, lora_alpha: float = 16.0,
                 reward_kind: str = "log_prob", target: str | None = None,
                 baseline_tokens: Tensor | None = None, eval_real_per_class: int = 2000,
                 elbo_samples: int = 8, gradient_checkpointing: bool = False,
                 label_conditioning: bool = False, label_embedding_scale: float = 30.0,
                 label_chroms: list[str] | None = None, label_budget: int | None = None,
                 label_seed: int = 0, lora_per_label: bool = False) -> None:
        self.label_names = tuple(classifier.label_names)
        self.num_labels = len(self.label_names)
        if target is not None and target not in self.label_names:
            raise ValueError(f"target {target!r} is not a cell line; valid: {list(self.label_names)}")
        self.target = None if target is None else self.label_names.index(target)
        if label_conditioning and target is not None:
            raise ValueError("label_conditioning draws y over all cell lines; it cannot be combined with a fixed target")
        self.label_conditioning = label_conditioning
        adapted, reference = with_lora(denoiser, rank=lora_rank, alpha=lora_alpha,
                                       num_labels=self.num_labels if lora_per_label else 0)
        self.denoiser = adapted
        self.trainable: dict[str, nn.Module] = {"denoiser": adapted}
        net: nn.Module = adapted
        if label_conditioning:
            net = LabelConditioned(adapted, self.num_labels, adapted.condition_dim, label_embedding_scale)
            self.trainable["y_embedding"] = net.embedding
        self.policy = MaskedPolicy(net, VOCAB, SEQ_LEN, num_steps, reference=reference,
                                   gradient_checkpointing=gradient_checkpointing,
                                   condition_dim=adapted.condition_dim)
        for p in classifier.parameters():
            p.requires_grad_(False)
        self.classifier = classifier.eval()
        self.oracle = oracle.eval() if oracle is not None else None
        self.reward = CellTypeReward(self.classifier, reward_kind, self.target)
        self.elbo_samples = elbo_samples
        self.eval_real_per_class = eval_real_per_class
        self._baseline = _Baseline(baseline_tokens) if baseline_tokens is not None else None
        self._real: dict[int, Tensor] | None = None
        self.label_chroms = None if label_chroms is None else list(label_chroms)
        self.label_budget, self.label_seed = label_budget, label_seed

    # ------------------------------------------------------------------ RLDomain
    def sample_cond(self, num: int, generator: torch.Generator) -> dict[str, Any] | None:
        """None (the pre-trained model is unconditional), {"y": target} when a fixed target is set,
        or with `label_conditioning` {"y": LongTensor [num]} balanced over the cell lines
        (each appears num // K or num // K + 1 times, in an order drawn from `generator`)."""
        if self.label_conditioning:
            y = torch.arange(num) % self.num_labels
            return {"y": y[torch.randperm(num, generator=generator)]}
        if self.target is None:
            return None
        return {"y": torch.full((num,), self.target, dtype=torch.long)}

    @property
    def target_label(self) -> int | None:
        """The fixed target's index (None without one), read by DDPO / reward backprop sampling."""
        return self.target

    def offline_data(self, split: str = "train") -> tuple[Tensor, Tensor]:
        """Labelled DNase peaks of a chromosome split: (tokens [N, 200] long, labels [N] long).

        Rows are shuffled with a fixed seed, so `x[:n]` is a class-mixed subset (CFG's
        `num_examples` label budget). Sequences with N are dropped. With `label_chroms` /
        `label_budget` (train split only) the rows are `offline_labels(label_chroms, label_budget,
        label_seed)`: only those chromosomes, a class-balanced subset of that many.
        """
        if self.label_chroms is not None or self.label_budget is not None:
            if split != "train":
                raise ValueError(f"label_chroms / label_budget restrict the train split; got split={split!r}")
            data = offline_labels(self.label_chroms, self.label_budget, self.label_seed)
        else:
            if split == "train" and self.oracle is not None:
                warnings.warn("offline_data: every training chromosome, the held-out oracle's included; "
                              "set domain.label_chroms: classifier to keep the oracle's peaks out of training",
                              stacklevel=2)
            data = _without_n(load_dnase(split))
        perm = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
        return data.tokens()[perm], data.labels[perm].long()

    def evaluate(self, samples: dict[str, Any], out_dir: Path) -> dict[str, float]:
        """Metrics of `samples = {"x0": [N, L, 5] or tokens [N, L], "y": LongTensor [N]}`; see
        `domains.dna.evaluate.evaluate_sequences`. Without "y", every sample counts as requested
        for the domain's fixed target (or for class 0 if there is none)."""
        x0 = samples["x0"]
        y = samples.get("y")
        if y is None:
            y = torch.full((len(x0),), self.target or 0, dtype=torch.long)
        baseline = self.baseline()
        return evaluate_sequences(
            x0.detach().cpu(), y, out_dir, oracle=self.oracle, classifier=self.classifier,
            real_tokens=self.real_tokens(), baseline_tokens=baseline.tokens,
            elbo_fn=self.pretrained_elbo, baseline_elbo=self._baseline_elbo(),
            label_names=self.label_names, motif_tfs=CELL_TYPE_MOTIFS)

    # ------------------------------------------------------------------ helpers
    @torch.no_grad()
    def pretrained_elbo(self, tokens: Tensor) -> Tensor:
        """MDLM ELBO [N] of tokens under the pre-trained model (adapters off), fixed seed."""
        g = torch.Generator().manual_seed(0)
        return self.policy.elbo(tokens.long(), num_samples=self.elbo_samples, generator=g, reference=True)

    @torch.no_grad()
    def sample_pretrained(self, num: int, generator: torch.Generator | None = None, batch_size: int = 128) -> Tensor:
        """Unconditional samples of the pre-trained model (reference view), tokens [num, L]."""
        ref = MaskedPolicy(self.policy.reference, VOCAB, SEQ_LEN, self.policy.num_steps)
        from rldiff.core.rollout import rollout

        out = []
        for s in range(0, num, batch_size):
            traj = rollout(ref, min(batch_size, num - s), generator=generator, keep_states=False)
            out.append(ref.tokens(traj.x0))
        return torch.cat(out)

    def baseline(self) -> _Baseline:
        """Pre-trained samples for motif enrichment (shipped file, or drawn once and cached)."""
        if self._baseline is None:
            self._baseline = _Baseline(self.sample_pretrained(512, torch.Generator().manual_seed(0)))
        return self._baseline

    def _baseline_elbo(self) -> float:
        b = self.baseline()
        if b.elbo is None:
            b.elbo = float(self.pretrained_elbo(b.tokens[:256]).mean())  # 256 samples: s.e.m. ~0.5 nats
        return b.elbo

    def real_tokens(self) -> dict[int, Tensor]:
        """Real training sequences per cell line (for the k-mer correlation)."""
        if self._real is None:
            train = load_dnase("train")
            self._real = {}
            for k in range(self.num_labels):
                idx = (train.labels == k).nonzero().flatten()[: self.eval_real_per_class]
                self._real[k] = train.subset(idx).tokens()
        return self._real


def _without_n(data: SequenceSet) -> SequenceSet:
    ok = [i for i, s in enumerate(data.sequences) if "N" not in s]
    return data.subset(ok) if len(ok) < len(data) else data


def offline_labels(chroms: list[str] | tuple[str, ...] | None = None, budget: int | None = None,
                   seed: int = 0) -> SequenceSet:
    """Labelled (sequence, cell line) pairs for label-budget studies: the train split's peaks (never
    chr1 / chr2), without sequences containing N, only on `chroms` (None = every training
    chromosome; e.g. `grelu_models.CLASSIFIER_CHROMS`, the CTRL classifier's), and with `budget` a
    class-balanced subset of that many (`domains.images.data.label_subset(labels, budget, seed)`:
    equal shares per cell line +-1; for one seed a smaller budget's subset lies inside a larger one's).
    Rows keep the file's order."""
    data = _without_n(load_dnase("train"))
    if chroms is not None:
        bad = sorted(set(chroms) & {"chr1", "chr2"})
        if bad:
            raise ValueError(f"{bad} are the validation / test chromosomes, not training data")
        wanted = set(chroms)
        keep = [i for i, c in enumerate(data.chrom) if c in wanted]
        if not keep:
            raise ValueError(f"no training peaks on chromosomes {list(chroms)}")
        data = data.subset(keep)
    if budget is not None:
        from domains.images.data import label_subset

        data = data.subset(label_subset(data.labels, budget, seed))
    return data


def read_baseline(path: str | Path) -> Tensor:
    """Tokens [M, L] from a gzipped text file of sequences (one per line)."""
    path = Path(path)
    with gzip.open(path, "rt") as fh:
        seqs = [line.strip() for line in fh if line.strip()]
    return encode(seqs, source=str(path))


def build(
    denoiser: str = str(DEFAULT_DENOISER),
    classifier: str = str(DEFAULT_CLASSIFIER),
    oracle: str | None = str(DEFAULT_ORACLE),
    num_steps: int = 50,
    lora_rank: int = 8,
    lora_alpha: float = 16.0,
    reward: str = "log_prob",
    target: str | None = None,
    baseline_samples: str | None = "auto",
    eval_real_per_class: int = 2000,
    elbo_samples: int = 8,
    gradient_checkpointing: bool = False,
    threads: int | None = None,
    label_conditioning: bool = False,
    label_embedding_scale: float = 30.0,
    label_chroms: list[str] | str | None = None,
    label_budget: int | None = None,
    label_seed: int = 0,
    lora_per_label: bool = False,
) -> DNADomain:
    """Build the DNA domain from saved weights (recipe entry: `_component_: domains.dna.build`).

    Args:
        denoiser: pre-trained denoiser safetensors (`domains.dna.model.save_denoiser`).
        classifier: CTRL classifier safetensors (`domains.dna.grelu_models.save_grelu`).
        oracle: held-out oracle safetensors, or null for no oracle metrics.
        num_steps: sampling steps T (200 positions are unmasked over T steps).
        lora_rank, lora_alpha: LoRA on the denoiser's residual blocks.
        lora_per_label: give every LoRA adapter one up-projection per cell line (plus a null one),
            chosen by the algorithm's `y` (`domains.dna.model.LoRA`): each cell line gets its own
            low-rank change of every layer instead of sharing one and differing only through
            the y-embedding's FiLM modulation. False = one shared adapter (the shipped recipes).
        reward: "log_prob" (log p(y | x)) or "specificity" (log p(y|x) - max off-target).
        target: a fixed cell line for single-target rewards (DDPO, reward backprop); null = the
            algorithm supplies `y`.
        baseline_samples: pre-trained samples (gzipped text, one sequence per line) that motif
            enrichment and the samples' ELBO are compared with. "auto" = the shipped
            `weights/pretrained_samples_T<num_steps>.txt.gz`, drawn with this domain's T (T = 10 and
            50 are shipped), else 512 drawn at the first evaluation; null = always draw them.
        eval_real_per_class: real sequences per cell line for the k-mer correlation.
        elbo_samples: Monte Carlo times per sequence for the ELBO.
        gradient_checkpointing: recompute denoiser activations in backward.
        threads: torch intra-op threads (1 avoids oversubscription on a shared CPU); null = leave.
        label_conditioning: one policy for all cell lines for DDPO / reward backprop: `sample_cond`
            draws y balanced over the cell lines and a zero-initialised, trainable y-embedding is
            added to the denoiser's time embedding (not for CTRL / CFG, which bring their own).
        label_embedding_scale: the y-embedding enters as scale * weight, so under Adam (one
            learning rate for all trainable parameters in DDPO / reward backprop) it moves
            `scale` times faster than the LoRA weights (CTRL's recipe: embedding lr 0.3 vs LoRA 1e-2).
        label_chroms, label_budget, label_seed: restrict `offline_data` (CFG's labelled data) to
            `offline_labels(label_chroms, label_budget, label_seed)`: only these training
            chromosomes, a class-balanced subset of `label_budget` pairs (null = all of them).
            label_chroms "classifier" / "oracle" = the CTRL classifier's / the oracle's training
            chromosomes (`grelu_models.CLASSIFIER_CHROMS` / `ORACLE_CHROMS`).
    """
    if threads is not None:
        torch.set_num_threads(threads)
    if isinstance(label_chroms, str):
        named = {"classifier": CLASSIFIER_CHROMS, "oracle": ORACLE_CHROMS}
        if label_chroms not in named:
            raise ValueError(f"label_chroms: a list of chromosomes or one of {sorted(named)}, got {label_chroms!r}")
        label_chroms = list(named[label_chroms])
    clf = load_grelu(classifier)
    if not isinstance(clf, GReLUClassifier):
        raise TypeError(f"{classifier}: a regression model, but the CTRL classifier must be a classifier")
    orc = load_grelu(oracle) if oracle else None
    if baseline_samples == "auto":
        shipped = default_baseline(num_steps)
        base = read_baseline(shipped) if shipped.is_file() else None
    elif baseline_samples:
        if not Path(baseline_samples).is_file():
            raise FileNotFoundError(f"baseline_samples: no file {baseline_samples} (use 'auto' or null to draw them)")
        base = read_baseline(baseline_samples)
    else:
        base = None
    return DNADomain(load_denoiser(denoiser), clf, orc, num_steps=num_steps, lora_rank=lora_rank,
                     lora_alpha=lora_alpha, reward_kind=reward, target=target, baseline_tokens=base,
                     eval_real_per_class=eval_real_per_class, elbo_samples=elbo_samples,
                     gradient_checkpointing=gradient_checkpointing, label_conditioning=label_conditioning,
                     label_embedding_scale=label_embedding_scale, label_chroms=label_chroms,
                     label_budget=label_budget, label_seed=label_seed, lora_per_label=lora_per_label)


__all__ = ["CELL_LINES", "CellTypeReward", "DNADomain", "LabelConditioned", "build", "default_baseline",
           "offline_labels", "read_baseline"]
