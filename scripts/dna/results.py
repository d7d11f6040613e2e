"""DNA results table: pre-trained model, CFG, SVDD, DDPO, reward backprop and CTRL on the same metrics.

    nice .venv/bin/python scripts/dna/results.py                  # everything (~1 h on one core)
    nice .venv/bin/python scripts/dna/results.py --reuse ctrl=runs/dna/ctrl_v3   # take CTRL's eval.json from a run
    nice .venv/bin/python scripts/dna/results.py --only cfg,svdd  # some methods (the others' rows are reused if done)
    .venv/bin/python scripts/dna/results.py --quick --runs-dir /tmp/q --docs /tmp/q/results.md   # smoke test

Every method runs through rldiff's normal runner (the `rldiff run` command line, in this process)
with its shipped recipe, each in `<runs-dir>/<method>/`; the same evaluation (256 samples, 64 per
requested cell line, `domains.dna.DNADomain.evaluate`) scores all of them:

- pretrained: the shipped model's own (unconditional) samples, T = 10 steps like the recipes,
  labelled 64 per cell line as if that cell line had been requested (evaluated here, no training);
- cfg:       `dna/cfg_cell_type`        (classifier-free guidance, trained on labelled peaks);
- svdd:      `dna/svdd_cell_type`       (value-guided decoding, no training);
- ddpo:      `dna/ddpo_specificity`     (DDPO on the specificity reward);
- backprop:  `dna/backprop_specificity` (DRAKES-style reward backprop with a KL);
- ctrl:      `dna/ctrl_cell_type`       (CTRL; run last so it uses the latest recipe).

Resuming: a method whose run directory already holds its final `eval.json` is not run again; a
run directory without one (a killed run) is continued from its latest checkpoint with
`resume=` (and one that finished training but lost its `eval.json` is evaluated with `rldiff
eval`). `--reuse METHOD=RUN_DIR` takes another run's `eval.json` instead. Wall time is what
this script measured for the run (summed over resumptions, `<run>/results_wall.json`), else the
time between the run's `config.yaml` and its `eval.json`.

Writes the `## DNA` section of docs/results.md (between `<!-- bench:results:dna -->` markers;
other sections are kept) and `<runs-dir>/results_dna.json`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
for p in (REPO, REPO / "bench"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

from bench._common import Report, load_average, machine, update_docs, versions
from domains.dna.data import CELL_LINES

#: method -> shipped recipe (None: evaluated here); the order in which they run and are listed
METHODS: dict[str, str | None] = {
    "pretrained": None,
    "cfg": "dna/cfg_cell_type",
    "svdd": "dna/svdd_cell_type",
    "ddpo": "dna/ddpo_specificity",
    "backprop": "dna/backprop_specificity",
    "ctrl": "dna/ctrl_cell_type",
}
LABELS = {
    "pretrained": "pre-trained (unconditional samples)",
    "cfg": "CFG, w = 2 (`dna/cfg_cell_type`)",
    "svdd": "SVDD, M = 16 (`dna/svdd_cell_type`)",
    "ddpo": "DDPO, specificity (`dna/ddpo_specificity`)",
    "backprop": "reward backprop, specificity (`dna/backprop_specificity`)",
    "ctrl": "CTRL (`dna/ctrl_cell_type`)",
}
DOMAIN_QUICK = ["domain.num_steps=2", "domain.elbo_samples=1", "domain.eval_real_per_class=64"]
QUICK = {
    "cfg": ["algorithm.batch_size=4", "train.steps=2"],
    "svdd": ["algorithm.num_candidates=2", "algorithm.batch_size=4"],
    "ddpo": ["algorithm.batch_size=4", "train.steps=2"],
    "backprop": ["algorithm.batch_size=4", "train.steps=2"],
    "ctrl": ["algorithm.batch_size=4", "train.steps=2"],
}
WALL_FILE = "results_wall.json"
NOTE_FILE = "results_note.txt"  # optional one-line remark on a run, shown in the table's run list
#: docs/results.md's opening when this script creates it (the same as bench/sample_efficiency.py's)
RESULTS_INTRO = """# Results

Measured comparisons of rldiff's algorithms, each produced by one command in the repository (the
command, machine and versions are given under each section). Benchmarks of speed and memory are in
[benchmarks.md](benchmarks.md).

"""
SECTION = "results:dna"


def _overrides(method: str, args: argparse.Namespace, run_dir: Path) -> list[str]:
    over = [f"train.eval_samples={args.eval_samples}", f"output_dir={run_dir}"]
    if args.quick:
        over += DOMAIN_QUICK + QUICK[method] + ["train.checkpoint_every=0", "logging.tensorboard=false"]
    return over


def _add_wall(run_dir: Path, seconds: float, cpu_seconds: float) -> None:
    f = run_dir / WALL_FILE
    old = json.loads(f.read_text()) if f.exists() else {"seconds": 0.0, "cpu_seconds": 0.0, "invocations": 0}
    new = {"seconds": old["seconds"] + seconds, "invocations": old["invocations"] + 1}
    if "cpu_seconds" in old:  # unknown for a wall time taken from the files' times (see `rescore`)
        new["cpu_seconds"] = old["cpu_seconds"] + cpu_seconds
    f.write_text(json.dumps(new) + "\n")


def wall_seconds(run_dir: Path) -> tuple[float | None, float | None]:
    """(wall, CPU) seconds of a run: measured by this script, else wall from the files' times."""
    f = run_dir / WALL_FILE
    if f.exists():
        d = json.loads(f.read_text())
        return float(d["seconds"]), d.get("cpu_seconds")
    cfg, ev = run_dir / "config.yaml", run_dir / "eval.json"
    if cfg.exists() and ev.exists():
        return ev.stat().st_mtime - cfg.stat().st_mtime, None
    return None, None


def run_recipe(method: str, args: argparse.Namespace, run_dir: Path) -> None:
    """`rldiff run RECIPE overrides` (fresh), or `rldiff run <run>/config.yaml resume=<run>`."""
    from accelerate.state import AcceleratorState

    from rldiff.cli import main as rldiff_main

    if (run_dir / "config.yaml").exists():
        argv = ["run", "--no-progress", str(run_dir / "config.yaml"), f"resume={run_dir}"]
    else:
        argv = ["run", "--no-progress", METHODS[method], *_overrides(method, args, run_dir)]
    print(f"[{method}] rldiff {shlex.join(argv)}", flush=True)
    AcceleratorState._reset_state(reset_partial_state=True)  # one Accelerator per run in this process
    t0, c0 = time.time(), time.process_time()
    rc = rldiff_main(argv)
    if rc == 0 and not (run_dir / "eval.json").exists():
        # it had already finished training (final checkpoint) but lost its eval.json: evaluate the
        # final checkpoint, which draws the same samples as the run's own final evaluation
        print(f"[{method}] rldiff eval {run_dir}", flush=True)
        AcceleratorState._reset_state(reset_partial_state=True)
        rc = rldiff_main(["eval", str(run_dir)])
    _add_wall(run_dir, time.time() - t0, time.process_time() - c0)
    if rc != 0:
        raise SystemExit(f"[{method}] rldiff exited with status {rc}; rerun this script to resume it")


def rescore(method: str, args: argparse.Namespace, run_dir: Path) -> None:
    """Evaluate a finished run again (`rldiff eval`: the final checkpoint draws the same samples as the
    run's own evaluation) with the current evaluation code and baseline; its time record is kept."""
    from accelerate.state import AcceleratorState

    from rldiff.cli import main as rldiff_main

    print(f"[{method}] rescoring {run_dir}", flush=True)
    wall_file = run_dir / WALL_FILE
    if not wall_file.exists():  # its wall time came from the files' times, which a new eval.json would change
        wall, _ = wall_seconds(run_dir)
        if wall is not None:
            wall_file.write_text(json.dumps({"seconds": wall, "invocations": 1}) + "\n")
    if method == "pretrained":
        run_pretrained(args, run_dir, record_time=False)
        return
    AcceleratorState._reset_state(reset_partial_state=True)
    if rldiff_main(["eval", str(run_dir)]) != 0:
        raise SystemExit(f"[{method}] rldiff eval {run_dir} failed; its previous eval.json is untouched")


def run_pretrained(args: argparse.Namespace, run_dir: Path, record_time: bool = True) -> None:
    """Sample the shipped model (T = 10 like the recipes) and evaluate, labelled evenly over the cell lines."""
    import torch

    from domains.dna import build

    t0, c0 = time.time(), time.process_time()
    quick = args.quick
    domain = build(num_steps=2 if quick else 10, threads=1, elbo_samples=1 if quick else 8,
                   eval_real_per_class=64 if quick else 2000)
    n = args.eval_samples
    tokens = domain.sample_pretrained(n, torch.Generator().manual_seed(0))
    y = torch.arange(n) % domain.num_labels
    out_dir = run_dir / "eval" / "step_000000"
    out_dir.mkdir(parents=True, exist_ok=True)
    metrics = {k: float(v) for k, v in domain.evaluate({"x0": tokens, "y": y}, out_dir).items()}
    (run_dir / "eval.json").write_text(json.dumps(
        {"step": 0, "num_samples": n, "metrics": metrics, "out_dir": "eval/step_000000"}, indent=2) + "\n")
    if record_time:
        _add_wall(run_dir, time.time() - t0, time.process_time() - c0)


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _per_cell(m: dict[str, float], key: str, digits: int = 2, suffix: str = "") -> str:
    vals = [m.get(f"{key}_{c}") for c in CELL_LINES]
    if any(v is None for v in vals):
        return "n/a"
    return " / ".join(f"{v:.{digits}f}{suffix}" for v in vals)


def _fmt(x: float | None, spec: str) -> str:
    return "n/a" if x is None else format(x, spec)


def table(rows: dict[str, dict[str, Any]]) -> str:
    head = ["method", "oracle accuracy (GM12878 / hESC / K562 / HepG2)", "min", "3-mer r (per cell line)",
            "motif enrichment (per cell line)", "ELBO ratio", "unique", "Hamming", "wall (CPU)"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for method, row in rows.items():
        m, w, c = row["metrics"], row["wall_seconds"], row["cpu_seconds"]
        lines.append("| " + " | ".join([
            LABELS[method], _per_cell(m, "oracle_acc"), _fmt(m.get("oracle_acc_min"), ".2f"),
            _per_cell(m, "kmer3_corr"), _per_cell(m, "motif_enrichment", 1, "x"),
            _fmt(m.get("elbo_ratio"), ".3f"), _fmt(m.get("unique_fraction"), ".2f"),
            _fmt(m.get("hamming_mean"), ".0f"),
            ("n/a" if w is None else f"{w / 60:.1f} min") + ("" if c is None else f" ({c / 60:.1f})"),
        ]) + " |")
    return "\n".join(lines)


INTRO = """\
Cell-type-specific 200 bp regulatory DNA (`domains/dna`, docs/dna.md): every method asks for 64
sequences per cell line (256 in all, seed 0, T = 10 sampler steps) and is scored by the same
`DNADomain.evaluate`: **oracle accuracy** = how often the held-out gReLU oracle (trained on
chromosomes disjoint from the classifier's, never optimised against) calls the requested cell
line; **3-mer r** = Pearson r of 3-mer frequencies with real training sequences of that cell line
(low = unnatural sequences); **motif enrichment** = known-motif FIMO hits per sequence relative to
the pre-trained model's own samples drawn with the same T = 10 (2,048 of them,
`domains/dna/weights/pretrained_samples_T10.txt.gz`); **ELBO ratio** = ELBO under the pre-trained
model relative to those samples (1 = as likely; > 1 = less likely); **unique** = fraction of distinct sequences;
**Hamming** = mean pairwise Hamming distance (of 200); **wall (CPU)** = wall-clock minutes of the
run on one torch thread, training + final evaluation (in brackets: the CPU minutes of the process,
less sensitive to other jobs sharing the 2 cores). SVDD has no training: its time is sampling the
256 sequences (16 candidates per step, the classifier scoring each), which every later batch pays
again, while a fine-tuned policy samples 256 sequences in well under a minute.

The pre-trained row labels its unconditional samples 64 per cell line as if requested (chance
level ~0.25). CFG fine-tunes the y-embedding and LoRA on all ~20k labelled peaks of the CTRL
classifier's chromosomes, the labels that classifier was trained on (MDLM loss, label dropout 0.1) and guides with w = 2; SVDD keeps, at each step, the best of
16 candidates by the classifier's log p(y | x0_hat); DDPO (PPO-clipped, no KL) and reward
backprop (Gumbel-Rao through all steps, KL weight 0.1, reward scale 3) maximise the classifier's
specificity log p(y|x) - max_{k != y} log p(k|x) with one y-conditioned policy
(`label_conditioning`: zero-initialised y-embedding + LoRA); CTRL maximises gamma log p(y|x) with
the exact KL (its recipe). DDPO, reward backprop, SVDD and CTRL use the classifier that the
oracle is held out from; CFG uses the labels themselves."""


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "dna" / "results",
                    help="where each method's run lives (<runs-dir>/<method>/)")
    ap.add_argument("--only", default=None, help="comma-separated methods to run (others: reused if done)")
    ap.add_argument("--reuse", action="append", default=[], metavar="METHOD=RUN_DIR",
                    help="take METHOD's eval.json from an existing run directory")
    ap.add_argument("--rescore", default=None, metavar="METHODS",
                    help="comma-separated methods (or 'all') whose finished runs are evaluated again from their "
                         "final checkpoint -- the same samples, scored by the current evaluation (e.g. after a "
                         "baseline change); their time records are kept")
    ap.add_argument("--quick", action="store_true", help="tiny settings (smoke test)")
    ap.add_argument("--eval-samples", type=int, default=None, help="samples per method (default 256; quick 8)")
    ap.add_argument("--docs", type=Path, default=REPO / "docs" / "results.md", help="Markdown file to update")
    ap.add_argument("--no-docs", action="store_true", help="do not write the Markdown section")
    ap.add_argument("--remark", default="", help="a paragraph added under the table (e.g. how loaded the machine was)")
    args = ap.parse_args(argv)
    if args.eval_samples is None:
        args.eval_samples = 8 if args.quick else 256
    if args.quick and not args.no_docs and args.docs.resolve() == (REPO / "docs" / "results.md").resolve():
        ap.error("--quick would overwrite the real table: give --docs elsewhere or --no-docs")
    reuse: dict[str, Path] = {}
    for item in args.reuse:
        method, _, path = item.partition("=")
        if method not in METHODS or not path:
            ap.error(f"--reuse wants METHOD=RUN_DIR with METHOD in {', '.join(METHODS)}; got {item!r}")
        if not (Path(path) / "eval.json").exists():
            ap.error(f"--reuse {item}: {path}/eval.json does not exist")
        reuse[method] = Path(path)
    only = set(METHODS) if args.only is None else {m.strip() for m in args.only.split(",") if m.strip()}
    if unknown := only - set(METHODS):
        ap.error(f"--only: unknown method(s) {sorted(unknown)}; valid: {', '.join(METHODS)}")
    rescoring = set() if args.rescore is None else (
        set(METHODS) if args.rescore.strip() == "all" else {m.strip() for m in args.rescore.split(",") if m.strip()})
    if unknown := rescoring - set(METHODS):
        ap.error(f"--rescore: unknown method(s) {sorted(unknown)}; valid: {', '.join(METHODS)}")
    args.runs_dir.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(1)  # as every recipe here (domain.threads: 1); also what `machine()` reports
    load_before = load_average()

    rows: dict[str, dict[str, Any]] = {}
    for method, recipe in METHODS.items():
        run_dir = reuse.get(method, args.runs_dir / method)
        if method in only and method not in reuse and not (run_dir / "eval.json").exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            if recipe is None:
                run_pretrained(args, run_dir)
            else:
                run_recipe(method, args, run_dir)
        elif method in rescoring and (run_dir / "eval.json").exists():
            rescore(method, args, run_dir)
        if (run_dir / "eval.json").exists():
            ev = json.loads((run_dir / "eval.json").read_text())
            wall, cpu = wall_seconds(run_dir)
            rows[method] = {"run_dir": _rel(run_dir), "step": ev["step"], "num_samples": ev["num_samples"],
                            "metrics": ev["metrics"], "wall_seconds": wall, "cpu_seconds": cpu}
            if (run_dir / NOTE_FILE).exists():  # e.g. how an interrupted run's wall time was counted
                rows[method]["note"] = (run_dir / NOTE_FILE).read_text().strip()
            print(f"[{method}] {run_dir}: oracle acc {_per_cell(ev['metrics'], 'oracle_acc')}", flush=True)
        else:
            print(f"[{method}] no eval.json in {run_dir}: left out of the table", flush=True)

    (args.runs_dir / "results_dna.json").write_text(json.dumps(rows, indent=2) + "\n")
    body = table(rows)
    sources = "\n".join(f"- {m}: `{r['run_dir']}` ({r['step']} updates, {r['num_samples']} samples)"
                        + (f"; {r['note']}" if r.get("note") else "") for m, r in rows.items())
    cmd = " ".join(["nice .venv/bin/python scripts/dna/results.py",
                    *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    print(body)
    if not args.no_docs:
        report = Report(key=SECTION, title="DNA", intro=INTRO, body=body + (f"\n\n{args.remark.strip()}" if args.remark.strip() else "") + "\n\nRuns:\n\n" + sources,
                        command=cmd, load_before=load_before, load_after=load_average(),
                        machine=machine(), versions=versions())
        if not args.docs.exists():
            args.docs.parent.mkdir(parents=True, exist_ok=True)
            args.docs.write_text(RESULTS_INTRO)
        update_docs(report, path=args.docs)
        print(f"wrote the DNA section of {args.docs}")
    return rows


if __name__ == "__main__":
    main()
