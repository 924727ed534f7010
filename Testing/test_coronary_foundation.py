"""Foundation-model patch features (xraycardiac.coronary.matching.foundation) on tiny random models saved locally.

Every model here is a real ``transformers`` class at toy size, written with ``save_pretrained`` to a
temporary folder and read back through ``load_foundation``: the loading path users run, with no hub.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from xraycardiac.coronary.matching.foundation import (  # noqa: E402
    FAMILIES,
    FoundationSpec,
    cosine_similarity_matrix,
    load_foundation,
    sample_features,
)

PATCH = 8
IMAGE = 64  # model image_size: 8 x 8 patches


def _tiny_model(family: str, layers: int = 1) -> torch.nn.Module:
    """A random model of the family's real class: 32 channels, patch 8, image 64."""
    if family == "dinov2":
        cfg = transformers.Dinov2Config(
            hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, mlp_ratio=2,
            patch_size=PATCH, image_size=IMAGE,
        )  # fmt: skip
        return transformers.Dinov2Model(cfg)
    if family == "dinov2_with_registers":
        cfg = transformers.Dinov2WithRegistersConfig(
            hidden_size=32, num_hidden_layers=layers, num_attention_heads=2, mlp_ratio=2,
            patch_size=PATCH, image_size=IMAGE, num_register_tokens=3,
        )  # fmt: skip
        return transformers.Dinov2WithRegistersModel(cfg)
    if family == "clip":
        cfg = transformers.CLIPVisionConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=layers, num_attention_heads=2,
            patch_size=PATCH, image_size=IMAGE,
        )  # fmt: skip
        return transformers.CLIPVisionModel(cfg)
    assert family == "sam"
    vision = dict(
        hidden_size=32, output_channels=16, num_hidden_layers=layers, num_attention_heads=2, mlp_dim=64,
        image_size=IMAGE, patch_size=PATCH, window_size=4, global_attn_indexes=list(range(layers))[-1:],
        num_pos_feats=8, initializer_range=0.02,
    )  # fmt: skip
    prompt = dict(hidden_size=16, image_size=IMAGE, patch_size=PATCH, mask_input_channels=4)
    decoder = dict(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, mlp_dim=32, iou_head_hidden_dim=16
    )
    cfg = transformers.SamConfig(
        vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=decoder
    )
    return transformers.SamModel(cfg)


def _make_local(model: torch.nn.Module, family: str) -> None:
    """Make each patch's feature depend on that patch's pixels only (no layers, no position embedding)."""
    with torch.no_grad():
        if family == "dinov2":
            model.embeddings.position_embeddings.zero_()
        elif family == "clip":
            tower = getattr(model, "vision_model", model)  # transformers 5 flattened the vision tower
            tower.embeddings.position_embedding.weight.zero_()
        else:
            model.vision_encoder.pos_embed.zero_()
            conv = model.vision_encoder.neck.conv2.weight  # 3x3: keep only the centre tap
            centre = conv[:, :, 1, 1].clone()
            conv.zero_()
            conv[:, :, 1, 1] = centre


def _save(model: torch.nn.Module, folder: Path) -> Path:
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One saved tiny model per family (1 layer), plus position-independent 0-layer ones ("local_<family>")."""
    root = tmp_path_factory.mktemp("foundation")
    torch.manual_seed(0)
    out = {}
    for family in FAMILIES:
        out[family] = _save(_tiny_model(family), root / family)
        local = _tiny_model(family, layers=0)
        _make_local(local, family)
        out[f"local_{family}"] = _save(local, root / f"local_{family}")
    out["dinov2_with_registers"] = _save(_tiny_model("dinov2_with_registers"), root / "dinov2_registers")
    return out


def _tiny_full_clip() -> torch.nn.Module:
    """A tiny CLIPModel (vision + text towers): the layout of the released CLIP folders."""
    vision = dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, patch_size=PATCH
    )
    text = dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, vocab_size=50,
        max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1,
    )  # fmt: skip
    cfg = transformers.CLIPConfig(
        vision_config={**vision, "image_size": IMAGE}, text_config=text, projection_dim=8
    )
    return transformers.CLIPModel(cfg)


def _images(seed: int = 1, shape: tuple[int, ...] = (2, 40, 72)) -> torch.Tensor:
    return torch.rand(shape, generator=torch.Generator().manual_seed(seed))


# --- FoundationSpec --------------------------------------------------------------------------------


def test_spec_parse_reads_family_and_folder(tmp_path: Path) -> None:
    spec = FoundationSpec.parse(f"DINOv2:{tmp_path}")
    assert spec == FoundationSpec("dinov2", tmp_path)
    assert FoundationSpec.parse(str(spec)) == spec


@pytest.mark.parametrize(
    "text", ["dinov2", "/some/folder", ":/some/folder", "dinov2:", "vit:/tmp", "dino:/tmp"]
)
def test_spec_parse_rejects_bad_strings_naming_the_option(text: str) -> None:
    with pytest.raises(ValueError, match="foundation"):
        FoundationSpec.parse(text)


def test_spec_parse_and_load_name_a_missing_folder(tmp_path: Path) -> None:
    missing = tmp_path / "no_such_model"
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        FoundationSpec.parse(f"clip:{missing}")
    with pytest.raises(FileNotFoundError, match="no_such_model"):
        load_foundation(FoundationSpec("clip", missing))
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_foundation(FoundationSpec("clip", tmp_path))


# --- loading ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("held", "asked"), [("clip", "dinov2"), ("dinov2", "sam"), ("sam", "clip")])
def test_wrong_model_type_is_a_clear_error(folders: dict[str, Path], held: str, asked: str) -> None:
    with pytest.raises(ValueError) as err:
        load_foundation(FoundationSpec.parse(f"{asked}:{folders[held]}"))
    message = str(err.value)
    assert f"holds a '{held}' model" in message and f"expected '{asked}'" in message, message
    assert str(folders[held]) in message, message


def test_full_clip_folder_loads_its_vision_tower(tmp_path: Path) -> None:
    torch.manual_seed(5)
    full = _tiny_full_clip()
    folder = _save(full, tmp_path / "clip_full")
    fm = load_foundation(FoundationSpec.parse(f"clip:{folder}"))
    assert fm.info["model_type"] == "clip" and fm.info["model_class"] == "CLIPVisionModel", fm.info
    ours = dict(fm.model.named_parameters())
    theirs = {
        k.removeprefix("vision_model."): v
        for k, v in full.vision_model.named_parameters(prefix="vision_model")
    }
    key = next(k for k in ours if k.endswith("patch_embedding.weight"))
    assert torch.equal(ours[key], theirs[key.removeprefix("vision_model.")]), (
        "vision weights not read from the folder"
    )
    assert fm.patch_features(_images()).shape == (2, 32, 4, 8)


def test_a_folder_lacking_weights_is_an_error_not_a_random_model(
    folders: dict[str, Path], tmp_path: Path
) -> None:
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "dinov2_truncated"
    shutil.copytree(folders["dinov2"], folder)
    tensors = load_file(folder / "model.safetensors")
    dropped = next(k for k in tensors if k.endswith("patch_embeddings.projection.weight"))
    save_file(
        {k: v for k, v in tensors.items() if k != dropped},
        folder / "model.safetensors",
        metadata={"format": "pt"},
    )
    with pytest.raises(ValueError, match="lack 1 Dinov2Model tensors"):
        load_foundation(FoundationSpec.parse(f"dinov2:{folder}"))


def test_info_records_the_model_and_the_weights_sha256(folders: dict[str, Path]) -> None:
    fm = load_foundation(FoundationSpec.parse(f"clip:{folders['clip']}"), device="cpu")
    weights = folders["clip"] / "model.safetensors"
    expected = hashlib.sha256(weights.read_bytes()).hexdigest()
    info = fm.info
    assert info["weights_sha256"] == {"model.safetensors": expected}, info["weights_sha256"]
    assert (info["family"], info["model_class"], info["folder"]) == (
        "clip",
        "CLIPVisionModel",
        str(folders["clip"]),
    )
    assert (info["hidden_size"], info["patch_size"], info["input_size"]) == (32, PATCH, IMAGE), info
    assert info["image_mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073]), info["image_mean"]
    json.dumps(info)  # provenance goes into JSON reports


def test_loading_never_touches_the_network(folders: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise OSError("network access in a test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    for family in FAMILIES:
        fm = load_foundation(FoundationSpec.parse(f"{family}:{folders[family]}"))
        assert fm.patch_features(_images()).shape[0] == 2
    assert not calls, f"network calls: {calls}"


def test_loading_leaves_transformers_logging_as_it_was(folders: dict[str, Path]) -> None:
    from transformers.utils import logging as hf_logging

    original, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity(hf_logging.INFO)  # not the level load_foundation silences to
    try:
        load_foundation(FoundationSpec.parse(f"dinov2:{folders['dinov2']}"))
        after = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    finally:
        hf_logging.set_verbosity(original)
    assert after == (hf_logging.INFO, bars), after


# --- patch features --------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_features_shape_norm_and_determinism(folders: dict[str, Path], family: str) -> None:
    fm = load_foundation(FoundationSpec.parse(f"{family}:{folders[family]}"), device="cpu")
    images = _images()  # 40 x 72 -> long side 64: 35.6 x 64 px -> 4 x 8 patches of 8
    feats = fm.patch_features(images)
    channels = 16 if family == "sam" else 32
    assert feats.shape == (2, channels, 4, 8) and feats.dtype == torch.float32, feats.shape
    norms = feats.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5), (
        f"norms in [{norms.min()}, {norms.max()}]"
    )
    spread = feats.flatten(2).std(dim=2).mean().item()
    assert spread > 1e-3, f"patch features do not vary over the image (std {spread:.2e})"
    assert torch.equal(fm.patch_features(images[:, None]), feats), "(B, 1, H, W) differs from (B, H, W)"
    assert torch.equal(fm.patch_features(images), feats), "a second call differs"
    again = load_foundation(FoundationSpec.parse(f"{family}:{folders[family]}"))
    diff = (again.patch_features(images) - feats).abs().max().item()
    assert diff < 1e-6, f"a second load gives other features (max diff {diff:.2e}): weights not loaded?"
    single = fm.patch_features(images[1:])
    diff = (single - feats[1:]).abs().max().item()
    assert diff < 1e-5, f"batch items are not independent (max diff {diff:.2e})"


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_grid_follows_the_image_layout(folders: dict[str, Path], family: str) -> None:
    """A textured patch at (row 1, col 5) of a 4 x 8 patch image shows up at feature (1, 5), nowhere else."""
    fm = load_foundation(FoundationSpec.parse(f"{family}:{folders['local_' + family]}"))
    image = torch.full((1, 4 * PATCH, 8 * PATCH), 0.2)
    # Textured, not flat: a flat patch's embedding is parallel to the background's before normalisation.
    image[0, PATCH : 2 * PATCH, 5 * PATCH : 6 * PATCH] = _images(seed=2, shape=(PATCH, PATCH))
    feats = fm.patch_features(image)[0]
    assert feats.shape[1:] == (4, 8), feats.shape
    background = feats[:, 0, 0]
    similarity = torch.einsum("chw,c->hw", feats, background)
    odd = (similarity < 1 - 1e-4).nonzero().tolist()
    assert odd == [[1, 5]], f"patches that differ from the background: {odd}\n{similarity}"


def test_dinov2_register_tokens_are_dropped(folders: dict[str, Path]) -> None:
    fm = load_foundation(FoundationSpec.parse(f"dinov2:{folders['dinov2_with_registers']}"))
    assert fm.info["model_class"] == "Dinov2WithRegistersModel" and fm.num_prefix_tokens == 4
    assert fm.patch_features(_images()).shape == (2, 32, 4, 8)


def test_input_size_sets_the_patch_grid(folders: dict[str, Path]) -> None:
    fm = load_foundation(FoundationSpec.parse(f"dinov2:{folders['dinov2']}"), input_size=32)
    assert fm.patch_features(_images()).shape == (2, 32, 2, 4)  # 40 x 72 -> 17.8 x 32 px
    with pytest.raises(ValueError, match="input_size"):
        load_foundation(FoundationSpec.parse(f"sam:{folders['sam']}"), input_size=2 * IMAGE)


def test_preprocessor_config_sets_the_normalisation(folders: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "dinov2_custom"
    shutil.copytree(folders["dinov2"], folder)
    (folder / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3})
    )
    custom = load_foundation(FoundationSpec.parse(f"dinov2:{folder}"))
    default = load_foundation(FoundationSpec.parse(f"dinov2:{folders['dinov2']}"))
    assert custom.info["image_mean"] == [0.5] * 3 and custom.info["image_std"] == [0.25] * 3, custom.info
    images = _images()
    diff = (custom.patch_features(images) - default.patch_features(images)).abs().max().item()
    assert diff > 1e-3, f"preprocessor_config.json mean/std had no effect (max diff {diff:.2e})"
    (folder / "preprocessor_config.json").write_text(json.dumps({"do_normalize": False}))
    raw = load_foundation(FoundationSpec.parse(f"dinov2:{folder}"))
    assert raw.info["image_mean"] is None and raw.info["image_std"] is None, raw.info
    diff = (raw.patch_features(images) - default.patch_features(images)).abs().max().item()
    assert diff > 1e-3, f"do_normalize: false had no effect (max diff {diff:.2e})"


def test_default_features_equal_the_model_run_by_hand(folders: dict[str, Path]) -> None:
    """ImageNet normalisation, CLS dropped, tokens row-major: what DINOv2's own processor + model give."""
    fm = load_foundation(FoundationSpec.parse(f"dinov2:{folders['dinov2']}"))
    grey = _images(shape=(1, 4 * PATCH, 8 * PATCH))  # a whole number of patches: no resizing
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    with torch.no_grad():
        tokens = fm.model(pixel_values=(grey[:, None].expand(-1, 3, -1, -1) - mean) / std).last_hidden_state
    by_hand = F.normalize(tokens[:, 1:].transpose(1, 2).reshape(1, 32, 4, 8), dim=1)
    got = fm.patch_features(grey)
    assert torch.allclose(got, by_hand, atol=1e-5), (got - by_hand).abs().max()


# --- sampling at keypoints -------------------------------------------------------------------------


def test_sample_features_reads_patch_centres_exactly() -> None:
    """Pixel centres at integers: patch (i, j) of an (h, w) map over an H x W image sits at
    u = (j + 0.5) W / w - 0.5, v = (i + 0.5) H / h - 0.5; midway between two centres is their mean."""
    torch.manual_seed(3)
    h, w, height, width = 3, 4, 30, 50  # 10 x 12.5 px per patch: not a whole number on purpose
    feats = torch.randn(2, 5, h, w)
    ii, jj = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    u = (jj.flatten() + 0.5) * width / w - 0.5
    v = (ii.flatten() + 0.5) * height / h - 0.5
    uv = torch.stack([u, v], dim=-1).expand(2, -1, -1)
    desc = sample_features(feats, uv, image_size=(height, width))
    expected = F.normalize(feats.flatten(2).transpose(1, 2), dim=-1)
    assert desc.shape == (2, h * w, 5)
    assert torch.allclose(desc, expected, atol=1e-6), (desc - expected).abs().max()

    # Midway between the centres of (1, 1) and (1, 2); the image corner (-0.5, -0.5) reads patch (0, 0).
    mid = torch.tensor([[[(2.0 * width / w) - 0.5, 1.5 * height / h - 0.5], [-0.5, -0.5]]]).expand(2, -1, -1)
    got = sample_features(feats, mid, image_size=(height, width))
    want = F.normalize(
        torch.stack([(feats[:, :, 1, 1] + feats[:, :, 1, 2]) / 2, feats[:, :, 0, 0]], dim=1), dim=-1
    )
    assert torch.allclose(got, want, atol=1e-6), (got - want).abs().max()


def test_sample_features_on_model_output_match_the_patch_at_its_centre(folders: dict[str, Path]) -> None:
    fm = load_foundation(FoundationSpec.parse(f"dinov2:{folders['dinov2']}"))
    images = _images()
    feats = fm.patch_features(images)  # (2, 32, 4, 8) over 40 x 72 px
    uv = torch.tensor([[[(5 + 0.5) * 72 / 8 - 0.5, (2 + 0.5) * 40 / 4 - 0.5]]]).expand(2, -1, -1)
    desc = sample_features(feats, uv, image_size=(40, 72))
    assert torch.allclose(desc[:, 0], feats[:, :, 2, 5], atol=1e-6), (
        (desc[:, 0] - feats[:, :, 2, 5]).abs().max()
    )


def test_sample_features_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="keypoints_uv"):
        sample_features(torch.zeros(2, 4, 3, 3), torch.zeros(1, 5, 2), image_size=(10, 10))
    with pytest.raises(ValueError, match="feats"):
        sample_features(torch.zeros(4, 3, 3), torch.zeros(1, 5, 2), image_size=(10, 10))


def test_cosine_similarity_matrix_matches_pairwise_cosines() -> None:
    torch.manual_seed(4)
    a, b = torch.randn(2, 5, 7), torch.randn(2, 3, 7)
    sim = cosine_similarity_matrix(a, b)
    expected = F.cosine_similarity(a[:, :, None, :], b[:, None, :, :], dim=-1)
    assert sim.shape == (2, 5, 3)
    assert torch.allclose(sim, expected, atol=1e-6), (sim - expected).abs().max()
    assert torch.allclose(
        cosine_similarity_matrix(a, a).diagonal(dim1=1, dim2=2), torch.ones(2, 5), atol=1e-6
    )
