"""DNA baselines: offline labelled data for CFG, and the label-conditioned policy of DDPO / reward
backprop (zero-initialised y-embedding; the reference stays the pre-trained model)."""

from __future__ import annotations

import pytest
import torch

from rldiff.core.rollout import rollout


def test_offline_data_is_the_training_chromosomes_shuffled(build_tiny):
    from domains.dna.data import load_dnase

    d = build_tiny()
    x, y = d.offline_data()
    train = load_dnase("train")
    assert x.dtype == torch.long and x.shape == (len(train), 200) and y.shape == (len(train),)
    assert int(x.max()) <= 3 and int(x.min()) >= 0
    assert torch.equal(torch.bincount(y, minlength=4), torch.bincount(train.labels, minlength=4))
    assert torch.bincount(y[:400], minlength=4).min() > 60  # x[:n] mixes the classes
    x2, y2 = d.offline_data()
    assert torch.equal(x, x2) and torch.equal(y, y2)  # deterministic
    seqs = {tuple(r) for r in train.tokens()[:50].tolist()}
    assert seqs <= {tuple(r) for r in x.tolist()}


def test_label_conditioning_starts_at_the_pretrained_model(build_tiny):
    d = build_tiny(label_conditioning=True)
    g = torch.Generator().manual_seed(0)
    cond = d.sample_cond(10, g)
    assert torch.equal(torch.bincount(cond["y"], minlength=4), torch.tensor([3, 3, 2, 2]))  # balanced
    assert torch.equal(torch.bincount(d.sample_cond(256, g)["y"], minlength=4), torch.full((4,), 64))
    assert "y_embedding" in d.trainable and d.trainable["y_embedding"].weight.requires_grad
    # step 0: the policy's denoiser is the pre-trained network bit for bit, for every label
    x = d.policy.one_hot(torch.randint(0, 5, (10, 200), generator=g))
    t = torch.rand(10, generator=g)
    with torch.no_grad():
        assert torch.equal(d.policy.denoiser(x, t, cond), d.policy.reference(x, t, cond))
        assert torch.equal(d.policy.denoiser(x, t, cond), d.policy.reference(x, t, None))
    traj = rollout(d.policy, 10, cond, generator=torch.Generator().manual_seed(1), kl="all")
    assert traj.kl.abs().max() == 0
    # after training the embedding (and LoRA) the reference still ignores y and the adapters
    with torch.no_grad():
        d.trainable["y_embedding"].weight.normal_()
    with torch.no_grad():
        out = d.policy.denoiser(x, t, cond)
        ref = d.policy.reference(x, t, cond)
    assert not torch.allclose(out, ref)
    assert torch.equal(ref, d.policy.reference(x, t, None))
    # labels change the output (the embedding is what conditions the policy)
    other = {"y": (cond["y"] + 1) % 4}
    with torch.no_grad():
        assert not torch.allclose(out, d.policy.denoiser(x, t, other))


def test_label_conditioned_reward_backprop_reaches_the_embedding(build_tiny):
    from rldiff.algorithms.backprop import RewardBackprop

    d = build_tiny(label_conditioning=True, reward="specificity")
    algo = RewardBackprop(d, batch_size=4, kl_weight=0.1, grad="all", relaxation="gumbel_rao", lr=1e-2)
    emb = d.trainable["y_embedding"].weight
    algo.update(0, torch.Generator().manual_seed(0))
    assert emb.abs().sum() > 0
    s = algo.sample(8, torch.Generator().manual_seed(0))
    assert torch.equal(torch.bincount(s["y"], minlength=4), torch.full((4,), 2))


def test_label_conditioning_rejects_a_fixed_target(build_tiny):
    with pytest.raises(ValueError, match="fixed target"):
        build_tiny(label_conditioning=True, target="K562")
