"""Discrete toy domain: short sequences over a small alphabet with an *exact* masked denoiser.

The data distribution is a known joint table p_pre over all V^L sequences. For absorbing
diffusion, the posterior p(x0 | x_t) depends only on which tokens are revealed, so the exact
denoiser is the table's conditional: p(x0_i = v | x_t) = sum over sequences s consistent with x_t
and s_i = v of p_pre(s), normalised. It is written as a multilinear function of the one-hot
input, so straight-through Gumbel-softmax gradients flow through it.

Everything is enumerable (5^4 = 625 states for L = 4, V = 4), so the *exact* terminal distribution
of any policy's sampler is computed by dynamic programming (`terminal_distribution`), and the
fine-tuning target p_pre(x) p(y | x)^gamma / Z is exact: the total variation between the two is a
number, not a Monte Carlo estimate.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Annotated, Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor, nn

from domains.toy.continuous import AdapterDisabledView, SwitchableAdapter
from rldiff.core.masked import MaskedPolicy
from rldiff.core.reward import ClassifierLogProb


class TableDenoiser(nn.Module):
    """Exact p(x0 | x_t) of a joint table over V^L sequences, as logits [B, L, V]."""

    def __init__(self, table: Tensor, vocab_size: int, seq_len: int) -> None:
        super().__init__()
        seqs = torch.tensor(list(itertools.product(range(vocab_size), repeat=seq_len)))  # [N, L]
        self.register_buffer("seqs_onehot", F.one_hot(seqs, vocab_size).float())  # [N, L, V]
        self.register_buffer("log_table", torch.log(table.float().clamp(min=1e-30)))  # [N]
        self.V, self.L = vocab_size, seq_len

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        # consistency of each table sequence with x_t: prod_i (x_t[i, s_i] + x_t[i, mask])
        tok, mask = x_t[..., : self.V], x_t[..., self.V :]  # [B, L, V], [B, L, 1]
        per_pos = torch.einsum("blv,nlv->bnl", tok, self.seqs_onehot) + mask.squeeze(-1)[:, None, :]  # [B, N, L]
        # in probability space, not log space: the weight is multilinear in the one-hot input, so its
        # derivative is right also for sequences the input rules out (log 0 would give them none)
        w = per_pos.prod(-1) * self.log_table.exp()  # [B, N]
        post = w / w.sum(-1, keepdim=True)  # [B, N] posterior over sequences
        probs = torch.einsum("bn,nlv->blv", post, self.seqs_onehot)  # [B, L, V]
        return torch.log(probs.clamp(min=1e-30))


class ResidualMaskedDenoiser(SwitchableAdapter, nn.Module):
    """Exact pre-trained table denoiser + a zero-initialised trainable residual MLP on the logits.

    `cond["class_emb"]` [B, condition_dim] is added to the residual's hidden features (CTRL's
    adapter); `disable_adapter()` switches the residual off (the reference view).
    """

    def __init__(self, base: nn.Module, vocab_size: int, seq_len: int, hidden: int = 128, condition_dim: int = 16) -> None:
        super().__init__()
        self.base = base
        self.V, self.L = vocab_size, seq_len
        self.condition_dim = condition_dim
        self.inp = nn.Linear(seq_len * (vocab_size + 1), hidden)
        self.cond_proj = nn.Linear(condition_dim, hidden, bias=False)
        self.mid = nn.Linear(hidden, hidden)
        self.out = nn.Linear(hidden, seq_len * vocab_size)
        nn.init.zeros_(self.out.weight)  # zero-init: step 0 equals the pre-trained model
        nn.init.zeros_(self.out.bias)

    def forward(self, x_t: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        logits = self.base(x_t, t, cond)
        if not self._adapter_enabled:
            return logits
        h = self.inp(x_t.flatten(1))
        if isinstance(cond, dict) and cond.get("class_emb") is not None:
            h = h + self.cond_proj(cond["class_emb"])
        h = self.mid(F.silu(h))
        return logits + self.out(F.silu(h)).view(-1, self.L, self.V)


class TableClassifier(nn.Module):
    """Analytic p(y | x) = softmax(sum_i W[y, i, x_i] + b_y) on one-hot sequences [B, L, V(+1)]."""

    def __init__(self, weight: Tensor, bias: Tensor) -> None:
        super().__init__()
        self.register_buffer("weight", weight.float())  # [K, L, V]
        self.register_buffer("bias", bias.float())  # [K]

    def forward(self, x: Tensor) -> Tensor:
        V = self.weight.shape[-1]
        return torch.einsum("blv,klv->bk", x[..., :V].float(), self.weight) + self.bias


class DiscreteToy:
    """The masked-sequence toy domain (satisfies `rldiff.train.protocol.RLDomain`).

    Args:
        seq_len: L (<= 4 keeps everything enumerable and fast).
        vocab_size: V (<= 4).
        num_labels: K classes of y.
        num_steps: sampler steps T.
        target_label: label whose log-probability is the task reward (DDPO / backprop).
        seed: seeds the random joint table and classifier (fixed: the toy is a fixed problem).
    """

    def __init__(self, seq_len: int = 3, vocab_size: int = 4, num_labels: int = 2, num_steps: int = 64,
                 target_label: int = 1, hidden: int = 128, condition_dim: int = 16, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.L, self.V, self.num_labels = seq_len, vocab_size, num_labels
        n = vocab_size**seq_len
        # a random joint table: Dirichlet(0.5) draw (Gamma(1/2) = Z^2 / 2), mixed with 10% uniform
        gam = torch.randn(n, generator=g, dtype=torch.float64) ** 2 / 2
        self.table = (0.9 * gam / gam.sum() + 0.1 / n).float()  # [V^L]
        base = TableDenoiser(self.table, vocab_size, seq_len)
        self.denoiser = ResidualMaskedDenoiser(base, vocab_size, seq_len, hidden=hidden, condition_dim=condition_dim)
        self.policy = MaskedPolicy(self.denoiser, vocab_size, seq_len, num_steps, reference=AdapterDisabledView(self.denoiser),
                                   condition_dim=condition_dim)
        w = torch.randn(num_labels, seq_len, vocab_size, generator=g) * 1.0
        self.classifier = TableClassifier(w, torch.zeros(num_labels))
        self.trainable = {"denoiser": self.denoiser}
        self.sample_shape = None
        self.target_label = target_label
        self.reward = ClassifierLogProb(self.classifier, label=target_label)
        self.all_seqs = base.seqs_onehot.argmax(-1)  # [N, L]

    def sample_cond(self, num: int, generator: torch.Generator) -> None:
        return None

    def offline_data(self, split: str = "train", num: int = 20_000) -> tuple[Tensor, Tensor]:
        """Labelled pairs: tokens x ~ p_pre [num, L], y ~ p(y | x) (fixed seed per split)."""
        g = torch.Generator().manual_seed({"train": 1, "val": 2, "test": 3}[split])
        x = self.all_seqs[torch.multinomial(self.table, num, replacement=True, generator=g)]
        logits = self.classifier(F.one_hot(x, self.V).float())
        return x, torch.multinomial(torch.softmax(logits, -1), 1, generator=g).squeeze(-1)

    # ------------------------------------------------------------------ exact quantities
    def index(self, tokens: Tensor) -> Tensor:
        """Sequence [.., L] -> its index in the table (base-V number)."""
        powers = self.V ** torch.arange(self.L - 1, -1, -1, device=tokens.device)
        return (tokens.long() * powers).sum(-1)

    def target(self, label: int, gamma: float) -> Tensor:
        """Exact p_pre(x) p(label | x)^gamma / Z over all V^L sequences: [N]."""
        x = F.one_hot(self.all_seqs, self.V).float()
        logp = torch.log(self.table.double()) + gamma * torch.log_softmax(self.classifier(x).double(), -1)[:, label]
        return torch.softmax(logp, 0)

    @torch.no_grad()
    def terminal_distribution(self, cond: Any = None, policy: MaskedPolicy | None = None) -> Tensor:
        """Exact law of the policy's sampled x0 over the V^L sequences, by dynamic programming.

        Enumerates all (V+1)^L states; transitions factorise over positions given x_t.

        Args:
            cond: condition for a single sample (dict of [1, ...] tensors) or None.
            policy: the policy to analyse (default: this domain's, e.g. a guided copy).

        Returns:
            [V^L] probabilities (sums to 1).
        """
        pol, V1 = policy or self.policy, self.V + 1
        states = torch.tensor(list(itertools.product(range(V1), repeat=self.L)))  # [S, L]
        S = len(states)
        onehot = F.one_hot(states, V1).float()  # [S, L, V+1]
        dist = torch.zeros(S, dtype=torch.float64)
        dist[int((states == self.V).all(-1).nonzero())] = 1.0  # all-mask start
        c = None if cond is None else {k: v.expand(S, *v.shape[1:]) for k, v in cond.items()}
        for i in range(pol.num_steps):
            live = dist > 0
            idx = live.nonzero().flatten()
            sub_c = None if c is None else {k: v[idx] for k, v in c.items()}
            logp0 = pol.denoise(onehot[idx], pol.times[i].expand(len(idx)), sub_c)  # [s, L, V]
            cu, cs = float(pol.c_unmask[i]), float(pol.c_stay[i])
            q = torch.cat([cu * logp0.exp().double(), torch.full((*logp0.shape[:-1], 1), cs, dtype=torch.float64)], -1)
            is_m = states[idx] == self.V  # [s, L]
            carry = F.one_hot(states[idx], V1).double()
            q = torch.where(is_m[..., None], q, carry)  # [s, L, V+1] per-position next-token law
            # joint over next states: product over positions (outer products)
            joint = q[:, 0]
            for pos in range(1, self.L):
                joint = (joint[:, :, None] * q[:, pos, None, :]).flatten(1)  # [s, V1^(pos+1)]
            new = torch.zeros(S, dtype=torch.float64)
            new += (dist[idx, None] * joint).sum(0)
            dist = new
        full = (states < self.V).all(-1)
        out = torch.zeros(self.V**self.L, dtype=torch.float64)
        out[self.index(states[full])] = dist[full]
        return out / out.sum()

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, samples: dict[str, Any], out_dir: Path) -> dict[str, float]:
        """Total variation between samples and the exact target, per requested label.

        `samples` = {"x0": one-hot [N, L, V+1], "y": [N], "gamma": float}. Reports the empirical
        TV and, for reference, the TV expected from sampling noise alone at this sample size. When
        the algorithm also hands over its sampling `policy` and `label_cond` (label -> the condition
        of one sample), the *exact* TV of the policy's sampler is computed by dynamic programming
        (`exact_tv`, no Monte Carlo error).
        """
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tokens = samples["x0"].argmax(-1).cpu()
        y, gamma = samples["y"].cpu(), float(samples["gamma"])
        metrics: dict[str, float] = {}
        labels = sorted(set(y.tolist()))
        fig, axes = plt.subplots(len(labels), 1, figsize=(10, 2.5 * len(labels)), squeeze=False)
        for ax, label in zip(axes[:, 0], labels):
            tok = tokens[y == label]
            emp = torch.bincount(self.index(tok), minlength=self.V**self.L).double() / len(tok)
            tgt = self.target(label, gamma)
            metrics[f"y{label}/tv"] = float(0.5 * (emp - tgt).abs().sum())
            if samples.get("policy") is not None and samples.get("label_cond") is not None:
                law = self.terminal_distribution(samples["label_cond"](label), policy=samples["policy"])
                metrics[f"y{label}/exact_tv"] = float(0.5 * (law - tgt).abs().sum())
            metrics[f"y{label}/tv_noise_floor"] = float(0.5 * (tgt * (1 - tgt) / len(tok)).sqrt().sum() * math.sqrt(2 / math.pi))
            ax.bar(range(len(tgt)), tgt.numpy(), color="k", alpha=0.4, label="exact target")
            ax.plot(range(len(tgt)), emp.numpy(), "r.", ms=3, label="samples")
            ax.set_title(f"y = {label}, gamma = {gamma:g}")
            ax.legend()
        metrics["max_tv"] = max(v for k, v in metrics.items() if k.endswith("/tv"))
        if any(k.endswith("/exact_tv") for k in metrics):
            metrics["max_exact_tv"] = max(v for k, v in metrics.items() if k.endswith("/exact_tv"))
        fig.tight_layout()
        fig.savefig(out_dir / "samples_vs_target.png", dpi=90)
        plt.close(fig)
        return metrics


def build(seq_len: Annotated[int, Field(ge=1, le=4)] = 3, vocab_size: Annotated[int, Field(ge=2, le=4)] = 4,
          num_labels: Annotated[int, Field(ge=2)] = 2, num_steps: Annotated[int, Field(ge=1)] = 64,
          target_label: Annotated[int, Field(ge=0)] = 1, hidden: Annotated[int, Field(ge=1)] = 128,
          condition_dim: Annotated[int, Field(ge=1)] = 16, seed: int = 0, reward: Any = None) -> DiscreteToy:
    """Recipe entry point for the discrete toy domain.

    `reward` (optional) replaces the task reward log p(target_label | x) used by DDPO / reward
    backprop, e.g. a user's function through `rldiff.core.reward.load_reward`.
    """
    domain = DiscreteToy(seq_len=seq_len, vocab_size=vocab_size, num_labels=num_labels, num_steps=num_steps,
                         target_label=target_label, hidden=hidden, condition_dim=condition_dim, seed=seed)
    if reward is not None:
        domain.reward = reward
    return domain
