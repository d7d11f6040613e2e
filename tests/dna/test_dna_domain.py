"""The DNA domain against the RLDomain contract, built from tiny saved models; the shipped weights."""

from __future__ import annotations

import pytest
import torch

from domains.dna.data import CELL_LINES
from rldiff.core.rollout import rollout
from rldiff.train.protocol import RLDomain


@pytest.fixture
def tiny_domain(build_tiny):
    return build_tiny()


def test_contract(tiny_domain):
    d = tiny_domain
    assert isinstance(d, RLDomain)
    assert d.sample_shape is None and d.num_labels == 4 and d.policy.condition_dim == 8
    assert d.policy.vocab_size == 4 and d.policy.seq_len == 200
    assert d.sample_cond(3, torch.Generator()) is None
    trainable = [p for m in d.trainable.values() for p in m.parameters() if p.requires_grad]
    assert trainable and sum(p.numel() for p in trainable) < sum(p.numel() for p in d.denoiser.parameters())
    assert not any(p.requires_grad for p in d.classifier.parameters())


def test_zero_class_embedding_has_zero_kl_and_rewards_are_differentiable(tiny_domain):
    d = tiny_domain
    emb = torch.zeros(4, d.policy.condition_dim, requires_grad=True)  # CTRL's zero-initialised adapter
    y = torch.tensor([0, 1, 2, 3])
    traj = rollout(d.policy, 4, cond={"class_emb": emb, "y": y}, generator=torch.Generator().manual_seed(0),
                   grad="last_k", k=2, kl="all")
    assert traj.kl.abs().max() == 0  # equals the pre-trained model at step 0
    assert traj.x0[..., 4].sum() == 0
    r = d.reward(traj.x0, traj.cond)
    assert r.shape == (4,) and (r <= 0).all()  # log-probabilities
    r.sum().backward()
    assert emb.grad.abs().sum() > 0
    lora_b = [m.lora_B.weight for m in d.denoiser.adapters()]
    assert any(w.grad is not None and w.grad.abs().sum() > 0 for w in lora_b)


def test_specificity_reward_and_fixed_target(tiny_domain, tiny_denoiser, tiny_classifier):
    from domains.dna.domain import CellTypeReward

    x = torch.nn.functional.one_hot(torch.randint(0, 4, (3, 200)), 5).float()
    spec = CellTypeReward(tiny_classifier, "specificity", target=2)
    lp = tiny_classifier.log_probs(x)
    off = torch.cat([lp[:, :2], lp[:, 3:]], 1).max(1).values
    assert torch.allclose(spec(x, None), lp[:, 2] - off)
    with pytest.raises(ValueError, match="needs cond"):
        CellTypeReward(tiny_classifier)(x, None)
    with pytest.raises(ValueError, match="unknown reward kind"):
        CellTypeReward(tiny_classifier, "jpeg")


def test_evaluate_writes_outputs(tiny_domain, tmp_path):
    d = tiny_domain
    traj = rollout(d.policy, 4, generator=torch.Generator().manual_seed(0))
    m = d.evaluate({"x0": traj.x0, "y": torch.tensor([0, 1, 2, 3])}, tmp_path / "eval")
    for c in CELL_LINES:
        assert 0.0 <= m[f"oracle_acc_{c}"] <= 1.0 and -1.0 <= m[f"kmer3_corr_{c}"] <= 1.0
        assert f"motif_enrichment_{c}" in m
    assert m["elbo_per_seq"] < 0 and m["elbo_ratio"] > 0
    assert (tmp_path / "eval" / "samples.fasta").read_text().count(">") == 4
    assert (tmp_path / "eval" / "motif_counts.png").exists()


def test_shipped_weights_load():
    from domains.dna.domain import DEFAULT_CLASSIFIER, DEFAULT_DENOISER, DEFAULT_ORACLE
    from domains.dna.grelu_models import load_grelu, model_info
    from domains.dna.model import count_parameters, load_denoiser

    for p in (DEFAULT_DENOISER, DEFAULT_CLASSIFIER, DEFAULT_ORACLE):
        if not p.is_file():
            pytest.skip(f"{p.name} not shipped yet")
        assert p.stat().st_size < 20 * 2**20
    den = load_denoiser(DEFAULT_DENOISER)
    assert count_parameters(den) > 400_000
    x = torch.nn.functional.one_hot(torch.full((1, 200), 4), 5).float()
    probs = den(x, torch.ones(1)).softmax(-1).mean((0, 1))  # all-mask: the base composition
    assert probs.min() > 0.15 and probs.max() < 0.35
    clf, orc = load_grelu(DEFAULT_CLASSIFIER), load_grelu(DEFAULT_ORACLE)
    assert clf.label_names == orc.label_names == CELL_LINES
    info_c, info_o = model_info(DEFAULT_CLASSIFIER), model_info(DEFAULT_ORACLE)
    assert not set(info_c["train_chromosomes"]) & set(info_o["train_chromosomes"])
    assert info_c["test_accuracy"] > 0.5 and info_o["test_accuracy"] > 0.5


def test_baseline_samples_match_the_domains_T(build_tiny, tmp_path):
    """Motif enrichment and the ELBO ratio compare with pre-trained samples drawn with the domain's own T:
    "auto" picks the shipped file for that T (T = 10, the recipes', and 50), else draws them; a named
    file that is missing is an error, not a silent redraw."""
    from domains.dna.domain import default_baseline, read_baseline

    for steps, n in ((10, 2048), (50, 512)):
        tokens = read_baseline(default_baseline(steps))
        assert tokens.shape == (n, 200) and int(tokens.max()) <= 3
    assert not default_baseline(7).exists()
    with pytest.raises(FileNotFoundError, match="baseline_samples: no file"):
        build_tiny(baseline_samples=str(tmp_path / "missing.txt.gz"))
    assert build_tiny(baseline_samples=None)._baseline is None  # drawn at the first evaluation


def test_build_auto_baseline_uses_the_file_drawn_with_its_T():
    from domains.dna import build
    from domains.dna.domain import default_baseline, read_baseline

    d10 = build(num_steps=10, oracle=None)
    assert torch.equal(d10.baseline().tokens, read_baseline(default_baseline(10)))
    assert build(num_steps=7, oracle=None)._baseline is None  # no file for T = 7: drawn at T = 7 when needed


def test_label_chroms_by_name(build_tiny):
    """CFG's recipe names the classifier's chromosomes, so its labels never come from the oracle's."""
    from domains.dna.domain import offline_labels
    from domains.dna.grelu_models import CLASSIFIER_CHROMS, ORACLE_CHROMS

    x, y = build_tiny(label_chroms="classifier").offline_data("train")
    ref = offline_labels(CLASSIFIER_CHROMS)
    assert len(x) == len(ref) and sorted(y.tolist()) == sorted(ref.labels.tolist())
    assert not set(ref.chrom) & set(ORACLE_CHROMS)
    with pytest.raises(ValueError, match="one of \\['classifier', 'oracle'\\]"):
        build_tiny(label_chroms="nope")


def test_offline_data_warns_when_it_includes_the_oracles_peaks(build_tiny, recwarn):
    """Every training chromosome means the held-out oracle's too: the domain says so (CFG and
    CTRL's forward anchor train on these rows); the classifier's chromosomes alone are quiet."""
    with pytest.warns(UserWarning, match="label_chroms: classifier"):
        build_tiny().offline_data("train")
    recwarn.clear()
    build_tiny(label_chroms="classifier").offline_data("train")
    build_tiny().offline_data("validation")  # chr1: no oracle peaks, nothing to say
    assert not [w for w in recwarn if "oracle" in str(w.message)]


def test_per_label_lora_trains_only_the_rows_of_the_labels_drawn(build_tiny, fresh_accelerate_state):
    """`lora_per_label`: CTRL's y reaches every adapter, so an update moves the up-projections of
    the cell lines in its batch and no other; the reference stays the pre-trained model."""
    from rldiff.algorithms.ctrl import CTRL

    d = build_tiny(lora_per_label=True)
    adapters = d.denoiser.adapters()
    assert adapters and all(m.lora_B_y.shape[0] == d.num_labels + 1 for m in adapters)
    algo = CTRL(d, gamma=1.0, batch_size=4, lr=1e-2, kl_weight=1.0, label_probs=[0.5, 0.5, 0.0, 0.0])
    before = [m.lora_B_y.detach().clone() for m in adapters]
    algo.update(0, torch.Generator().manual_seed(0))
    moved = torch.stack([(m.lora_B_y.detach() - b).abs().sum(dim=(1, 2)) for m, b in zip(adapters, before)]).sum(0)
    assert (moved[:2] > 0).all() and (moved[2:] == 0).all()  # GM12878 / hESC drawn; K562, HepG2, null not
    traj = rollout(d.policy, 2, cond=algo.make_cond(torch.tensor([2, 3]), torch.Generator()),
                   generator=torch.Generator().manual_seed(1), kl="all")
    assert traj.kl.abs().max() < 1e-4  # cell lines never drawn still sample the pre-trained model
