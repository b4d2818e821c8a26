"""The GPU data path on the CPU: which decoder a bank uses, and JPEG bytes decoded and preprocessed as tensors
(the path a CUDA device takes) giving the PIL path's features up to the two libraries' resampling."""

import numpy as np
import pytest
import torch
from PIL import Image

from vlprompt.clip import features
from vlprompt.clip.features import ExtractionSpec, choose_decoder, decode_on_device, extract_split

CUDA, CPU = torch.device("cuda"), torch.device("cpu")


def test_the_device_decodes_only_jpeg_test_transform_banks_on_a_gpu():
    jpegs, pngs = ["a/1.jpg", "b/2.JPEG"], ["a/1.jpg", "b/2.png"]
    assert choose_decoder(CUDA, "test", jpegs) == "jpeg-on-device"
    assert choose_decoder(CUDA, "val", pngs) == "pil"  # one non-JPEG: all through PIL
    assert choose_decoder(CPU, "test", jpegs) == "pil"
    assert choose_decoder(CUDA, "train_views", jpegs) == "pil"  # seeded PIL augmentation
    assert choose_decoder(CUDA, "test", []) == "pil"


@pytest.fixture
def jpeg_folder(tmp_path):
    rng = np.random.default_rng(0)
    rows = []
    for i, (h, w) in enumerate([(40, 56), (64, 48), (33, 33), (80, 60)]):
        # smooth images (an upsampled 6 x 6 grid): resampling differences stay small, as on photographs
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        img = Image.fromarray(small).resize((w, h), Image.BILINEAR)
        rel = f"c{i % 2}/img{i}.jpg"
        (tmp_path / rel).parent.mkdir(exist_ok=True)
        img.save(tmp_path / rel, quality=95)
        rows.append([rel, i % 2, f"class {i % 2}"])
    return tmp_path, rows


def test_jpeg_decoded_as_tensors_gives_the_pil_features(pocket_random_backbone, jpeg_folder):
    root, rows = jpeg_folder
    model = pocket_random_backbone.model
    pil = torch.stack(
        [pocket_random_backbone.preprocess(Image.open(root / r[0]).convert("RGB")) for r in rows]
    )  # (B, 3, S, S)
    prepare = decode_on_device(pocket_random_backbone.image_size, model.visual.image_mean, model.visual.image_std, CPU)
    tensor = prepare([features.EncodedImages(root, [r[0] for r in rows])[k] for k in range(len(rows))])
    assert tensor.shape == pil.shape
    assert (tensor - pil).abs().mean() < 0.05  # normalised units: bicubic in PIL and in torch, both antialiased
    with torch.no_grad():
        a, b = model.encode_image(pil), model.encode_image(tensor)
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99


def test_a_bank_decoded_on_the_device_is_recorded_and_close_to_pil(
    pocket_random_backbone, jpeg_folder, tmp_path, monkeypatch
):
    root, rows = jpeg_folder
    extract_split(pocket_random_backbone, root, ExtractionSpec("test", rows, 1), tmp_path / "pil", progress=False)
    monkeypatch.setattr(features, "choose_decoder", lambda device, split, relpaths: "jpeg-on-device")
    out = extract_split(
        pocket_random_backbone, root, ExtractionSpec("test", rows, 1), tmp_path / "dev", batch_size=3, progress=False
    )
    bank = features.FeatureBank(tmp_path / "dev")
    assert bank.meta("test")["decoder"] == "jpeg-on-device"  # told apart from a PIL bank
    assert "decoder" not in features.FeatureBank(tmp_path / "pil").meta("test")
    a = torch.from_numpy(np.load(tmp_path / "pil" / "test.npy")).float()
    b = torch.from_numpy(np.load(out)).float()
    assert torch.nn.functional.cosine_similarity(a, b).min() > 0.99
