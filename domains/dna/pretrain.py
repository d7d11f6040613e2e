"""Pre-train the DNA masked-diffusion denoiser (MDLM) on the embedded DNase training split.

    .venv/bin/python -m domains.dna.pretrain recipes/dna/pretrain.yaml [key=value ...]

Loss: the MDLM continuous-time NELBO (Sahoo et al. 2024, eq. 10) with the log-linear schedule
alpha(t) = 1 - (1 - eps) t, whose weight -alpha'(t) / (1 - alpha(t)) is 1/t:

    L = E_{t ~ U(0,1), x_t ~ q(.|x0, t)} [ (1/t) sum_{i masked in x_t} -log p_theta(x0^i | x_t) ]

reported per base (divided by L). Times are stratified over the batch (t_b = (u + b) / B) to
cut the variance of the 1/t weight. Reverse-complement augmentation doubles the data (DNase
peaks have no strand). An exponential moving average of the weights is what gets saved.

The pieces are an `Algorithm` (`MDLMPretrain`) and a domain (`build_pretrain`) in the shape the
rldiff trainer drives, plus `main`, a stand-alone loop over `MDLMPretrain.update` that writes
the weights and their held-out ELBO.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from domains.dna.data import SEQ_LEN, decode, load_dnase
from domains.dna.kmers import kmer_correlation
from domains.dna.model import VOCAB, DenoiserConfig, DNADenoiser, count_parameters, save_denoiser
from rldiff.core.masked import LogLinearSchedule, MaskedPolicy
from rldiff.core.rollout import rollout


def reverse_complement(tokens: Tensor) -> Tensor:
    """[N, L] tokens (A=0 C=1 G=2 T=3) -> reverse complements (A<->T, C<->G, reversed)."""
    return (3 - tokens).flip(-1)


def mdlm_loss(denoiser: Any, x0: Tensor, schedule: LogLinearSchedule, generator: torch.Generator | None = None,
              t_min: float = 1e-3) -> tuple[Tensor, Tensor]:
    """Per-base MDLM NELBO of a batch (continuous time, weight -alpha'/(1 - alpha) = 1/t).

    Args:
        denoiser: (x_t one-hot [B, L, V+1], t [B], cond) -> logits [B, L, V].
        x0: clean tokens [B, L].
        schedule: log-linear schedule.
        t_min: lower clamp of t (MDLM's sampling_eps).

    Returns:
        (loss, t): scalar per-base NELBO in nats and the sampled times [B].
    """
    B, L = x0.shape
    u = torch.rand((), generator=generator)
    t = ((u + torch.arange(B)) / B).clamp(min=t_min)  # [B] stratified
    keep = schedule.alpha(t).float()  # [B] probability a token is still unmasked
    masked = torch.rand(B, L, generator=generator) >= keep[:, None]  # [B, L]
    xt = torch.where(masked, torch.full_like(x0, VOCAB), x0)
    logits = denoiser(F.one_hot(xt, VOCAB + 1).float(), t, None)  # [B, L, V]
    nll = F.cross_entropy(logits.reshape(-1, VOCAB), x0.reshape(-1), reduction="none").view(B, L)
    w = schedule.elbo_weight(t).float()  # [B] = 1/t
    loss = (w * (masked.float() * nll).sum(-1)).mean() / L
    return loss, t


class PretrainDomain:
    """A fresh denoiser, its policy (for sampling and ELBO) and the DNase training data."""

    def __init__(self, channels: int = 64, cond_dim: int = 128, kernel_size: int = 5,
                 dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 1, 2, 4, 8, 16, 32),
                 num_steps: int = 100, eval_size: int = 1000, max_train: int | None = None) -> None:
        self.config = DenoiserConfig(channels=channels, cond_dim=cond_dim, kernel_size=kernel_size,
                                     dilations=tuple(dilations), seq_len=SEQ_LEN)
        self.denoiser = DNADenoiser(self.config)
        self.policy = MaskedPolicy(self.denoiser, VOCAB, SEQ_LEN, num_steps)
        self.train_tokens = load_dnase("train").tokens()  # [N, L]
        if max_train is not None:
            self.train_tokens = self.train_tokens[:max_train]
        self.test_tokens = load_dnase("test").tokens()[:eval_size]  # chr2
        self.trainable = {"denoiser": self.denoiser}

    def evaluate(self, samples: dict[str, Any], out_dir: Path) -> dict[str, float]:
        """3-mer correlation of samples with the training data; held-out (chr2) ELBO."""
        tokens = samples["x0"]
        tokens = tokens.argmax(-1) if tokens.dim() == 3 else tokens
        g = torch.Generator().manual_seed(0)
        elbo = self.policy.elbo(self.test_tokens, num_samples=8, generator=g)
        return {
            "kmer3_corr": kmer_correlation(tokens, self.train_tokens, 3),
            "kmer6_corr": kmer_correlation(tokens, self.train_tokens, 6),
            "elbo_test_per_seq": float(elbo.mean()),
            "elbo_test_per_base": float(elbo.mean()) / SEQ_LEN,
        }


def build_pretrain(**kwargs: Any) -> PretrainDomain:
    """Recipe entry for `domain:` in recipes/dna/pretrain.yaml."""
    return PretrainDomain(**kwargs)


class MDLMPretrain:
    """Pre-training as an rldiff `Algorithm`: one AdamW step of the MDLM loss per `update`.

    Args:
        domain: a PretrainDomain.
        lr: peak learning rate (linear warm-up, cosine decay to 10% over `total_steps`).
        batch_size: sequences per update.
        warmup: warm-up updates.
        total_steps: length of the cosine schedule.
        weight_decay: AdamW weight decay.
        ema: decay of the weight average that is evaluated and saved.
        rc_augment: replace half the batch by reverse complements.
        grad_clip: max gradient norm.
    """

    def __init__(self, domain: PretrainDomain, accelerator: Any = None, lr: float = 2e-3, batch_size: int = 128,
                 warmup: int = 200, total_steps: int = 4000, weight_decay: float = 0.01, ema: float = 0.999,
                 rc_augment: bool = True, grad_clip: float = 1.0) -> None:
        self.domain = domain
        self.net = domain.denoiser
        self.ema_net = copy.deepcopy(self.net).requires_grad_(False)
        self.ema = ema
        self.batch_size = batch_size
        self.rc_augment = rc_augment
        self.grad_clip = grad_clip
        self.schedule = domain.policy.schedule
        self.opt = torch.optim.AdamW(self.net.parameters(), lr=lr, weight_decay=weight_decay)
        self.lr_at = lambda s: lr * min(1.0, (s + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total_steps))))

    def modules(self) -> dict[str, torch.nn.Module]:
        return {"denoiser": self.net, "ema": self.ema_net}

    def optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adamw": self.opt}

    def update(self, step: int, generator: torch.Generator) -> dict[str, float]:
        data = self.domain.train_tokens
        idx = torch.randint(0, len(data), (self.batch_size,), generator=generator)
        x0 = data[idx]
        if self.rc_augment:
            flip = torch.rand(self.batch_size, generator=generator) < 0.5
            x0 = torch.where(flip[:, None], reverse_complement(x0), x0)
        for group in self.opt.param_groups:
            group["lr"] = self.lr_at(step)
        self.net.train()
        loss, _ = mdlm_loss(self.net, x0, self.schedule, generator)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), self.grad_clip)
        self.opt.step()
        with torch.no_grad():
            d = min(self.ema, (1 + step) / (10 + step))
            for pe, p in zip(self.ema_net.parameters(), self.net.parameters()):
                pe.lerp_(p, 1 - d)
        return {"loss": float(loss.detach()), "grad_norm": float(gnorm), "lr": self.lr_at(step)}

    @torch.no_grad()
    def sample(self, num: int, generator: torch.Generator) -> dict[str, Any]:
        policy = MaskedPolicy(self.ema_net.eval(), VOCAB, SEQ_LEN, self.domain.policy.num_steps)
        out = []
        for start in range(0, num, 256):
            traj = rollout(policy, min(256, num - start), generator=generator, keep_states=False)
            out.append(policy.tokens(traj.x0))
        return {"x0": torch.cat(out)}


# ------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> None:
    """Stand-alone pre-training: `python -m domains.dna.pretrain RECIPE [key=value ...]`.

    Writes `<output_dir>/denoiser.safetensors` (EMA weights) and `<output_dir>/pretrain.json`
    (loss curve summary, held-out ELBO, 3-mer correlation of samples). Stops at `train.steps`
    or after `--max-minutes` of wall time; `--threads` sets torch's intra-op threads (default 1).
    """
    from rldiff.config import instantiate, load_recipe

    argv = list(sys.argv[1:] if argv is None else argv)
    command = "python -m domains.dna.pretrain " + " ".join(argv)
    if not argv:
        raise SystemExit("usage: python -m domains.dna.pretrain RECIPE [key=value ...] [--max-minutes M] [--threads N]")
    max_minutes, threads = math.inf, 1
    if "--max-minutes" in argv:
        i = argv.index("--max-minutes")
        max_minutes = float(argv[i + 1])
        del argv[i : i + 2]
    if "--threads" in argv:
        i = argv.index("--threads")
        threads = int(argv[i + 1])
        del argv[i : i + 2]
    torch.set_num_threads(threads)  # on a shared 2-core machine, 1 thread avoids OpenMP oversubscription
    recipe = load_recipe(argv[0], argv[1:])
    cfg = recipe.config
    out_dir = Path(cfg.output_dir or f"runs/{recipe.name}")
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    domain = instantiate(cfg.domain)
    algo = instantiate(cfg.algorithm, domain=domain)
    n_params = count_parameters(domain.denoiser)
    print(f"denoiser: {n_params} parameters; {len(domain.train_tokens)} training sequences", flush=True)
    t0, losses, step = time.time(), [], 0
    with open(out_dir / "metrics.jsonl", "w") as log:
        for step in range(cfg.train.steps):
            g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
            m = algo.update(step, g)
            losses.append(m["loss"])
            if (step + 1) % cfg.train.log_every == 0:
                rec = {"step": step + 1, "loss": sum(losses[-cfg.train.log_every:]) / cfg.train.log_every,
                       "lr": m["lr"], "minutes": (time.time() - t0) / 60}
                log.write(json.dumps(rec) + "\n")
                log.flush()
                print(json.dumps(rec), flush=True)
            if (time.time() - t0) / 60 > max_minutes:
                print(f"stopping at step {step + 1}: {max_minutes} minutes reached", flush=True)
                break
    train_minutes = (time.time() - t0) / 60
    save_denoiser(algo.ema_net, out_dir / "denoiser.safetensors",
                  metadata={"steps": str(step + 1), "recipe": recipe.name})
    g = torch.Generator().manual_seed(cfg.seed)
    samples = algo.sample(cfg.train.eval_samples, g)
    ema_domain = copy.copy(domain)
    ema_domain.policy = MaskedPolicy(algo.ema_net.eval(), VOCAB, SEQ_LEN, domain.policy.num_steps)
    metrics = ema_domain.evaluate(samples, out_dir)
    summary = {"steps": step + 1, "train_minutes": train_minutes, "parameters": n_params,
               "final_loss_avg100": sum(losses[-100:]) / len(losses[-100:]), **metrics,
               "eval_samples": cfg.train.eval_samples, "sampling_steps": domain.policy.num_steps,
               "command": command}
    (out_dir / "pretrain.json").write_text(json.dumps(summary, indent=2))
    with open(out_dir / "samples.txt", "w") as fh:
        fh.write("\n".join(decode(samples["x0"][:50])) + "\n")
    print(json.dumps(summary, indent=2), flush=True)


if __name__ == "__main__":
    main()
