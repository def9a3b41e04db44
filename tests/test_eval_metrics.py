"""Metric math against closed forms and hand computations; feature extractors on tiny models built from configs."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from llm4gen.eval.report import bar_chart, print_table, to_jsonable, write_json
from llm4gen.eval.score import score_generated
from llm4gen.scoring import metrics as M
from llm4gen.scoring.features import (
    FIDInceptionV3,
    InceptionFeatures,
    TransformersImageClassifier,
    TransformersVisionFeatures,
    make_classifier,
    make_feature_extractor,
)


def make_tiny_clip(folder: str | Path, projection_dim: int = 4, seed: int = 0) -> str:
    """A random CLIPModel (32 px images, character tokenizer) saved like a hub checkpoint; returns the folder."""
    from transformers import CLIPConfig, CLIPModel
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    from llm4gen.tiny import make_char_clip_tokenizer

    folder = Path(folder)
    make_char_clip_tokenizer(folder)
    torch.manual_seed(seed)
    cfg = CLIPConfig(
        text_config=dict(vocab_size=514, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=77, bos_token_id=512, eos_token_id=513,
                         pad_token_id=513),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                           image_size=32, patch_size=8),
        projection_dim=projection_dim,
    )
    CLIPModel(cfg).save_pretrained(folder)
    CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return str(folder)


def random_images(n: int, size: int = 32, seed: int = 0) -> list[Image.Image]:
    rng = np.random.RandomState(seed)
    return [Image.fromarray(rng.randint(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def solid(colour: tuple[int, int, int], size: int = 32) -> Image.Image:
    return Image.new("RGB", (size, size), colour)


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory) -> str:
    return make_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


# ------------------------------------------------------------------------------------------------ Fréchet distance
def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(a)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def test_frechet_distance_diagonal_gaussians_closed_form():
    rng = np.random.RandomState(0)
    mu1, mu2 = rng.randn(6), rng.randn(6)
    a, b = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert M.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    # one dimension: (m1 - m2)^2 + (s1 - s2)^2
    assert M.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[9.0]])) == \
        pytest.approx(9.0 + 1.0)


def test_frechet_distance_non_commuting_covariances_vs_eigendecomposition():
    rng = np.random.RandomState(1)
    d = 5
    x, y = rng.randn(d, d), rng.randn(d, d)
    c1, c2 = x @ x.T + 0.1 * np.eye(d), y @ y.T + 0.1 * np.eye(d)
    assert not np.allclose(c1 @ c2, c2 @ c1)
    mu1, mu2 = rng.randn(d), rng.randn(d)
    s1 = _sqrtm_psd(c1)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.trace(_sqrtm_psd(s1 @ c2 @ s1))
    assert M.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-8)
    assert M.frechet_distance(mu2, c2, mu1, c1) == pytest.approx(expected, rel=1e-8)  # symmetric


def test_frechet_distance_errors_and_singular_fix():
    with pytest.raises(ValueError, match="imaginary"):  # not a covariance: sqrt of a negative eigenvalue
        M.frechet_distance(np.zeros(2), np.diag([1.0, -1.0]), np.zeros(2), np.eye(2))
    with pytest.raises(ValueError, match="shapes"):
        M.frechet_distance(np.zeros(2), np.eye(2), np.zeros(3), np.eye(3))
    # rank-deficient covariances (fewer samples than dimensions) still give a finite, ~0 self-distance
    feats = np.random.RandomState(2).randn(4, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert abs(M.fid_from_features(feats, feats)) < 1e-3


def test_feature_statistics_and_fid_of_a_set_with_itself():
    feats = np.random.RandomState(3).randn(50, 8) * np.arange(1, 9)
    mu, sigma = M.feature_statistics(torch.from_numpy(feats))
    centred = feats - feats.mean(0)
    np.testing.assert_allclose(mu, feats.mean(0))
    np.testing.assert_allclose(sigma, centred.T @ centred / 49)
    assert abs(M.fid_from_features(feats, feats)) < 1e-8
    shifted = feats + 2.0  # same covariance, mean moved by 2 in each of 8 dimensions
    assert M.fid_from_features(feats, shifted) == pytest.approx(8 * 4.0, rel=1e-6)
    with pytest.raises(ValueError, match="at least 2"):
        M.feature_statistics(feats[:1])
    bad = feats.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        M.feature_statistics(bad)


def test_statistics_npz_round_trip(tmp_path):
    mu, sigma = np.arange(3.0), np.diag([1.0, 2.0, 3.0])
    path = M.save_statistics(tmp_path / "ref.npz", mu, sigma)
    mu2, sigma2 = M.load_statistics(path)
    np.testing.assert_array_equal(mu, mu2)
    np.testing.assert_array_equal(sigma, sigma2)
    np.savez(tmp_path / "bad.npz", m=mu)
    with pytest.raises(ValueError, match="'mu' and 'sigma'"):
        M.load_statistics(tmp_path / "bad.npz")


# ------------------------------------------------------------------------------------------------- Inception Score
def test_inception_score_of_a_uniform_classifier_is_one():
    mean, std = M.inception_score_from_probs(np.full((40, 7), 1 / 7), splits=4)
    assert mean == pytest.approx(1.0)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_one_hot_distinct_classes_is_the_number_of_classes():
    probs = np.tile(np.eye(5), (8, 1))  # 40 images, each split of 4 consecutive... use splits that hold all classes
    mean, std = M.inception_score_from_probs(probs, splits=8)
    assert mean == pytest.approx(5.0)
    assert std == pytest.approx(0.0, abs=1e-9)
    assert M.inception_score_from_probs(np.eye(10), splits=1)[0] == pytest.approx(10.0)


def test_inception_score_matches_a_hand_computation():
    rng = np.random.RandomState(4)
    logits = rng.randn(30, 6) * 2
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    parts = [probs[0:10], probs[10:20], probs[20:30]]
    expected = []
    for part in parts:
        marginal = part.mean(0)
        kl = [sum(p[c] * math.log(p[c] / marginal[c]) for c in range(6)) for p in part]
        expected.append(math.exp(sum(kl) / len(kl)))
    mean, std = M.inception_score_from_probs(probs, splits=3)
    assert mean == pytest.approx(np.mean(expected), rel=1e-10)
    assert std == pytest.approx(np.std(expected), rel=1e-8)
    with pytest.raises(ValueError, match="probabilities"):
        M.inception_score_from_probs(logits, splits=3)
    with pytest.raises(ValueError, match="at least"):
        M.inception_score_from_probs(probs[:2], splits=3)


def test_inception_score_from_a_classifier_on_images():
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]

    def by_colour(images):  # one-hot on the dominant channel
        arr = np.stack([np.asarray(im).reshape(-1, 3).mean(0) for im in images])
        return np.eye(3)[arr.argmax(1)]

    images = [solid(colours[i % 3]) for i in range(9)]
    mean, std = M.inception_score(images, by_colour, splits=3, batch_size=2)
    assert mean == pytest.approx(3.0)
    assert M.inception_score([solid(colours[0])] * 6, by_colour, splits=2)[0] == pytest.approx(1.0)


# ------------------------------------------------------------------------------------------------------ CLIP score
def test_clip_score_from_embeddings_convention():
    img = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    txt = np.array([[3.0, 3.0], [-1.0, 0.0], [0.0, 5.0]])
    np.testing.assert_allclose(M.clip_score_from_embeddings(img, txt), [100 / math.sqrt(2), 0.0, 100.0])
    np.testing.assert_allclose(M.clip_score_from_embeddings(img, txt, scale=1.0, clamp_negative=False),
                               [1 / math.sqrt(2), -1.0, 1.0])
    with pytest.raises(ValueError, match="same shape"):
        M.clip_score_from_embeddings(img, txt[:2])


def _hand_clip_scores(folder: str, images: list[Image.Image], texts: list[str]) -> np.ndarray:
    """CLIPModel's own forward (its image_embeds / text_embeds), cosine by hand."""
    from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

    model = CLIPModel.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    proc = AutoImageProcessor.from_pretrained(folder)
    out = []
    with torch.no_grad():
        for image, text in zip(images, texts):
            enc = tok([text], padding="max_length", max_length=77, truncation=True, return_tensors="pt")
            pix = proc(images=[image], return_tensors="pt")["pixel_values"]
            res = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], pixel_values=pix)
            a, b = res.image_embeds[0].double().numpy(), res.text_embeds[0].double().numpy()
            out.append(100 * max(a @ b / np.linalg.norm(a) / np.linalg.norm(b), 0.0))
    return np.array(out)


def test_clip_score_matches_a_hand_computation_and_ignores_batch_order(tiny_clip):
    images = random_images(5, seed=5)
    texts = ["a red circle", "two blue squares", "a green star on grey", "nothing", "a cat"]
    scorer = M.ClipScorer(tiny_clip, batch_size=2)
    scores = scorer.score_pairs(images, texts)
    np.testing.assert_allclose(scores, _hand_clip_scores(tiny_clip, images, texts), atol=1e-4)
    assert (scores >= 0).all() and (scores <= 100).all()
    order = [3, 0, 4, 2, 1]
    permuted = M.ClipScorer(tiny_clip, batch_size=3).score_pairs([images[i] for i in order], [texts[i] for i in order])
    np.testing.assert_allclose(permuted, scores[order], atol=1e-5)
    assert M.clip_score(images, texts, tiny_clip, batch_size=4) == pytest.approx(scores.mean(), abs=1e-5)
    assert M.clip_score([images[i] for i in order], [texts[i] for i in order], scorer) == \
        pytest.approx(scores.mean(), abs=1e-5)
    with pytest.raises(ValueError, match="one to one"):
        scorer.score_pairs(images, texts[:2])


def test_clip_score_warns_when_texts_are_truncated(tiny_clip):
    scorer = M.ClipScorer(tiny_clip)
    with pytest.warns(UserWarning, match="1 of 2 texts"):
        scorer.embed_texts(["short", "x" * 200])


def test_clip_scorer_errors(tmp_path, tiny_llm_dirs):
    with pytest.raises(OSError, match="does not exist"):
        M.ClipScorer(str(tmp_path / "no" / "such" / "model"))
    with pytest.raises(ValueError, match="not a CLIP-style model"):
        M.ClipScorer(tiny_llm_dirs["bert"])


# ------------------------------------------------------------------------------------ FID with a transformers model
def test_fid_with_transformers_features_end_to_end(tiny_clip, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    for i, im in enumerate(random_images(12, seed=6)):
        im.save(a / f"{i:03d}.png")
    for i in range(12):  # a different distribution: smooth gradients
        arr = np.linspace(0, 255, 32 * 32 * 3).reshape(32, 32, 3).astype(np.uint8)
        Image.fromarray(np.roll(arr, 7 * i, axis=1)).save(b / f"{i:03d}.png")
    extractor = make_feature_extractor(f"hf:{tiny_clip}")
    assert isinstance(extractor, TransformersVisionFeatures)
    feats = M.compute_features(a, extractor, batch_size=5)
    assert feats.shape == (12, 4)
    # the projected embeddings of CLIPModel's own forward
    from transformers import AutoImageProcessor, CLIPModel

    model = CLIPModel.from_pretrained(tiny_clip).eval()
    pix = AutoImageProcessor.from_pretrained(tiny_clip)(images=M.load_images(M.list_images(a)), return_tensors="pt")
    with torch.no_grad():
        ref = model.vision_model(pixel_values=pix["pixel_values"]).pooler_output
        ref = model.visual_projection(ref).double().numpy()
    np.testing.assert_allclose(feats, ref, atol=1e-5)
    assert abs(M.fid(a, a, extractor, batch_size=5)) < 1e-6
    d_ab = M.fid(a, b, extractor)
    assert d_ab > 0.01
    assert d_ab == pytest.approx(M.fid_from_features(feats, M.compute_features(b, extractor)), rel=1e-9)
    mu, sigma, n = M.fid_statistics(b, extractor)
    M.save_statistics(tmp_path / "b.npz", mu, sigma)
    assert n == 12
    assert M.fid(a, tmp_path / "b.npz", extractor) == pytest.approx(d_ab, rel=1e-9)
    mean_pool = TransformersVisionFeatures(tiny_clip, pooling="mean", normalize=True)(random_images(2))
    assert mean_pool.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(mean_pool, axis=1), 1.0, rtol=1e-6)


def test_transformers_classifier_for_the_inception_score(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    torch.manual_seed(0)
    cfg = ViTConfig(image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32, num_labels=5)
    ViTForImageClassification(cfg).save_pretrained(tmp_path / "vit")
    ViTImageProcessorPil(size={"height": 32, "width": 32}).save_pretrained(tmp_path / "vit")
    clf = make_classifier(f"hf:{tmp_path / 'vit'}")
    assert isinstance(clf, TransformersImageClassifier)
    images = random_images(6, seed=7)
    probs = M.compute_probabilities(images, clf, batch_size=4)
    model = ViTForImageClassification.from_pretrained(tmp_path / "vit").eval()
    proc = ViTImageProcessorPil.from_pretrained(tmp_path / "vit")
    with torch.no_grad():
        logits = model(**proc(images=images, return_tensors="pt")).logits.double()
    np.testing.assert_allclose(probs, torch.softmax(logits, -1).numpy(), atol=1e-6)
    mean, _ = M.inception_score(images, clf, splits=2)
    assert mean == pytest.approx(M.inception_score_from_probs(probs, splits=2)[0], rel=1e-6)
    assert 1.0 <= mean <= 5.0


# ------------------------------------------------------------------------------------------- FID Inception network
TEST_SIZE = 80  # the network at 80x80 inputs: the same weights and code path, ~14x less compute than 299x299


@pytest.fixture(scope="module")
def inception_pair(tmp_path_factory):
    """Random FID Inception weights saved as .pth and .safetensors, and features of two images from the original."""
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("inception")
    net = InceptionFeatures(None, seed=1, input_size=TEST_SIZE)
    state = net.model.state_dict()
    torch.save(state, root / "fid.pth")
    save_file({k: v.contiguous() for k, v in state.items()}, str(root / "fid.safetensors"))
    images = random_images(2, size=40, seed=8)
    return root, net, images, net(images)


def test_fid_inception_architecture_shapes():
    model = FIDInceptionV3().eval()
    n_params = sum(p.numel() for p in model.parameters())
    assert 23_800_000 < n_params < 23_900_000  # pytorch-fid's FID Inception (no aux head, 1008 classes)
    assert model.fc.weight.shape == (1008, 2048)
    keys = model.state_dict().keys()
    for key in ("Conv2d_1a_3x3.conv.weight", "Mixed_5b.branch_pool.bn.running_var",
                "Mixed_6e.branch7x7dbl_5.conv.weight", "Mixed_7c.branch3x3dbl_3b.bn.bias", "fc.bias"):
        assert key in keys
    assert model.input_size == 299  # the forward pass itself is tested below (at a smaller input size)
    with pytest.raises(ValueError, match="75x75"):
        FIDInceptionV3(input_size=32)


def test_inception_features_are_deterministic_and_weights_round_trip(inception_pair):
    root, net, images, feats = inception_pair
    assert feats.shape == (2, 2048) and feats.dtype == np.float64
    assert np.isfinite(feats).all() and feats.std() > 1e-3
    assert not np.allclose(feats[0], feats[1])
    # another instance loaded from each file format gives the same features for the same input (deterministic)
    for name in ("fid.pth", "fid.safetensors"):
        loaded = InceptionFeatures(root / name, input_size=TEST_SIZE)
        np.testing.assert_allclose(loaded(images), feats, rtol=1e-5, atol=1e-6)
    factory = make_feature_extractor(f"inception:{root / 'fid.pth'}")  # the standard 299x299 network
    assert isinstance(factory, InceptionFeatures) and factory.model.input_size == 299
    assert all(torch.equal(v, net.model.state_dict()[k]) for k, v in factory.model.state_dict().items())
    # IS classifier: softmax over the 1008 classes of pool3 @ W^T (no bias, as the original TF Inception Score)
    probs = loaded.classifier()(images)
    assert probs.shape == (2, 1008)
    np.testing.assert_allclose(probs.sum(1), 1.0)
    logits = torch.from_numpy(feats) @ net.model.fc.weight.detach().double().T
    np.testing.assert_allclose(probs, torch.softmax(logits, -1).numpy(), atol=1e-6)


def test_inception_weight_errors(inception_pair, tmp_path):
    root, net, _, _ = inception_pair
    state = torch.load(root / "fid.pth", weights_only=True)
    missing = dict(state)
    del missing["Mixed_6a.branch3x3.conv.weight"]
    missing["extra.weight"] = torch.zeros(1)
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"1 missing \(Mixed_6a.branch3x3.conv.weight\).*1 unexpected"):
        InceptionFeatures(tmp_path / "missing.pth")
    shaped = dict(state)
    shaped["fc.weight"] = torch.zeros(1000, 2048)
    torch.save(shaped, tmp_path / "shaped.pth")
    with pytest.raises(ValueError, match="fc.weight: file"):
        InceptionFeatures(tmp_path / "shaped.pth")
    torch.save({"not": "tensors"}, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="state dict"):
        InceptionFeatures(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError):
        make_feature_extractor(f"inception:{tmp_path / 'none.pth'}")
    with pytest.raises(ValueError, match="inception:PATH"):
        make_feature_extractor("resnet50")


# ------------------------------------------------------------------------------------------------------ aesthetics
def test_laion_aesthetic_predictor_matches_a_hand_computation(tiny_clip, tmp_path):
    torch.manual_seed(0)
    head = {}
    for idx, (i, o) in zip((0, 2, 4, 6, 7), ((4, 1024), (1024, 128), (128, 64), (64, 16), (16, 1))):
        head[f"layers.{idx}.weight"] = torch.randn(o, i) / math.sqrt(i)
        head[f"layers.{idx}.bias"] = torch.randn(o) * 0.1
    torch.save(head, tmp_path / "head.pth")
    predictor = M.LaionAestheticPredictor(tmp_path / "head.pth", tiny_clip)
    images = random_images(3, seed=9)
    mean, values = M.aesthetic_score(images, predictor, batch_size=2)
    emb = M.ClipScorer(tiny_clip).embed_images(images).double()
    x = emb
    for idx in (0, 2, 4, 6, 7):
        x = x @ head[f"layers.{idx}.weight"].double().T + head[f"layers.{idx}.bias"].double()
    np.testing.assert_allclose(values, x[:, 0].numpy(), rtol=1e-5, atol=1e-6)
    assert mean == pytest.approx(values.mean())
    bad = dict(head)
    bad["layers.0.weight"] = torch.zeros(1024, 768)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="4-d CLIP embedding"):
        M.LaionAestheticPredictor(tmp_path / "bad.pth", tiny_clip)


# ------------------------------------------------------------------------------------------- scoring a folder, CLI
def _write_generated_folder(folder: Path, prompts: list[str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "manifest.jsonl", "w") as f:
        for i, (im, p) in enumerate(zip(random_images(len(prompts), seed=10), prompts)):
            im.save(folder / f"{i:05d}_00.png")
            f.write(json.dumps({"file": f"{i:05d}_00.png", "prompt": p}) + "\n")


def test_score_generated_and_the_cli(tiny_clip, tmp_path):
    from typer.testing import CliRunner

    from llm4gen.cli import app

    prompts = ["a red circle", "a blue square", "a green star", "a big yellow ring", "two cats"]
    run = tmp_path / "run"
    _write_generated_folder(run, prompts)
    report = score_generated(run, clip_model=tiny_clip, fid_ref=run, fid_features=f"hf:{tiny_clip}",
                               is_classifier=lambda ims: np.full((len(ims), 4), 0.25), batch_size=3)
    assert report["num_images"] == 5
    images = [run / f"{i:05d}_00.png" for i in range(5)]
    expected = M.ClipScorer(tiny_clip).score_pairs(images, prompts)
    assert report["metrics"]["clip_score"]["mean"] == pytest.approx(expected.mean(), abs=1e-5)
    assert [r["clip_score"] for r in report["per_image"]] == pytest.approx(list(expected), abs=1e-5)
    assert abs(report["metrics"]["fid"]["value"]) < 1e-4  # the set against itself
    assert report["metrics"]["inception_score"]["mean"] == pytest.approx(1.0)
    assert report["metrics"]["inception_score"]["splits"] == 5
    limited = score_generated(run, clip_model=tiny_clip, limit=2)
    assert limited["num_images"] == 2 and set(limited["metrics"]) == {"clip_score"}
    assert [r["clip_score"] for r in limited["per_image"]] == pytest.approx(list(expected[:2]), abs=1e-5)

    result = CliRunner().invoke(app, ["eval", "score", str(run), "--clip-model", tiny_clip, "--fid-ref", str(run),
                                      "--fid-features", f"hf:{tiny_clip}", "--batch-size", "2",
                                      "--save-ref-stats", str(tmp_path / "ref.npz")])
    assert result.exit_code == 0, result.output
    assert "CLIP score" in result.output and "FID" in result.output
    saved = json.loads((run / "scores" / "scores.json").read_text())
    assert saved["num_images"] == 5
    assert saved["metrics"]["clip_score"]["mean"] == pytest.approx(
        M.ClipScorer(tiny_clip).score_pairs(M.list_images(run), prompts).mean(), abs=1e-5)
    assert Image.open(run / "scores" / "scores.png").size[0] > 100
    assert (tmp_path / "ref.npz").is_file()

    no_manifest = tmp_path / "plain"
    no_manifest.mkdir()
    random_images(1)[0].save(no_manifest / "x.png")
    result = CliRunner().invoke(app, ["eval", "score", str(no_manifest), "--clip-model", tiny_clip])
    assert result.exit_code == 1 and "no manifest.jsonl" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["eval", "score", str(run), "--fid-ref", str(run)])
    assert result.exit_code == 1 and "feature extractor" in " ".join(result.output.split())


# ----------------------------------------------------------------------------------------------------------- report
def test_bar_chart_draws_bars_proportional_to_values(tmp_path):
    colours = {"a": (200, 0, 0), "b": (0, 0, 200)}
    path = bar_chart({"g1": {"a": 1.0, "b": 2.0}, "g2": {"a": 0.5, "b": None}}, tmp_path / "c.png", "title",
                     errors={"g1": {"a": 0.1}}, colors=colours, value_labels=False)
    arr = np.asarray(Image.open(path).convert("RGB")).astype(int)
    counts = {k: int((np.abs(arr - np.array(c)).sum(-1) == 0).sum()) for k, c in colours.items()}
    # series a: bars 1.0 + 0.5 (+ a legend swatch), series b: bar 2.0 (+ swatch) -> b's area ~ 2/1.5 of a's
    assert counts["b"] / counts["a"] == pytest.approx(2.0 / 1.5, rel=0.1)
    panels = bar_chart({"CLIP": {"run": 30.0}, "FID": {"run": 100.0}}, tmp_path / "p.png", shared_axis=False,
                       colors={"run": (0, 200, 0)}, value_labels=False)
    arr = np.asarray(Image.open(panels).convert("RGB")).astype(int)
    green = (np.abs(arr - np.array([0, 200, 0])).sum(-1) == 0)
    columns = np.nonzero(green[:250].any(0))[0]  # the two bars (above the legend); own scales -> similar heights
    left, right = green[:, columns[0]].sum(), green[:, columns[-1]].sum()
    assert left == pytest.approx(right, rel=0.15)
    with pytest.raises(ValueError):
        bar_chart({}, tmp_path / "e.png")


def test_write_json_and_print_table(tmp_path):
    from io import StringIO

    from rich.console import Console

    path = write_json(tmp_path / "sub" / "r.json", {"a": np.float32(1.5), "b": np.arange(2), "c": float("nan"),
                                                    "d": (1, Path("x"))})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1], "c": None, "d": [1, "x"]}
    assert to_jsonable({1: np.int64(3)}) == {"1": 3}
    buf = StringIO()
    print_table([{"metric": "CLIP", "value": 31.23456}, {"metric": "FID", "value": None}], title="t",
                console=Console(file=buf, width=80))
    out = buf.getvalue()
    assert "31.2346" in out and "FID" in out and "-" in out
