"""The Stable Diffusion path with a tiny SD-architecture pipeline built from configs (no download)."""

from __future__ import annotations

import pytest
import torch

from domains.images import sd15
from domains.images.lora import lora_parameters
from rldiff.core.rollout import rollout


@pytest.fixture(scope="module")
def domain(tiny_models):
    return sd15.build(str(tiny_models["sd"]), num_steps=4, guidance_scale=3.0, lora_rank=2)


def _perturb_lora(unet, scale=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in unet.named_parameters():
            if "lora_B" in n:
                p.add_(scale * torch.randn(p.shape, generator=g))


def _fresh_unet(tiny_models):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(tiny_models["sd"] / "unet").eval()


def test_missing_folder_and_offline_hub_id_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        sd15.load_pipeline(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        sd15.load_pipeline("nobody/not-a-model")


def test_loads_from_a_saved_local_folder(domain, tiny_models):
    assert type(domain.pipe).__name__ == "StableDiffusionPipeline"
    assert type(domain.pipe.scheduler).__name__ == "DDIMScheduler"
    assert domain.sample_shape == (4, 8, 8) and domain.resolution == 16
    assert domain.policy.condition_dim == 32  # time embedding width of the tiny UNet (4 x 8)
    assert domain.policy.timesteps.tolist() == [751, 501, 251, 1]  # SD's "leading" spacing, steps_offset 1
    assert float(domain.policy.sigma.min()) > 0  # final step lands on alpha-bar_0 < 1


def test_lora_targets_only_trainable_and_zero_init_equals_base(domain, tiny_models):
    unet = domain.pipe.unet
    lora = lora_parameters(unet)
    assert lora and {id(p) for p in unet.parameters() if p.requires_grad} == {id(p) for p in lora}
    assert all(p.dtype == torch.float32 for p in lora)
    base = _fresh_unet(tiny_models)
    x, t = torch.randn(2, 4, 8, 8), torch.tensor([500, 20])
    cond = domain.sample_cond(2, torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = base(x, t, encoder_hidden_states=cond["prompt_embeds"]).sample
        got = domain.denoiser(x, t, cond)
        got_zero_y = domain.denoiser(x, t, {**cond, "class_emb": torch.zeros(2, 32)})
        got_y = domain.denoiser(x, t, {**cond, "class_emb": torch.randn(2, 32)})
    assert torch.allclose(got, expected, atol=1e-6)
    assert torch.equal(got_zero_y, got)  # zero y-embedding = the pre-trained UNet
    assert (got_y - got).abs().max() > 1e-4


def test_classifier_free_guidance_formula(domain):
    cond = domain.sample_cond(2, torch.Generator().manual_seed(2))
    x = torch.randn(2, *domain.sample_shape)
    w, t = domain.policy.guidance_scale, domain.policy.timesteps[1].expand(2)
    with torch.no_grad():
        e = domain.policy.predict_eps(x, 1, cond)
        e_c = domain.denoiser(x, t, cond)
        e_u = domain.denoiser(x, t, {"prompt_embeds": domain._null_embeds.expand(2, -1, -1)})
    assert torch.allclose(e, e_u + w * (e_c - e_u), atol=1e-6)


def test_reference_view_and_kl(domain):
    cond = domain.sample_cond(2, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(0)
    traj = rollout(domain.policy, 2, cond, generator=g, shape=domain.sample_shape, kl="all")
    assert float(traj.kl.abs().max()) == 0.0  # LoRA B = 0: policy = reference
    unet = domain.pipe.unet
    saved = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_B" in n}
    _perturb_lora(unet)
    try:
        traj = rollout(domain.policy, 2, cond, generator=torch.Generator().manual_seed(0), shape=domain.sample_shape,
                       kl="all")
    finally:
        with torch.no_grad():
            for n, p in unet.named_parameters():
                if n in saved:
                    p.copy_(saved[n])
    assert float(traj.kl.sum(0).min()) > 0


def test_decoding_carries_gradients_to_lora(domain, tiny_models):
    from domains.images.rewards import aesthetic_score

    reward = sd15.DecodedReward(domain.decoder, aesthetic_score(str(tiny_models["clip"]), str(tiny_models["head"])))
    assert reward.differentiable
    latents = torch.randn(2, *domain.sample_shape, requires_grad=True)
    with torch.no_grad():
        ref = domain.pipe.vae.decode(latents / domain.pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
    images = domain.decoder(latents)
    assert torch.allclose(images, ref, atol=1e-6) and images.shape == (2, 3, 16, 16)
    reward(latents).sum().backward()
    assert latents.grad is not None and float(latents.grad.abs().sum()) > 0
    # through the sampler into the LoRA parameters
    cond = domain.sample_cond(2, torch.Generator().manual_seed(4))
    traj = rollout(domain.policy, 2, cond, generator=torch.Generator().manual_seed(0), shape=domain.sample_shape,
                   grad="last_k", k=2)
    reward(traj.x0).sum().backward()
    grads = [p.grad for p in lora_parameters(domain.pipe.unet) if "lora_A" in str(p.shape) or True]
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
    domain.pipe.unet.zero_grad(set_to_none=True)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_models):
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)  # the same LoRA A initialisation for both
        d = sd15.build(str(tiny_models["sd"]), num_steps=3, guidance_scale=2.0, lora_rank=2, gradient_checkpointing=ckpt)
        _perturb_lora(d.pipe.unet)
        cond = d.sample_cond(2, torch.Generator().manual_seed(5))
        traj = rollout(d.policy, 2, cond, generator=torch.Generator().manual_seed(0), shape=d.sample_shape,
                       grad="all", kl="all")
        (traj.x0.pow(2).sum() + traj.kl.sum()).backward()
        grads.append(torch.cat([p.grad.flatten() for p in lora_parameters(d.pipe.unet)]))
    assert d.policy.gradient_checkpointing and d.pipe.unet.is_gradient_checkpointing
    assert torch.allclose(grads[0], grads[1], atol=1e-5, rtol=1e-4)


def test_half_precision_loading(tiny_models):
    d = sd15.build(str(tiny_models["sd"]), dtype="bf16", num_steps=2, lora_rank=2, guidance_scale=None)
    assert d.pipe.unet.dtype == torch.bfloat16 and d.pipe.vae.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in lora_parameters(d.pipe.unet))
    cond = d.sample_cond(2, torch.Generator().manual_seed(0))
    x0 = rollout(d.policy, 2, cond, generator=torch.Generator().manual_seed(0), shape=d.sample_shape).x0
    assert x0.dtype == torch.float32 and torch.isfinite(x0).all()


def test_prompt_sets_and_files(tmp_path):
    animals = sd15.load_prompts("simple_animals")
    assert len(animals) == 51 and animals[:3] == ["cat", "dog", "horse"]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n# only a comment\n   \n")
    with pytest.raises(ValueError, match="contains no prompts"):
        sd15.load_prompts(prompt_file=empty)
    f = tmp_path / "p.txt"
    f.write_text("a red fox\n\n# skipped\na blue whale\n")
    assert sd15.load_prompts(prompt_file=f) == ["a red fox", "a blue whale"]
    with pytest.raises(ValueError, match="shipped sets"):
        sd15.load_prompts("no_such_set")


def test_export_round_trip_with_a_plain_pipeline(domain, tiny_models, tmp_path):
    from diffusers import StableDiffusionPipeline

    unet = domain.pipe.unet
    saved = {n: p.detach().clone() for n, p in unet.named_parameters() if "lora_B" in n}
    _perturb_lora(unet, scale=0.2, seed=7)
    y_table = torch.randn(3, domain.policy.condition_dim)  # 2 labels + the null label
    try:
        domain.export_lora(tmp_path / "export", y_embedding=y_table)
        x, t = torch.randn(3, 4, 8, 8), torch.tensor([900, 400, 30])
        cond = domain.sample_cond(3, torch.Generator().manual_seed(6))
        labels = torch.tensor([0, 1, 2])
        with torch.no_grad():
            want = domain.denoiser(x, t, {**cond, "class_emb": y_table[labels]})
            want_lora_only = domain.denoiser(x, t, cond)
    finally:
        with torch.no_grad():
            for n, p in unet.named_parameters():
                if n in saved:
                    p.copy_(saved[n])
    assert (tmp_path / "export" / "pytorch_lora_weights.safetensors").is_file()
    plain = StableDiffusionPipeline.from_pretrained(tiny_models["sd"], safety_checker=None, requires_safety_checker=False)
    plain.load_lora_weights(tmp_path / "export")
    with torch.no_grad():
        got_lora_only = plain.unet(x, t, encoder_hidden_states=cond["prompt_embeds"]).sample
    assert torch.allclose(got_lora_only, want_lora_only, atol=1e-5)
    sd15.attach_y_embedding(plain.unet, tmp_path / "export")
    with torch.no_grad():
        got = plain.unet(x, t, encoder_hidden_states=cond["prompt_embeds"], class_labels=labels).sample
    assert torch.allclose(got, want, atol=1e-5)
    # baking one label into the time-embedding bias reproduces that label without any class input
    plain2 = StableDiffusionPipeline.from_pretrained(tiny_models["sd"], safety_checker=None, requires_safety_checker=False)
    plain2.load_lora_weights(tmp_path / "export")
    sd15.bake_label(plain2.unet, tmp_path / "export", 1)
    with torch.no_grad():
        got1 = plain2.unet(x[1:2], t[1:2], encoder_hidden_states=cond["prompt_embeds"][1:2]).sample
    assert torch.allclose(got1, want[1:2], atol=1e-5)
