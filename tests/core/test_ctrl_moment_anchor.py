"""CTRL's moment anchor: the pool's k-mer frequencies are the target's, and the term pulls toward them.

`forward_moment_weight` adds (L - k + 1) / 2 x the Pearson chi-square between the k-mer
frequencies of a batch's samples for label y and those of the forward pool weighted toward
p_pre(x) p(y | x)^e. On the discrete toy the target's k-mer frequencies are exact sums over the
V^L sequences, and the policy's exact law is computable, so both halves are checked exactly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from domains.toy.discrete import DiscreteToy
from rldiff.algorithms.ctrl import CTRL
from rldiff.core.masked import kmer_frequencies
from tests.core.test_ctrl_forward_anchor import _tv


def _moments(domain: DiscreteToy, law: torch.Tensor, k: int) -> torch.Tensor:
    """k-mer frequencies [V^k] of a law over the V^L sequences."""
    f = kmer_frequencies(F.one_hot(domain.all_seqs, domain.V).double(), k)  # [V^L, V^k]
    return law.double() @ f


def test_kmer_frequencies_count_windows_and_pass_gradients() -> None:
    tokens = torch.tensor([[0, 1, 1, 2, 0], [3, 3, 3, 3, 3]])
    x = F.one_hot(tokens, 4).float().requires_grad_(True)
    f2 = kmer_frequencies(x, 2)
    assert f2.shape == (2, 16)
    # windows 01, 11, 12, 20 -> indices 1, 5, 6, 8; the second row is four 33s (index 15)
    want = torch.zeros(2, 16)
    want[0, [1, 5, 6, 8]] = 0.25
    want[1, 15] = 1.0
    torch.testing.assert_close(f2, want)
    torch.testing.assert_close(kmer_frequencies(x, 1)[0], torch.tensor([0.4, 0.4, 0.2, 0.0]))
    # "11" = mean over windows of x[j, 1] x[j+1, 1]: d/dx[j, 1] = (x[j-1, 1] + x[j+1, 1]) / 4, only token 1
    f2[0, 5].backward()
    torch.testing.assert_close(x.grad[0, :, 1], torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0]))
    assert x.grad[0, :, [0, 2, 3]].abs().sum() == 0 and x.grad[1].abs().sum() == 0
    with pytest.raises(ValueError, match="k must lie"):
        kmer_frequencies(x, 6)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_pool_moments_are_the_target_moments(k: int) -> None:
    domain = DiscreteToy(seq_len=3, num_steps=8)
    gamma = 3.0
    algo = CTRL(domain, gamma=gamma, kl_weight=1.0, forward_moment_weight=1.0, forward_moment_k=k, forward_pool=20_000)
    assert algo.forward_moments.shape == (domain.num_labels, 4**k)
    for label in range(domain.num_labels):
        got = algo.forward_moments[label].double()
        want = _moments(domain, domain.target(label, gamma), k)
        pre = _moments(domain, domain.table, k)
        tv = _tv(got, want)
        assert tv < 0.035, (k, label, tv)  # the pool's sampling error (ESS ~ 7,000-10,000; 3-mers = the whole law here)
        assert tv < 0.25 * _tv(pre, want)  # the pre-trained model's are far
        # (measured: pool 0.003-0.018 from the target's, the pre-trained model's 0.13-0.44)


def test_moment_exponent_reweights_only_the_moment_target() -> None:
    """`forward_moment_exponent`: the moments follow p_pre p(y|x)^e_m, the MDLM anchor's weights keep e."""
    domain = DiscreteToy(seq_len=3, num_steps=8)
    base = CTRL(domain, gamma=3.0, kl_weight=1.0, forward_moment_weight=1.0, forward_pool=20_000)
    algo = CTRL(domain, gamma=3.0, kl_weight=1.0, forward_moment_weight=1.0, forward_pool=20_000,
                forward_moment_exponent=1.0)
    assert torch.equal(algo.forward_weights, base.forward_weights)  # the same pool and weights at e = 3
    for label in range(domain.num_labels):
        got = algo.forward_moments[label].double()
        near, far = (_tv(got, _moments(domain, domain.target(label, e), 2)) for e in (1.0, 3.0))
        assert near < 0.035 and near < 0.25 * far, (label, near, far)


def test_moment_anchor_moves_the_policy_to_the_target_moments() -> None:
    """Moment term alone (no KL, a negligible reward): the policy's exact 2-mer frequencies approach the pool's."""
    torch.manual_seed(0)  # the toy's adapter is initialised from the global generator
    domain = DiscreteToy(seq_len=3, num_steps=8)
    algo = CTRL(domain, gamma=1e-6, kl_weight=0.0, batch_size=128, lr=1e-2, embedding_lr=1e-1,
                relaxation="gumbel_rao", forward_moment_weight=1.0, forward_moment_k=2,
                forward_exponent=4.0, forward_pool=20_000)

    def distance() -> list[float]:
        out = []
        for label in range(domain.num_labels):
            law = domain.terminal_distribution(algo._label_cond(label))
            m = algo.forward_moments[label].double()
            out.append(_tv(_moments(domain, law, 2), m))
        return out

    before = distance()
    g = torch.Generator().manual_seed(0)
    for i in range(150):
        out = algo.update(i, g)
    after = distance()
    assert "moment_chi2" in out and out["forward_ess"] > 100
    assert min(before) > 0.1, before  # the pre-trained model is far from the exponent-4 target's moments
    for b, a in zip(before, after):  # measured 0.39 -> 0.057 and 0.27 -> 0.069
        assert a < 0.1 and a < 0.3 * b, (before, after)


def test_update_reports_and_trains_the_moment_anchor() -> None:
    params, losses = {}, {}
    for weight in (0.0, 0.5):
        torch.manual_seed(0)
        domain = DiscreteToy(seq_len=3, num_steps=8)
        algo = CTRL(domain, batch_size=8, forward_moment_weight=weight, forward_pool=500)
        out = algo.update(0, torch.Generator().manual_seed(0))
        params[weight], losses[weight] = [p.detach().clone() for p in algo.params], out["loss"]
        assert ("moment_chi2" in out) == bool(weight) and "forward_nelbo" not in out
        if weight:
            assert out["moment_chi2"] > 0
    assert losses[0.0] == losses[0.5]  # the reported loss is CTRL's own
    assert any(not torch.equal(a, b) for a, b in zip(params[0.0], params[0.5]))


def test_moment_anchor_is_rejected_where_it_does_not_apply() -> None:
    domain = DiscreteToy(seq_len=3, num_steps=8)
    with pytest.raises(ValueError, match="moment anchor"):
        CTRL(domain, mode="policy_gradient", forward_moment_weight=0.1)
    with pytest.raises(ValueError, match="moment anchor"):
        CTRL(domain, soft_labels=True, forward_moment_weight=0.1)
    with pytest.raises(ValueError, match="longer than the sequences"):
        CTRL(domain, forward_moment_weight=0.1, forward_moment_k=4)


def test_unbiased_moment_chi2_estimates_the_mean_frequencies_chi2() -> None:
    """`forward_moment_unbiased`: E over batches = chi2(E[q] || m) exactly; the batch's chi2 adds sum_j Var(q_j) / m_j.

    Batches of n rows of one label drawn from the pre-trained law, whose k-mer frequencies and their
    per-sequence variances are exact sums over the V^L sequences.
    """
    domain = DiscreteToy(seq_len=3, num_steps=8)
    k, n, reps = 2, 4, 4000
    scale = (domain.L - k + 1) / 2
    algo = {u: CTRL(domain, forward_moment_weight=1.0, forward_moment_k=k, forward_pool=2000,
                    forward_moment_unbiased=u) for u in (False, True)}
    m = algo[True].forward_moments[0].double()
    f_all = kmer_frequencies(F.one_hot(domain.all_seqs, domain.V).double(), k)  # [V^L, V^k]
    mean = domain.table.double() @ f_all
    var = domain.table.double() @ (f_all - mean) ** 2  # per-sequence variance of each frequency
    exact = scale * float(((mean - m) ** 2 / m).sum())
    noise = scale * float((var / n / m).sum())
    g = torch.Generator().manual_seed(0)
    x = domain.all_seqs[torch.multinomial(domain.table, n * reps, replacement=True, generator=g)]
    y = torch.zeros(n, dtype=torch.long)
    got = {u: torch.tensor([float(a._moment_loss(F.one_hot(b, domain.V).float(), y)) for b in x.split(n)])
           for u, a in algo.items()}
    for u, want in ((True, exact), (False, exact + noise)):
        se = float(got[u].std()) / reps**0.5
        assert abs(float(got[u].mean()) - want) < 4 * se, (u, float(got[u].mean()), want, se)
    assert noise > 10 * float(got[True].std()) / reps**0.5  # the two expectations are told apart
    # a label with a single row has no pair: it drops out of the unbiased estimate
    one = F.one_hot(x[:3], domain.V).float()
    assert float(algo[True]._moment_loss(one, torch.tensor([0, 0, 1]))) == pytest.approx(
        float(algo[True]._moment_loss(one[:2], torch.tensor([0, 0]))) * 2 / 3)


def test_unbiased_moment_gradient_takes_each_row_against_the_others() -> None:
    """d U / d f_i = (L - k + 1) sum_{i' != i} (f_i' - m) / (n (n - 1) m): a row's own deviation is not in it."""
    domain = DiscreteToy(seq_len=3, num_steps=8)
    k, n = 2, 5
    algo = CTRL(domain, forward_moment_weight=1.0, forward_moment_k=k, forward_pool=2000, forward_moment_unbiased=True)
    x = torch.rand(n, domain.L, domain.V, generator=torch.Generator().manual_seed(1)).softmax(-1).requires_grad_(True)
    (got,) = torch.autograd.grad(algo._moment_loss(x, torch.zeros(n, dtype=torch.long)), x)
    f, m = kmer_frequencies(x, k), algo.forward_moments[0]
    others = (f.sum(0, keepdim=True) - f - (n - 1) * m) / (n * (n - 1) * m)  # [n, V^k]
    (want,) = torch.autograd.grad(((domain.L - k + 1) * others.detach() * f).sum(), x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
