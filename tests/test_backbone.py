"""Backbone loading: tags, local files, the pocket alias, offline mode, errors, weights hash, prompt cache."""

import os
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from vlprompt.clip import backbone as bb_mod
from vlprompt.clip.backbone import POCKET_MODEL, BackboneError, load_backbone


@pytest.fixture(autouse=True, scope="module")
def _leave_the_global_rng_alone():
    """Models built here draw from torch's global generator: restore it, so that other modules'
    randomly initialised fixtures (conftest's session backbone) do not depend on these tests."""
    with torch.random.fork_rng(devices=[]):
        yield


def test_unknown_model_names_close_matches():
    with pytest.raises(BackboneError, match=r"unknown open_clip model 'ViT-B-61'.*did you mean.*ViT-B-16"):
        load_backbone("ViT-B-61", None)


def test_unknown_tag_lists_known_tags():
    with pytest.raises(BackboneError, match=r"no pretrained tag 'openia' for 'ViT-B-32'.*'openai'"):
        load_backbone("ViT-B-32", "openia")
    with pytest.raises(BackboneError, match=r"no pretrained tag 'openai' for 'PocketCLIP-ViT-T8'"):
        load_backbone(POCKET_MODEL, "openai")


def test_missing_local_file(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(BackboneError, match=r"nope\.pt' does not exist"):
        load_backbone(POCKET_MODEL, str(missing))


def test_wrong_checkpoint_file_names_it(tmp_path):
    bad = tmp_path / "other.pt"
    torch.save({"some.weight": torch.zeros(2)}, bad)
    with pytest.raises(BackboneError, match=r"other\.pt' into 'PocketCLIP-ViT-T8'"):
        load_backbone(POCKET_MODEL, str(bad))


def test_local_checkpoints_are_identified_by_their_weights(tmp_path):
    oc = bb_mod.open_clip()
    paths = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = oc.create_model(POCKET_MODEL, pretrained=None)
        paths.append(tmp_path / f"ckpt{seed}.pt")
        torch.save(model.state_dict(), paths[-1])
    a, a_again, b = (load_backbone(POCKET_MODEL, str(p)) for p in (paths[0], paths[0], paths[1]))
    assert a.id == a_again.id and a.weights_sha256 == a_again.weights_sha256
    assert a.id != b.id and a.weights_sha256 != b.weights_sha256
    assert a.weights_sha256 == bb_mod.state_dict_sha256(oc.create_model(POCKET_MODEL, pretrained=str(paths[0])))
    prov = a.provenance()
    assert prov["pretrained"] == "ckpt0.pt" and prov["weights_source"] == "file"
    assert prov["weights_sha256"] == a.weights_sha256 and a.id.startswith(f"{POCKET_MODEL}@")


def test_pocket_alias_loads_the_shipped_weights():
    b = load_backbone(POCKET_MODEL, "pocket", force_quick_gelu=True)
    assert b.pretrained == bb_mod.POCKET_WEIGHTS.name and b.source == "file"
    assert "-quickgelu@" in b.id and b.provenance()["quick_gelu"] is True
    assert not any(p.requires_grad for p in b.model.parameters()) and not b.model.training


def test_offline_without_cached_weights_fails_fast_and_says_how_to_fix(tmp_path):
    hf_home = tmp_path / "hf"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "XDG_CACHE"))}
    env.update(HF_HUB_OFFLINE="1", HF_HOME=str(hf_home), HOME=str(tmp_path), OMP_NUM_THREADS="1")
    code = textwrap.dedent("""
        from vlprompt.clip.backbone import BackboneError, load_backbone
        try:
            load_backbone("ViT-B-32", "openai")
        except BackboneError as err:
            print(err)
            raise SystemExit(3)
    """)
    t = time.perf_counter()
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert time.perf_counter() - t < 60
    assert res.returncode == 3, res.stderr
    msg = res.stdout
    assert "HF_HUB_OFFLINE=1" in msg and str(hf_home / "hub") in msg
    assert "fetch-weights --model ViT-B-32 --pretrained openai" in msg and "local weights file" in msg


def test_cached_weights_finds_a_hub_download_without_network(tmp_path):
    repo = tmp_path / "models--timm--vit_base_patch32_clip_224.openai"
    assert bb_mod.cached_weights("ViT-B-32", "openai", cache_dir=str(tmp_path)) is None
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "open_clip_model.safetensors").write_bytes(b"x")
    found = bb_mod.cached_weights("ViT-B-32", "openai", cache_dir=str(tmp_path))
    assert found == str(snap / "open_clip_model.safetensors")


def test_frozen_prompts_are_encoded_once(monkeypatch):
    b = load_backbone(POCKET_MODEL, None)  # not conftest's session backbone: see _leave_the_global_rng_alone
    texts = ["a photo of a red circle.", "a big blue square.", "a photo of a small faded green star."]
    calls = []
    forward = bb_mod.PromptedTextEncoder.forward

    def counting(self, x, eot, trim=True):
        calls.append(x.shape[0])
        return forward(self, x, eot, trim)

    monkeypatch.setattr(bb_mod.PromptedTextEncoder, "forward", counting)
    first = bb_mod.encode_prompts(b, texts, batch_size=2)  # two batches, sorted by length
    assert sum(calls) == len(texts)
    first.mul_(0)  # callers own their copy
    second = bb_mod.encode_prompts(b, texts)
    assert sum(calls) == len(texts)  # served from the cache
    with torch.no_grad():
        ref = torch.nn.functional.normalize(b.model.encode_text(b.tokenizer(texts)), dim=-1)
    torch.testing.assert_close(second, ref, atol=1e-5, rtol=0)
    bb_mod.encode_prompts(b, texts[:2])
    assert sum(calls) == len(texts) + 2  # other prompts: encoded
