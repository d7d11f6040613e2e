"""Image rewards, measured classes, offline image classifiers, CLIP score and the digits metrics."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from domains.images import rewards
from domains.images.metrics import frechet_distance, label_agreement, mean_pairwise_distance


def _noise_and_flat(n: int = 4, size: int = 64, seed: int = 0) -> torch.Tensor:
    """n/2 uniform-noise images (incompressible) then n/2 flat grey ones (compressible), in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(n // 2, 3, size, size, generator=g) * 2 - 1
    flat = torch.full((n - n // 2, 3, size, size), 0.2)
    return torch.cat([noise, flat])


def test_jpeg_size_matches_pil_and_orders_images():
    x = _noise_and_flat()
    arr = rewards.to_uint8_hwc(x)
    buf = io.BytesIO()
    Image.fromarray(arr[0]).save(buf, format="JPEG", quality=95)
    sizes = rewards.JpegSize(+1.0).sizes(x)
    assert float(sizes[0]) == pytest.approx(buf.tell() / 1000.0)
    assert float(sizes[:2].min()) > 5 * float(sizes[2:].max())  # noise is far less compressible
    assert torch.equal(rewards.jpeg_compressibility()(x), -rewards.jpeg_incompressibility()(x))
    assert not rewards.jpeg_compressibility().differentiable


def test_compressibility_classes_follow_the_paper_thresholds():
    four = rewards.compressibility_classes(4)
    assert four.thresholds == [60.0, 85.0, 110.0] and four.num_classes == 4
    v = torch.tensor([10.0, 59.99, 60.0, 84.9, 85.0, 110.0, 300.0])
    assert four.classify_values(v).tolist() == [0, 0, 1, 1, 2, 3, 3]
    two = rewards.compressibility_classes(2)
    assert two.classify_values(torch.tensor([69.9, 70.0])).tolist() == [0, 1]
    assert four.names == ["<60", "60-85", "85-110", ">=110"]
    with pytest.raises(ValueError, match="2 or 4"):
        rewards.compressibility_classes(3)
    # measured on images: 64x64 noise is ~10 kB, flat ~1 kB -> classes at a 5 kB threshold
    lv = rewards.LevelClasses(rewards.JpegSize(+1.0), [5.0])
    assert lv(_noise_and_flat()).tolist() == [1, 1, 0, 0]


def test_product_classes_and_joint_classifier():
    a = rewards.LevelClasses(lambda x: x.mean((1, 2, 3)), [0.0])
    b = rewards.LevelClasses(lambda x: x.std((1, 2, 3)), [0.3])
    joint = rewards.ProductClasses([a, b], [2, 2])
    x = torch.cat([torch.full((1, 3, 4, 4), -0.5), torch.full((1, 3, 4, 4), 0.5), _noise_and_flat(2, 4)[:1]])
    y = joint(x)
    assert y.tolist() == [0, 2, int(a(x[2:])[0]) * 2 + 1]
    assert [t.tolist() for t in joint.split(y)] == [a(x).tolist(), b(x).tolist()]

    from domains.images.sd15 import JointClassifier

    torch.manual_seed(0)
    c1, c2 = rewards.ImageClassifier(2, size=8, width=4), rewards.ImageClassifier(3, size=8, width=4)
    lp = JointClassifier([c1, c2])(x)  # [B, 6]
    assert lp.shape == (3, 6)
    assert torch.allclose(lp.logsumexp(-1), torch.zeros(3), atol=1e-5)  # already normalised
    p1 = torch.softmax(c1(x), -1)
    assert torch.allclose(lp.exp().view(3, 2, 3).sum(-1), p1, atol=1e-5)  # marginal = part 1


def test_aesthetic_score_matches_the_laion_recipe_and_is_differentiable(tiny_models):
    scorer = rewards.aesthetic_score(str(tiny_models["clip"]), str(tiny_models["head"]))
    x = torch.rand(2, 3, 40, 48, requires_grad=True) * 2 - 1
    x.retain_grad()
    score = scorer(x)
    # by hand: resize shortest side to 32, centre-crop, CLIP-normalise, embed, L2-normalise, MLP
    u = (x.detach() + 1) / 2
    u = torch.nn.functional.interpolate(u, size=(32, 38), mode="bicubic", align_corners=False, antialias=True)
    u = u[..., :, 3:35]
    u = (u - torch.tensor(rewards.CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(rewards.CLIP_STD).view(1, 3, 1, 1)
    emb = scorer.clip.get_image_features(pixel_values=u).pooler_output
    expected = scorer.head(emb / emb.norm(dim=-1, keepdim=True)).squeeze(-1)
    assert torch.allclose(score, expected, atol=1e-5)
    score.sum().backward()
    assert float(x.grad.abs().sum()) > 0


def test_aesthetic_head_errors(tmp_path, tiny_models):
    with pytest.raises(FileNotFoundError, match="improved-aesthetic-predictor"):
        rewards.load_aesthetic_head(tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(2)}, bad)
    with pytest.raises(ValueError, match="not an aesthetic-MLP"):
        rewards.load_aesthetic_head(bad)
    wrong_dim = tmp_path / "wrong.pth"
    torch.save(rewards.AestheticMLP(768).state_dict(), wrong_dim)
    with pytest.raises(ValueError, match="768-d"):
        rewards.aesthetic_score(str(tiny_models["clip"]), str(wrong_dim))


def _write_folder(folder, n=24, size=32):
    """n images: even ones dark, odd ones bright; returns labels (0 dark, 1 bright)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    labels = []
    for i in range(n):
        base = 40 if i % 2 == 0 else 210
        arr = np.clip(base + rng.normal(0, 10, (size, size, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(arr).save(folder / f"img_{i:02d}.png")
        labels.append(i % 2)
    return labels


def test_image_classifier_from_folder_and_csv(tmp_path):
    labels = _write_folder(tmp_path / "imgs")
    csv = tmp_path / "labels.csv"
    csv.write_text("filename,label\n" + "".join(f"img_{i:02d}.png,{'dark' if l == 0 else 'bright'}\n"
                                                 for i, l in enumerate(labels)))
    x, y, names = rewards.image_dataset(tmp_path / "imgs", csv, class_names=["dark", "bright"])
    assert x.shape == (24, 3, 32, 32) and y.tolist() == labels and names[0] == "img_00.png"
    clf, metrics = rewards.train_image_classifier(x, y, 2, size=16, width=8, epochs=40, lr=3e-3)
    assert metrics["val_accuracy"] == 1.0
    path = rewards.save_image_classifier(clf, tmp_path / "clf", metrics, class_names=["dark", "bright"])
    again = rewards.load_image_classifier(path)
    with torch.no_grad():
        assert torch.equal(again(x), clf(x))
        assert (again(x).argmax(-1) == y).all()


def test_image_folder_errors(tmp_path):
    labels = _write_folder(tmp_path / "imgs", n=4)
    csv = tmp_path / "labels.csv"
    csv.write_text("filename,label\nimg_00.png,0\nimg_01.png,7\nimg_02.png,0\nimg_03.png,1\n")
    with pytest.raises(ValueError, match=r"labels.csv:3: unknown class '7'.*0\.\.1"):
        rewards.image_dataset(tmp_path / "imgs", csv, num_classes=2)
    csv.write_text("filename,label\nimg_00.png,0\nimg_01.png,1\nimg_02.png,0\n")
    with pytest.raises(ValueError, match="img_03.png"):
        rewards.image_dataset(tmp_path / "imgs", csv, num_classes=2)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="unreadable image.*broken.png"):
        rewards.image_dataset(tmp_path / "imgs", labeler=lambda x: torch.zeros(len(x)))
    assert len(labels) == 4


def test_compressibility_labels_computed_from_the_images(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    x = _noise_and_flat(6, 64)
    for i, a in enumerate(rewards.to_uint8_hwc(x)):
        Image.fromarray(a).save(folder / f"{i}.png")
    labeler = rewards.LevelClasses(rewards.JpegSize(+1.0), [5.0])
    _, y, _ = rewards.image_dataset(folder, labeler=labeler)
    assert y.tolist() == [1, 1, 1, 0, 0, 0]


def test_clip_score_is_torchmetrics_formula(tiny_models):
    from domains.images.sd15 import clip_score

    x = _noise_and_flat(2, 32)
    prompts = ["a cat", "a dog"]
    got = clip_score(x, prompts, str(tiny_models["clip"]))
    # by hand with the same processor: max(100 * mean cos, 0)
    from transformers import CLIPModel, CLIPProcessor

    model = CLIPModel.from_pretrained(tiny_models["clip"]).eval()
    proc = CLIPProcessor.from_pretrained(tiny_models["clip"])
    u8 = torch.from_numpy(rewards.to_uint8_hwc(x)).permute(0, 3, 1, 2)
    with torch.no_grad():
        img = model.get_image_features(pixel_values=proc(images=list(u8), return_tensors="pt")["pixel_values"]).pooler_output
        tok = proc(text=prompts, return_tensors="pt", padding=True)
        txt = model.get_text_features(tok["input_ids"], tok["attention_mask"]).pooler_output
    cos = torch.nn.functional.cosine_similarity(img, txt)
    assert got == pytest.approx(max(float(100 * cos.mean()), 0.0), abs=1e-4)


def _astronaut(side: int = 128) -> torch.Tensor:
    """scikit-image's bundled astronaut photo, [1, 3, side, side] in [-1, 1]."""
    import skimage.data

    img = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1
    return torch.nn.functional.interpolate(img, size=(side, side), mode="area")


def test_brisque_scores_a_photo_well_and_its_distortions_worse():
    """BRISQUE from the `brisque` package with its bundled SVM (no download): a natural photo scores low,
    the same photo with Gaussian noise or blur scores clearly higher (lower = better)."""
    from domains.images.metrics import brisque_score, brisque_scores

    photo = _astronaut()
    g = torch.Generator().manual_seed(0)
    noisy = (photo + 0.3 * torch.randn(photo.shape, generator=g)).clamp(-1, 1)
    k = torch.tensor([1.0, 4, 6, 4, 1])
    k = (k[:, None] * k[None]) / 256
    blurred = photo
    for _ in range(3):
        blurred = torch.nn.functional.conv2d(torch.nn.functional.pad(blurred, (2, 2, 2, 2), mode="replicate"),
                                             k.expand(3, 1, 5, 5), groups=3)
    scores = brisque_scores(torch.cat([photo, noisy, blurred]))
    assert scores.shape == (3,) and np.isfinite(scores).all()
    assert 0 <= scores[0] < 40, scores
    assert scores[1] > scores[0] + 10 and scores[2] > scores[0] + 10, scores
    assert brisque_score(torch.cat([photo, noisy, blurred])) == pytest.approx(scores.mean())
    grey = photo.mean(1, keepdim=True)  # one channel is scored as its grey RGB view
    assert brisque_scores(grey)[0] == pytest.approx(brisque_scores(grey.expand(-1, 3, -1, -1))[0])


def test_brisque_rejects_tiny_or_malformed_images():
    from domains.images.metrics import brisque_scores

    with pytest.raises(ValueError, match="at least 32x32"):
        brisque_scores(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="1 or 3"):
        brisque_scores(torch.zeros(1, 4, 64, 64))


def test_frechet_distance_matches_scipy_and_closed_form():
    import scipy.linalg

    g = torch.Generator().manual_seed(0)
    a = torch.randn(400, 5, generator=g, dtype=torch.float64)
    b = torch.randn(300, 5, generator=g, dtype=torch.float64) @ torch.diag(torch.tensor([1.0, 2, 0.5, 1, 3], dtype=torch.float64)) + 0.7
    s_a, s_b = np.cov(a.numpy().T), np.cov(b.numpy().T)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    ref = float(((a.mean(0) - b.mean(0)) ** 2).sum()) + np.trace(s_a + s_b - 2 * covmean)
    assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-8)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)
    assert mean_pairwise_distance(torch.tensor([[0.0, 0.0], [3.0, 4.0]])) == pytest.approx(5.0)


def test_label_agreement_by_hand():
    req = torch.tensor([0, 0, 1, 1, 2, 2])
    got = torch.tensor([0, 1, 1, 1, 2, 0])
    m = label_agreement(got, req, 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    # F1 per class: 0 -> p=1/2 r=1/2 f=1/2; 1 -> p=2/3 r=1 f=0.8; 2 -> p=1 r=1/2 f=2/3
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert (m["acc_class_0"], m["acc_class_1"], m["acc_class_2"]) == (0.5, 1.0, 0.5)
