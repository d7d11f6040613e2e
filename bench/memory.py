"""Peak CPU memory of one direct-backprop update against the number of steps T (issue #8, item 3).

    .venv/bin/python bench/memory.py             # prints the tables, updates docs/benchmarks.md
    .venv/bin/python bench/memory.py --quick --no-docs

Every configuration runs in a fresh process, forked (`os.fork`) from a parent that has only
imported the libraries (and built each model once, then dropped it, so imports and lazy
initialisation are done). The child builds the model and a CTRL update (`CTRL(mode="backprop", kl_weight=1)`, `kl="grad"`, the training path), then:

1. collects garbage and reads its resident set size (RSS) after building everything;
2. resets the kernel's peak-RSS counter (`echo 5 > /proc/self/clear_refs`, Linux >= 4.0; without it
   the lifetime `ru_maxrss` is used and the import/build peak may hide the update's);
3. runs one update (rollout, reward, backward, AdamW step) and reads the peak RSS (`VmHWM`).

"Peak" is that peak minus the RSS before the update. glibc's mmap threshold is pinned at 64 KiB in
the child (`mallopt(M_MMAP_THRESHOLD, 65536)`) so freed tensors go back to the kernel and RSS tracks
the live memory. A second, allocator-independent number: the bytes of the distinct tensor storages that
autograd saves for backward during the update (`torch.autograd.graph.saved_tensors_hooks`,
parameters excluded), i.e. the graph held when backward starts.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as C

GOAL = 1.1
CONFIGS = {  # name -> (grad mode, gradient checkpointing, log-probs of gradient steps computed without graph)
    "last_k": ("last_k", False, False),
    "last_k + ckpt": ("last_k", True, False),
    "all + ckpt": ("all", True, False),
    "all + ckpt, no log-prob graph": ("all", True, True),
    "all": ("all", False, False),
}


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:  # pragma: no cover
        pass
    return None


def _pin_mmap_threshold() -> bool:
    """glibc: serve every allocation >= 64 KiB by mmap, returned to the kernel on free (no dynamic threshold)."""
    try:
        import ctypes

        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, 65536))  # M_MMAP_THRESHOLD = -3
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        return False


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def child(spec: dict[str, Any]) -> dict[str, Any]:
    """One configuration, measured in this (fresh) process."""
    import torch
    from backprop_step import make_domain

    from rldiff.algorithms.ctrl import CTRL

    C.setup_torch(1)
    _pin_mmap_threshold()
    grad, ckpt, no_lp_graph = CONFIGS[spec["config"]]
    dom = make_domain(spec["model"], spec["T"])
    dom.policy.gradient_checkpointing = ckpt
    if no_lp_graph:  # what-if: the rollout's log-probs (unused by the backprop loss) built without autograd graph
        step = dom.policy.step

        def step_without_log_prob_graph(*args: Any, **kw: Any) -> Any:
            if torch.is_grad_enabled():
                kw["log_prob"] = False  # a [B] log-prob under no_grad would cost the same memory as none
            return step(*args, **kw)

        dom.policy.step = step_without_log_prob_graph
    ctrl = CTRL(dom, gamma=1.0, mode="backprop", batch_size=spec["batch"], grad=grad, k=spec["k"], kl_weight=1.0)
    params = {q.untyped_storage().data_ptr() for m in [*dom.trainable.values(), dom.classifier, ctrl.embedding]
              for q in m.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            saved[s.data_ptr()] = s.nbytes()
        return t

    gc.collect()
    rss0 = _status_kb("VmRSS")
    exact = _reset_peak()
    max0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = ctrl.update(0, torch.Generator().manual_seed(0))
    hwm = _status_kb("VmHWM") if exact else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {**spec, "rss_before_mb": rss0 / 1024, "peak_mb": (hwm - rss0) / 1024, "saved_mb": sum(saved.values()) / 2**20,
            "method": "VmHWM after clear_refs" if exact else f"ru_maxrss (lifetime; {max0} kB before the update)",
            "reference_calls": out["reference_calls"], "loss": out["loss"]}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """Run `child(spec)` in a forked process and return its result."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: measure, report through the pipe, exit without running the parent's cleanup
        code = 0
        try:
            os.close(read)
            try:
                out = json.dumps(child(spec))
            except BaseException as err:  # noqa: BLE001 - reported to the parent
                out, code = json.dumps({"error": f"{type(err).__name__}: {err}"}), 1
            with os.fdopen(write, "w") as fh:
                fh.write(out)
        finally:
            os._exit(code)
    os.close(write)
    with os.fdopen(read) as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    res = json.loads(data) if data else {"error": "the child died without a result"}
    if "error" in res:
        raise RuntimeError(f"memory child {spec} failed: {res['error']}")
    return res


def prepare(models: tuple[str, ...]) -> None:
    """Import everything and build each model once in the parent, so forked children start warm."""
    import torch
    from backprop_step import make_domain

    from rldiff.algorithms.ctrl import CTRL

    C.setup_torch(1)
    for model in models:
        dom = make_domain(model, 2)
        ctrl = CTRL(dom, mode="backprop", batch_size=1, grad="last_k", k=1)
        ctrl.update(0, torch.Generator().manual_seed(0))
        del dom, ctrl
    gc.collect()


def run(quick: bool = False, steps: tuple[int, ...] | None = None, k: int | None = None, batch: int | None = None,
        models: tuple[str, ...] = ("sd32", "dna"), no_ckpt_all_max_t: int = 25) -> dict[str, Any]:
    steps = steps or ((2, 4) if quick else (10, 25, 50, 100))
    K = k or (1 if quick else 5)
    B = batch or (2 if quick else 8)
    results, tables = [], []
    prepare(models)
    for model in models:
        res = {}
        for T in steps:
            for cfg in CONFIGS:
                if cfg == "all" and T > no_ckpt_all_max_t:
                    continue
                r = measure({"model": model, "T": T, "k": K, "batch": B, "config": cfg})
                res[(T, cfg)] = r
                results.append(r)
                print(f"  {model} T={T} {cfg}: peak +{r['peak_mb']:.1f} MB, saved {r['saved_mb']:.1f} MB", file=sys.stderr)
        name = _model_name(model)
        rows = []
        for T in steps:
            row = [str(T)]
            for cfg in CONFIGS:
                r = res.get((T, cfg))
                row.append("not run" if r is None else f"{r['peak_mb']:.1f} / {r['saved_mb']:.1f}")
            rows.append(row)
        flat = []
        for cfg in CONFIGS:
            a, b = res.get((steps[0], cfg)), res.get((steps[-1], cfg))
            flat.append("" if a is None or b is None else
                        f"{b['peak_mb'] / max(a['peak_mb'], 1e-9):.2f}x / {b['saved_mb'] / max(a['saved_mb'], 1e-9):.2f}x")
        rows.append([f"T={steps[-1]} vs T={steps[0]}", *flat])
        heads = ["T", *[f"{c}{f' (K={K})' if c.startswith('last_k') else ''}: peak / saved (MB)" for c in CONFIGS]]
        tables.append((name, C.table(heads, rows)))
    settings = f"batch {B}, K = {K} for last_k, kl_weight 1 (`kl=\"grad\"`), one update per fresh process"
    return {"rows": results, "tables": tables, "settings": settings, "steps": steps,
            "method": results[0]["method"] if results else ""}


def _model_name(model: str) -> str:
    if model == "dna-lite":
        return "DNA masked denoiser, L=200, stand-in classifier"
    if model.startswith("sd"):
        s = int(model[2:])
        return f"tiny SD UNet, latents 4x{s}x{s}"
    return "DNA masked denoiser, L=200"


INTRO = """\
Peak CPU memory of one CTRL direct-backprop update (`CTRL(mode="backprop", kl_weight=1)`: rollout
with `kl="grad"` and `keep_states=False`, classifier reward, backward, AdamW step) against T, at
fixed K for `grad="last_k"` with and without gradient checkpointing (`policy.gradient_checkpointing
= True`), for `grad="all"` with checkpointing, and for `grad="all"` without it at small T. Method:
each configuration runs in a fresh process (forked from a parent that has imported the libraries and
built each model once) that builds the model, collects garbage, reads its RSS,
resets the kernel's peak-RSS counter (`echo 5 > /proc/self/clear_refs`), runs one update and reads
`VmHWM`; **peak** = `VmHWM` - RSS before the update, with glibc's mmap threshold pinned
at 64 KiB (`mallopt(M_MMAP_THRESHOLD, 65536)`) so freed tensors are returned to the kernel. **Saved** = the bytes
of the distinct storages autograd saves for backward during the update
(`torch.autograd.graph.saved_tensors_hooks`, parameters excluded), independent of the allocator;
tensors saved inside a checkpointed region are not seen (checkpointing stores none of them).
The column "no log-prob graph" is a what-if for a proposed change: the same update with the
rollout's log-probabilities of gradient steps computed without autograd graph (the benchmark wraps
`policy.step` to pass `log_prob=False` when grad is enabled; the backprop loss does not use them).
Each cell is "peak / saved" in MB; the last row is the largest T over the smallest."""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    argv = sys.argv[1:] if argv is None else argv
    ap = C.parser(__doc__, timing=False)
    ap.add_argument("--steps", help="comma-separated T values (default 10,25,50,100)")
    ap.add_argument("--k", type=int)
    ap.add_argument("--batch", type=int)
    ap.add_argument("--models", default="sd32,dna", help="comma-separated: sd8, sd32, sd64 (latent side), dna")
    args = ap.parse_args(argv)
    load0 = C.load_average()
    steps = tuple(int(s) for s in args.steps.split(",")) if args.steps else None
    res = run(args.quick, steps, args.k, args.batch, tuple(args.models.split(",")))
    load1 = C.load_average()
    print(f"Peak memory of one update ({res['settings']}; {res['method']}):\n")
    for name, tbl in res["tables"]:
        print(f"{name}:\n\n{tbl}\n")
    if not (args.quick or args.no_docs):
        parts = [f"{res['settings']}:", ""]
        for name, tbl in res["tables"]:
            parts += [f"{name}:", "", tbl, ""]
        parts.append(FINDINGS.strip())
        C.update_docs(C.Report("memory", "Memory against T (`bench/memory.py`)", INTRO, "\n".join(parts),
                               C.command_line("memory.py", argv), load0, load1))
    return res


FINDINGS = """\
What the numbers say:

- **Goal met for fixed K**: with `grad="last_k"` the peak is flat from T = 10 to T = 100
  (1.00-1.01x, with and without checkpointing): the T - K steps without gradient keep nothing
  (`keep_states=False` in the algorithms, and their log-prob/KL entries are [B] vectors). The peak
  is K steps of activations without checkpointing, one step's (recomputed in backward) with it.
- **`grad="all"` with checkpointing grows linearly in T, by design**: each step keeps what
  backward needs to recompute and differentiate it. A census at the moment the loss is formed
  (`gc.get_objects()`, SD 4x32x32, batch 8) shows 3 Python-visible sample-sized tensors and 2 CPU
  RNG states (5 KB; `checkpoint(preserve_rng_state=True)` for the policy and the reference call)
  per step, and autograd saves 3 more sample-sized tensors per step ("saved" column: 0.375 MB per
  step = 3 x 128 KB); RSS held after the forward grows ~1.6 MB per step (28 MB at T = 10, 92 MB at
  T = 50), so about half of it is not attributable to tensors Python or the saved-tensor hook see
  (autograd nodes, the checkpoint frames, allocator).
- **One of the three saved tensors per step is avoidable**: the rollout computes every gradient
  step's log-probability with autograd graph (`gaussian_log_prob`'s `(x - mean) ** 2` saves
  `x - mean`, one sample-sized tensor; the masked step saves `prev` and a clamp mask for `taken`),
  though the backprop loss never differentiates it. Without that graph ("no log-prob graph"
  column) "saved" drops by a third for SD (38.1 -> 25.6 MB at T = 100) and by 10% for DNA, and the
  peak by 6.5% / 2.5%. The other two saved per step are the KL's `mean - mean_ref` (needed) and one
  more sample-sized tensor of the step's arithmetic.
- Without checkpointing `grad="all"` keeps every step's activations: ~50 MB per step at these sizes
  (1.3 GB at T = 25); T = 50 and 100 were not run.
"""

if __name__ == "__main__":
    main()
