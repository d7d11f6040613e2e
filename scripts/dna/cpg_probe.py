"""Do the gReLU classifier and the held-out oracle reward CpG dinucleotides?

    .venv/bin/python scripts/dna/cpg_probe.py

Takes 1,000 real chr1 sequences (seen by neither model), writes n CpGs at random positions into
each (n = 3, 6), and prints the mean change of log p(cell line | x) under the classifier and the
oracle, next to a control that rewrites the same number of random position pairs to random bases.
Used in docs/dna.md to tell classifier-specific reward hacking from a preference both models share.
"""

import torch
torch.set_num_threads(1)
from domains.dna.data import load_dnase, CELL_LINES
from domains.dna.domain import DEFAULT_CLASSIFIER, DEFAULT_ORACLE
from domains.dna.grelu_models import load_grelu, predict
g = torch.Generator().manual_seed(0)
val = load_dnase("validation")
x = val.tokens()[torch.randperm(len(val), generator=g)[:1000]]
clf, orc = load_grelu(DEFAULT_CLASSIFIER), load_grelu(DEFAULT_ORACLE)
def lp(m, t): return torch.log_softmax(predict(m, t), -1)
def add_cpg(t, n):
    t = t.clone()
    for i in range(len(t)):
        pos = torch.randperm(199, generator=g)[:n]
        t[i, pos], t[i, pos + 1] = 1, 2  # C then G
    return t
def shuffle_pos(t, n):  # control: n random substitutions of random pairs (same number of changed positions)
    t = t.clone()
    for i in range(len(t)):
        pos = torch.randperm(199, generator=g)[:n]
        t[i, pos] = torch.randint(4, (n,), generator=g); t[i, pos + 1] = torch.randint(4, (n,), generator=g)
    return t
base_c, base_o = lp(clf, x), lp(orc, x)
print("mean log p(k|x): classifier", [f"{v:.2f}" for v in base_c.mean(0).tolist()], "oracle", [f"{v:.2f}" for v in base_o.mean(0).tolist()])
for n in (3, 6):
    for name, f in (("CpG", add_cpg), ("random pairs", shuffle_pos)):
        xm = f(x, n)
        dc, do = (lp(clf, xm) - base_c).mean(0), (lp(orc, xm) - base_o).mean(0)
        print(f"+{n} {name:12s} d log p  classifier " + " ".join(f"{c}:{v:+.3f}" for c, v in zip(CELL_LINES, dc.tolist()))
              + " | oracle " + " ".join(f"{c}:{v:+.3f}" for c, v in zip(CELL_LINES, do.tolist())))
