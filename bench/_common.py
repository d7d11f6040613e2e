"""Shared pieces of the benchmarks: the models, interleaved timing, and the docs/benchmarks.md writer.

Each benchmark script (`bench/*.py`) builds its models with the helpers below, times its variants
with `interleaved` (the variants alternate inside every repetition, so load drift on a shared
machine hits all of them; medians are reported), prints Markdown tables, and replaces its own
section of `docs/benchmarks.md` (between `<!-- bench:NAME -->` markers) together with the machine,
the load average before/after, the versions and the exact command.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

DOCS = REPO / "docs" / "benchmarks.md"
#: order of this package's sections in docs/benchmarks.md (all above the Ray section)
SECTION_ORDER = ("rollout_overhead", "backprop_step", "anchor_precision", "memory", "logprob_reference", "sample_efficiency",
                 "sample_efficiency_dna")


# ---------------------------------------------------------------------------------------- environment
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or "unknown CPU"


def load_average() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover
        return (float("nan"),) * 3


def git_commit() -> str:
    """Short HEAD hash, plus "+ uncommitted changes in rldiff/" when the library differs from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "rldiff", "domains"], cwd=REPO,
                               capture_output=True, text=True, check=False).stdout.strip()
    except (OSError, subprocess.CalledProcessError):  # pragma: no cover
        return "unknown"
    return head + (" (+ uncommitted changes in rldiff/ or domains/)" if dirty else "")


def versions() -> str:
    try:
        import diffusers

        dv = diffusers.__version__
    except ImportError:  # pragma: no cover
        dv = "not installed"
    return (f"Python {platform.python_version()}, torch {torch.__version__}, diffusers {dv}, "
            f"rldiff at commit {git_commit()}")


def machine() -> str:
    return (f"{cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, no GPU; "
            f"torch threads {torch.get_num_threads()}")


def parser(doc: str | None, *, timing: bool = True) -> argparse.ArgumentParser:
    """The options every timing benchmark shares (--quick, --no-docs, and with `timing` --repeats,
    --batch, --num-steps, --threads); a script adds its own."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny settings (smoke test); does not write the docs")
    if timing:
        ap.add_argument("--repeats", type=int)
        ap.add_argument("--batch", type=int)
        ap.add_argument("--num-steps", type=int)
        ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    return ap


def setup_torch(threads: int = 1) -> None:
    """One intra-op thread (a shared 2-core machine: OpenMP spinning makes small models erratic)."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set in this process
        pass


# ---------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    """Per-variant times of an interleaved measurement, in seconds."""

    wall: dict[str, list[float]] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)

    def median(self, name: str, clock: str = "wall") -> float:
        return statistics.median(getattr(self, clock)[name])

    def ratio(self, num: str, den: str, clock: str = "wall") -> float:
        """Median over repetitions of the paired ratio num / den (same repetition, adjacent in time)."""
        a, b = getattr(self, clock)[num], getattr(self, clock)[den]
        return statistics.median(x / y for x, y in zip(a, b))


def interleaved(variants: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> Timing:
    """Time each variant `repeats` times, alternating them within every repetition.

    The order is reversed on odd repetitions (A B C, C B A, ...), so neither variant always runs
    first after the other. `warmup` untimed rounds run first. Records wall time
    (`time.perf_counter`) and this process's CPU time (`time.process_time`; with one torch thread it
    is the compute the variant needed, less sensitive to other jobs than wall time).
    """
    names = list(variants)
    for _ in range(warmup):
        for n in names:
            variants[n]()
    out = Timing({n: [] for n in names}, {n: [] for n in names})
    for r in range(repeats):
        for n in (names if r % 2 == 0 else names[::-1]):
            w0, c0 = time.perf_counter(), time.process_time()
            variants[n]()
            c1, w1 = time.process_time(), time.perf_counter()
            out.wall[n].append(w1 - w0)
            out.cpu[n].append(c1 - c0)
    return out


# ---------------------------------------------------------------------------------------- tables
def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A Markdown table; `align` is one character per column ("l" or "r")."""
    align = align or "l" + "r" * (len(headers) - 1)
    sep = ["---" if a == "l" else "---:" for a in align]
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join(sep) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(x: float, digits: int = 1) -> str:
    return f"{x:,.{digits}f}"


# ---------------------------------------------------------------------------------------- docs
@dataclass
class Report:
    """One benchmark's section of docs/benchmarks.md."""

    key: str  # section key (file stem)
    title: str  # "## ..." heading text
    intro: str  # what is measured and how
    body: str  # tables and findings (Markdown)
    command: str  # the exact command
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    machine: str = field(default_factory=machine)
    versions: str = field(default_factory=versions)

    def markdown(self) -> str:
        lb, la = self.load_before, self.load_after
        return "\n".join([
            f"<!-- bench:{self.key} -->",
            f"## {self.title}",
            "",
            self.intro.strip(),
            "",
            self.body.strip(),
            "",
            (f"- Machine: {self.machine}; load average (1/5/15 min) {lb[0]:.2f}/{lb[1]:.2f}/{lb[2]:.2f} before, "
             f"{la[0]:.2f}/{la[1]:.2f}/{la[2]:.2f} after."),
            f"- Versions: {self.versions}.",
            "- Command:",
            "",
            "  ```bash",
            f"  {self.command}",
            "  ```",
            f"<!-- /bench:{self.key} -->",
            "",
        ])


def command_line(script: str, argv: Sequence[str]) -> str:
    return " ".join([".venv/bin/python", f"bench/{script}", *map(shlex.quote, argv)])


def _insert(text: str, key: str, section: str) -> str:
    """Insert a new section: before the next section of SECTION_ORDER present, else after the last
    earlier one present, else before the first "## " heading (the Ray section), else at the end."""
    order = list(SECTION_ORDER)
    idx = order.index(key) if key in order else len(order)
    for k in order[idx + 1:]:
        pos = text.find(f"<!-- bench:{k} -->")
        if pos >= 0:
            return text[:pos] + section + "\n" + text[pos:]
    for k in reversed(order[:idx]):
        end = f"<!-- /bench:{k} -->"
        pos = text.find(end)
        if pos >= 0:
            pos = text.find("\n", pos) + 1 or len(text)
            return text[:pos] + "\n" + section + text[pos:]
    m = re.search(r"^## ", text, re.MULTILINE)
    pos = m.start() if m else len(text)
    return text[:pos] + section + "\n" + text[pos:]


def update_docs(report: Report, path: Path = DOCS) -> None:
    """Replace (or insert) the report's section, keeping every other section (the Ray one included).

    A new section goes before the next section of SECTION_ORDER that exists, else before the first
    other "## " heading (the Ray section), else at the end.
    """
    text = path.read_text() if path.exists() else "# Benchmarks\n\n"
    section = report.markdown()
    pat = re.compile(rf"<!-- bench:{re.escape(report.key)} -->.*?<!-- /bench:{re.escape(report.key)} -->\n?", re.DOTALL)
    if pat.search(text):
        text = pat.sub(lambda _: section, text, count=1)
    else:
        text = _insert(text, report.key, section)
    path.write_text(text)


# ---------------------------------------------------------------------------------------- models
@dataclass
class Model:
    """A policy plus what the benchmarks' bare loops need to call the same networks directly."""

    name: str
    policy: Any  # GaussianPolicy | MaskedPolicy
    denoiser: Callable[..., torch.Tensor]  # trainable network (x_t, t, cond) -> eps / logits
    reference: Callable[..., torch.Tensor]  # frozen reference view (adapters disabled)
    trainable: dict[str, torch.nn.Module]
    shape: tuple[int, ...] | None  # Gaussian sample shape (None for masked)
    make_cond: Callable[[int], Any]  # batch size -> condition
    params: int = 0  # parameters of the denoiser


def null_denoiser_model(m: Model) -> Model:
    """The same policy and loops with a denoiser that costs almost nothing (isolates per-step overhead).

    Gaussian: eps = 0.5 x; masked: logits = x @ W (a fixed [V+1, V] matrix). Reference: the same.
    """
    import copy
    import dataclasses

    if m.shape is None:
        w = torch.randn(m.policy.vocab_size + 1, m.policy.vocab_size, generator=torch.Generator().manual_seed(0))

        def net(x, t, c):
            return x @ w
    else:
        def net(x, t, c):
            return 0.5 * x
    policy = copy.copy(m.policy)
    policy.denoiser, policy.reference = net, net
    return dataclasses.replace(m, name=f"{m.name.split(' (')[0]}, null denoiser", policy=policy, denoiser=net,
                               reference=net)


def tiny_sd(num_steps: int, sample_size: int = 8, seed: int = 0, lora_rank: int = 4, eta: float = 1.0) -> Model:
    """The tests' tiny SD UNet (domains/images/tiny.py config) with LoRA, its reference view and SD 1.5's DDIM schedule.

    `sample_size` is the latent side (8 in the tests; SD 1.5 at 512 px has 64).
    """
    from diffusers import DDIMScheduler, UNet2DConditionModel

    from domains.images.lora import ReferenceView, add_lora
    from domains.images.sd15 import SD_LORA_TARGETS, SDDenoiser
    from domains.images.tiny import TEXT_DIM
    from rldiff.core.gaussian import GaussianPolicy

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16), layers_per_block=1, sample_size=sample_size, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=TEXT_DIM, norm_num_groups=4, attention_head_dim=4,
    )
    n_params = sum(p.numel() for p in unet.parameters())
    add_lora(unet, rank=lora_rank, target_modules=tuple(SD_LORA_TARGETS))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    denoiser = SDDenoiser(unet)
    reference = ReferenceView(denoiser, unet)
    policy = GaussianPolicy.from_scheduler(denoiser, scheduler, num_steps, eta=eta, reference=reference,
                                           condition_dim=denoiser.condition_dim)
    embeds = torch.randn(1, 16, TEXT_DIM, generator=torch.Generator().manual_seed(seed + 1))

    def make_cond(b: int) -> dict[str, Any]:
        return {"prompt_embeds": embeds.expand(b, -1, -1)}

    return Model(f"tiny SD UNet ({n_params / 1e3:.0f}k params, latents 4x{sample_size}x{sample_size})", policy,
                 denoiser, reference, {"unet": unet}, (4, sample_size, sample_size), make_cond, n_params)


def dna(num_steps: int, lora_rank: int = 8) -> Model:
    """The shipped DNA masked denoiser (domains/dna/weights) with LoRA and its reference view."""
    from domains.dna.domain import DEFAULT_DENOISER
    from domains.dna.model import VOCAB, load_denoiser, with_lora
    from rldiff.core.masked import MaskedPolicy

    base = load_denoiser(DEFAULT_DENOISER)
    n_params = sum(p.numel() for p in base.parameters())
    adapted, reference = with_lora(base, rank=lora_rank)
    policy = MaskedPolicy(adapted, VOCAB, base.config.seq_len, num_steps, reference=reference,
                          condition_dim=adapted.condition_dim)
    return Model(f"DNA masked denoiser ({n_params / 1e3:.0f}k params, L={base.config.seq_len})", policy, adapted,
                 reference, {"denoiser": adapted}, None, lambda b: None, n_params)
