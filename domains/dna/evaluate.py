"""Evaluation of generated regulatory DNA: oracle accuracy, specificity, k-mers, motifs, ELBO, diversity.

`evaluate_sequences` takes generated sequences with the cell line each was requested for and
returns a flat dict of floats (names below; `<c>` is a cell line):

    oracle_acc_<c>, oracle_acc_mean, oracle_acc_min     held-out oracle argmax == requested cell line
    oracle_prob_<c>, oracle_specificity_<c>             oracle p(target) and log p(target) - max off-target log p
    classifier_acc_<c>, classifier_acc_mean             the same with the CTRL classifier (trained on)
    kmer3_corr_<c>, kmer3_corr_mean, kmer3_corr_min     3-mer Pearson r with real sequences of <c>
    motif_hits_<c>, motif_enrichment_<c>, ..._min       known <c> motifs per sequence, vs pre-trained samples
    elbo_per_seq, elbo_per_base, elbo_ratio             MDLM ELBO under the pre-trained model (ratio to its own samples)
    unique_fraction, hamming_mean, hamming_mean_<c>     diversity

and writes `samples.fasta` (Biopython), `motif_counts.png` (per cell line, generated vs
pre-trained samples) and `metrics.json` into `out_dir`.

Known motifs: HOCOMOCO v12 core motifs as shipped with gReLU (`grelu/resources/meme/
H12CORE_meme_format.meme`), scanned with gReLU's FIMO (`grelu.interpret.motifs.scan_sequences`,
p < 1e-4, both strands). HOCOMOCO names TFs by UniProt id: POU5F1 is PO5F1, EBF1 is COE1.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from domains.dna.data import CELL_LINES, decode, write_fasta
from domains.dna.kmers import kmer_correlation

#: Known cell-type motifs (HOCOMOCO v12 TF ids) per cell line.
CELL_TYPE_MOTIFS: dict[str, tuple[str, ...]] = {
    "GM12878": ("SPI1", "IRF4", "COE1"),  # COE1 = EBF1
    "hESC": ("PO5F1", "SOX2"),  # PO5F1 = POU5F1 (OCT4)
    "K562": ("GATA1", "TAL1", "KLF1"),
    "HepG2": ("HNF4A", "HNF1A", "FOXA2", "CEBPA"),
}
MOTIF_DB = "hocomoco_v12"


# ------------------------------------------------------------------------- motifs
@lru_cache(maxsize=8)
def _read_meme(path: str, tfs: tuple[str, ...]) -> dict[str, np.ndarray]:
    motifs: dict[str, np.ndarray] = {}
    name, rows = None, []
    with open(path) as fh:
        for line in fh:
            if line.startswith("MOTIF"):
                if name is not None and rows:
                    motifs[name] = np.array(rows, dtype=np.float32).T
                name = line.split()[1]
                name = name if name.split(".")[0] in tfs else None
                rows = []
            elif name is not None and line[:1] in "0123456789." and line.strip():
                rows.append([float(v) for v in line.split()])
        if name is not None and rows:
            motifs[name] = np.array(rows, dtype=np.float32).T
    return motifs


_GRELU_MEME = {
    "hocomoco_v12": "H12CORE_meme_format.meme",
    "hocomoco_v13": "H13CORE_meme_format.meme",
    "consensus": "jaspar_2024_consensus.meme",
}


def meme_path(db: str = MOTIF_DB) -> Path:
    """Path of a MEME file gReLU ships (by its gReLU name) or of a user's file.

    Same names as `grelu.resources.get_meme_file_path`, resolved without importing
    `grelu.resources` (which pulls in Lightning and W&B).
    """
    if db in _GRELU_MEME:
        from importlib.resources import files

        return Path(str(files("grelu") / "resources" / "meme" / _GRELU_MEME[db]))
    path = Path(db)
    if not path.is_file():
        raise FileNotFoundError(f"motif file {db!r} not found; use a path or one of {sorted(_GRELU_MEME)}")
    return path


def load_motifs(tfs: Sequence[str] | None = None, db: str = MOTIF_DB) -> dict[str, np.ndarray]:
    """Position probability matrices [4, w] of every motif of the given TFs in a gReLU MEME file.

    Reads only the requested motifs (the full HOCOMOCO file takes ~30 s with memelite).

    Args:
        tfs: TF ids (the part of the motif name before the first dot); default all in
            `CELL_TYPE_MOTIFS`.
        db: a gReLU MEME name ("hocomoco_v12", "hocomoco_v13", "consensus") or a path.
    """
    tfs = tuple(sorted(set(tfs or [t for v in CELL_TYPE_MOTIFS.values() for t in v])))
    motifs = _read_meme(str(meme_path(db)), tfs)
    missing = set(tfs) - {m.split(".")[0] for m in motifs}
    if missing:
        raise ValueError(f"motif file {db!r} has no motifs for {sorted(missing)}")
    return motifs


def motif_counts(sequences: Sequence[str], motifs: Mapping[str, np.ndarray] | None = None,
                 pthresh: float = 1e-4) -> dict[str, np.ndarray]:
    """FIMO hits (both strands) per sequence per TF, with gReLU's `scan_sequences`.

    Returns:
        {tf: int array [N]} (all motif variants of a TF pooled).
    """
    from grelu.interpret.motifs import scan_sequences

    motifs = dict(motifs or load_motifs())
    tfs = sorted({m.split(".")[0] for m in motifs})
    out = {tf: np.zeros(len(sequences), dtype=np.int64) for tf in tfs}
    if len(sequences) == 0:
        return out
    sites = scan_sequences(list(sequences), motifs, pthresh=pthresh, rc=True)
    if len(sites):
        tf = sites["motif"].str.split(".").str[0].to_numpy()
        idx = sites["seq_idx"].to_numpy().astype(np.int64)
        for name in tfs:
            np.add.at(out[name], idx[tf == name], 1)
    return out


# ------------------------------------------------------------------------- diversity
def pairwise_hamming(tokens: Tensor) -> Tensor:
    """[N, N] Hamming distances between token sequences [N, L] (0 on the diagonal)."""
    oh = torch.nn.functional.one_hot(tokens.long(), int(tokens.max()) + 1 if tokens.numel() else 1).flatten(1).float()
    return tokens.shape[1] - oh @ oh.T


def diversity(tokens: Tensor) -> dict[str, float]:
    """Unique fraction and mean pairwise Hamming distance (over distinct index pairs)."""
    N = len(tokens)
    uniq = len({tuple(r) for r in tokens.tolist()}) / max(N, 1)
    if N < 2:
        return {"unique_fraction": uniq, "hamming_mean": float("nan")}
    d = pairwise_hamming(tokens)
    return {"unique_fraction": uniq, "hamming_mean": float(d.sum() / (N * (N - 1)))}


# ------------------------------------------------------------------------- the evaluation
def _as_tokens(x0: Tensor) -> Tensor:
    if x0.dim() == 3:
        if x0.shape[-1] == 5 and bool((x0[..., 4] > 0.5).any()):
            raise ValueError("samples still contain masked positions; evaluate fully denoised x0 only")
        return x0[..., :4].argmax(-1)
    return x0.long()


def evaluate_sequences(
    x0: Tensor,
    y: Tensor,
    out_dir: str | Path | None,
    *,
    oracle: torch.nn.Module | None = None,
    classifier: torch.nn.Module | None = None,
    real_tokens: Mapping[int, Tensor] | None = None,
    baseline_tokens: Tensor | None = None,
    elbo_fn: Any = None,
    baseline_elbo: float | None = None,
    label_names: Sequence[str] = CELL_LINES,
    motif_tfs: Mapping[str, Sequence[str]] = CELL_TYPE_MOTIFS,
    motif_pthresh: float = 1e-4,
    batch_size: int = 256,
) -> dict[str, float]:
    """Score generated sequences against the cell line each was requested for.

    Args:
        x0: one-hot [N, L, 5|4] or tokens [N, L].
        y: LongTensor [N] requested cell line (index into `label_names`).
        out_dir: where to write samples.fasta, motif_counts.png, metrics.json (None = nowhere).
        oracle: held-out model x0 -> logits [N, K] (never used in training).
        classifier: the CTRL classifier x0 -> logits (reported for comparison).
        real_tokens: {class index: real sequences [M, L]} for the k-mer correlation.
        baseline_tokens: pre-trained (unconditional) samples [M, L] for motif enrichment.
        elbo_fn: tokens [N, L] -> ELBO [N] under the pre-trained model.
        baseline_elbo: mean ELBO of the pre-trained model's own samples (for `elbo_ratio`).
        motif_tfs: {cell line: TF ids}; cell lines absent here get no motif metrics.

    Returns:
        flat dict of floats (module docstring).
    """
    tokens = _as_tokens(x0).cpu()
    y = y.long().cpu()
    if len(tokens) != len(y):
        raise ValueError(f"{len(tokens)} samples but {len(y)} labels")
    K = len(label_names)
    m: dict[str, float] = {"num_samples": float(len(tokens))}
    oracle_logp = classifier_logp = None
    if oracle is not None:
        oracle_logp = _logp(oracle, tokens, batch_size)
    if classifier is not None:
        classifier_logp = _logp(classifier, tokens, batch_size)
    present = [k for k in range(K) if (y == k).any()]
    for k in present:
        c, rows = label_names[k], y == k
        if oracle_logp is not None:
            lp = oracle_logp[rows]
            m[f"oracle_acc_{c}"] = float((lp.argmax(-1) == k).float().mean())
            m[f"oracle_prob_{c}"] = float(lp[:, k].exp().mean())
            m[f"oracle_specificity_{c}"] = float(_specificity(lp, k).mean())
        if classifier_logp is not None:
            m[f"classifier_acc_{c}"] = float((classifier_logp[rows].argmax(-1) == k).float().mean())
        if real_tokens is not None and k in real_tokens:
            m[f"kmer3_corr_{c}"] = kmer_correlation(tokens[rows], real_tokens[k], 3)
        m[f"hamming_mean_{c}"] = diversity(tokens[rows])["hamming_mean"]
    for key in ("oracle_acc", "oracle_prob", "oracle_specificity", "classifier_acc", "kmer3_corr"):
        vals = [m[f"{key}_{label_names[k]}"] for k in present if f"{key}_{label_names[k]}" in m]
        if vals:
            m[f"{key}_mean"] = float(np.mean(vals))
            m[f"{key}_min"] = float(np.min(vals))
    m.update(diversity(tokens))

    seqs = decode(tokens)
    counts = base_counts = None
    if motif_tfs:
        tfs = sorted({t for k in present if label_names[k] in motif_tfs for t in motif_tfs[label_names[k]]})
        if tfs:
            motifs = load_motifs(tfs)
            counts = motif_counts(seqs, motifs, motif_pthresh)
            if baseline_tokens is not None:
                base_counts = motif_counts(decode(baseline_tokens), motifs, motif_pthresh)
            enr = []
            for k in present:
                c = label_names[k]
                if c not in motif_tfs:
                    continue
                hits = float(sum(counts[t][(y == k).numpy()] for t in motif_tfs[c]).mean())
                m[f"motif_hits_{c}"] = hits
                if base_counts is not None:
                    base = float(sum(base_counts[t] for t in motif_tfs[c]).mean())
                    m[f"motif_hits_pretrained_{c}"] = base
                    m[f"motif_enrichment_{c}"] = (hits + 1e-3) / (base + 1e-3)
                    enr.append(m[f"motif_enrichment_{c}"])
            if enr:
                m["motif_enrichment_min"] = float(np.min(enr))
                m["motif_enrichment_mean"] = float(np.mean(enr))
    if elbo_fn is not None:
        elbo = torch.cat([elbo_fn(tokens[i : i + batch_size]) for i in range(0, len(tokens), batch_size)])
        m["elbo_per_seq"] = float(elbo.mean())
        m["elbo_per_base"] = float(elbo.mean()) / tokens.shape[1]
        if baseline_elbo is not None:
            m["elbo_pretrained_samples_per_seq"] = float(baseline_elbo)
            m["elbo_ratio"] = float(elbo.mean()) / float(baseline_elbo)

    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        desc = []
        for i in range(len(seqs)):
            d = f"target={label_names[int(y[i])]}"
            if oracle_logp is not None:
                j = int(oracle_logp[i].argmax())
                d += f" oracle={label_names[j]} p_target={float(oracle_logp[i, int(y[i])].exp()):.3f}"
            desc.append(d)
        write_fasta(out / "samples.fasta", seqs, [f"sample{i}" for i in range(len(seqs))], desc)
        if counts is not None:
            plot_motif_counts(out / "motif_counts.png", counts, y, base_counts, label_names, motif_tfs)
        (out / "metrics.json").write_text(json.dumps(m, indent=2, sort_keys=True) + "\n")
    return m


@torch.no_grad()
def _logp(model: torch.nn.Module, tokens: Tensor, batch_size: int) -> Tensor:
    model.eval()
    outs = [torch.log_softmax(model(tokens[i : i + batch_size]).float(), -1) for i in range(0, len(tokens), batch_size)]
    return torch.cat(outs)


def _specificity(logp: Tensor, k: int) -> Tensor:
    """log p(k | x) - max_{j != k} log p(j | x), with gReLU's Specificity transform."""
    from domains.dna.grelu_models import specificity

    return specificity(logp, torch.full((len(logp),), k, dtype=torch.long))


def plot_motif_counts(path: str | Path, counts: Mapping[str, np.ndarray], y: Tensor,
                      base_counts: Mapping[str, np.ndarray] | None, label_names: Sequence[str],
                      motif_tfs: Mapping[str, Sequence[str]]) -> Path:
    """One panel per requested cell line: mean hits per sequence of every known motif, generated
    (requested for that cell line) vs pre-trained samples."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    present = [k for k in range(len(label_names)) if (y == k).any()]
    tfs = sorted(counts)
    fig, axes = plt.subplots(1, max(1, len(present)), figsize=(4 * max(1, len(present)), 3.2), squeeze=False)
    xs = np.arange(len(tfs))
    for ax, k in zip(axes[0], present):
        c = label_names[k]
        gen = [counts[t][(y == k).numpy()].mean() for t in tfs]
        ax.bar(xs - 0.2, gen, 0.4, label=f"generated ({c})", color="tab:red")
        if base_counts is not None:
            ax.bar(xs + 0.2, [base_counts[t].mean() for t in tfs], 0.4, label="pre-trained", color="tab:gray")
        ax.set_xticks(xs)
        ax.set_xticklabels(tfs, rotation=60, fontsize=7)
        for lbl in ax.get_xticklabels():
            if lbl.get_text() in motif_tfs.get(c, ()):
                lbl.set_fontweight("bold")
        ax.set_title(f"requested {c}")
        ax.set_ylabel("motif hits / sequence")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)

