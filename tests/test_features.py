"""features.py: device choice, where the weights come from, backbone creation and its errors, input
preprocessing, on the tiny random backbone (the real weights are covered by test_realdata.py)."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import timm
import torch

from rtg_anomaly.config import DetectorConfig
from rtg_anomaly.backbone.features import (BUNDLED_WEIGHTS, BackboneError, DeviceError, FeatureExtractor,
                                           create_backbone, resolve_device, resolve_weights, state_dict_digest)
from tests.conftest import tiny_config


def test_resolve_device_names(monkeypatch):
    assert resolve_device("CPU ") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="CUDA is not available"):
        resolve_device("cuda:0")
    with pytest.raises(DeviceError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    for name in ("cuda:1", "cuda:x"):
        with pytest.raises(DeviceError, match="does not exist"):
            resolve_device(name)


def test_resolve_weights_sources(tmp_path, monkeypatch):
    assert resolve_weights(tiny_config()) == "random"
    with pytest.raises(BackboneError, match="does not exist"):
        resolve_weights(DetectorConfig(weights=str(tmp_path / "missing.safetensors")))
    own = tmp_path / "own.safetensors"
    own.write_bytes(b"x")
    assert resolve_weights(DetectorConfig(weights=str(own))) == str(own.resolve())
    # The bundled file is found in $RTG_ANOMALY_BACKBONES first; a backbone without one uses the hub (None).
    bundled = tmp_path / "bundled"
    bundled.mkdir()
    (bundled / BUNDLED_WEIGHTS[DetectorConfig().backbone]).write_bytes(b"x")
    monkeypatch.setenv("RTG_ANOMALY_BACKBONES", str(bundled))
    assert resolve_weights(DetectorConfig()) == str((bundled / BUNDLED_WEIGHTS[DetectorConfig().backbone]).resolve())
    assert resolve_weights(DetectorConfig(backbone="resnet18")) is None


def test_unknown_timm_model_is_one_clear_error():
    with pytest.raises(BackboneError, match="unknown timm model 'no_such_net'"):
        create_backbone(tiny_config(backbone="no_such_net", model_kwargs={}))


def test_hub_failure_is_one_line_and_the_hub_client_stays_quiet(monkeypatch, capfd):
    """Offline, huggingface_hub logs a warning per failed request to stderr before it raises; the user
    should see only our one-line error."""
    hub_logger = logging.getLogger("huggingface_hub.utils._http")
    handler = logging.StreamHandler()  # what huggingface_hub installs on its library logger
    logging.getLogger("huggingface_hub").addHandler(handler)
    level_before = logging.getLogger("huggingface_hub").level

    def offline(*args, **kwargs):
        hub_logger.warning("'[Errno -2] Name or service not known' thrown while requesting HEAD https://hub")
        raise OSError("We couldn't connect to the hub.\nCheck your connection.")

    monkeypatch.setattr(timm, "create_model", offline)
    try:
        with pytest.raises(BackboneError) as caught:
            create_backbone(DetectorConfig(backbone="resnet18", input_size=None))
    finally:
        logging.getLogger("huggingface_hub").removeHandler(handler)
    assert str(caught.value) == ("cannot load weights for 'resnet18' (no internet? pass --weights FILE): "
                                 "We couldn't connect to the hub.")
    assert capfd.readouterr().err == ""
    assert logging.getLogger("huggingface_hub").level == level_before


def test_cnn_backbone_without_img_size_is_created():
    """CNNs take no img_size argument: the input size still applies, to the tiles, not to the model."""
    model, info = create_backbone(DetectorConfig(backbone="resnet18", weights="random", input_size=64))
    assert info == {"weights": "random", "weights_sha256": None}
    assert not model.training and not any(p.requires_grad for p in model.parameters())


def test_backbone_without_intermediate_features_is_refused(monkeypatch):
    monkeypatch.setattr(timm, "create_model", lambda *args, **kwargs: torch.nn.Linear(2, 2))
    with pytest.raises(BackboneError, match="does not expose intermediate features"):
        create_backbone(tiny_config())


def test_state_dict_digest_follows_the_weights():
    first, _ = create_backbone(tiny_config())
    second, _ = create_backbone(tiny_config())  # seeded random init: the same weights
    assert state_dict_digest(first) == state_dict_digest(second)
    with torch.no_grad():
        next(second.parameters()).add_(1e-3)
    assert state_dict_digest(first) != state_dict_digest(second)


def test_to_input_resizes_replicates_grey_and_normalises():
    extractor = FeatureExtractor(tiny_config(), "cpu")
    grey = np.full((2, 64, 64), 0.5, np.float32)
    batch = extractor.to_input(grey)
    assert batch.shape == (2, 3, 56, 56) and batch.dtype == torch.float32
    expected = (0.5 - extractor.mean.view(3)) / extractor.std.view(3)
    torch.testing.assert_close(batch[0, :, 10, 10], expected)
    colour = np.stack([grey, grey * 0, grey * 2], axis=-1)
    torch.testing.assert_close(extractor.to_input(colour)[1, :, 5, 5],
                               (torch.tensor([0.5, 0.0, 1.0]) - extractor.mean.view(3)) / extractor.std.view(3))


def test_embed_batches_give_the_same_features_as_one_batch():
    tiles = np.random.default_rng(0).random((5, 64, 64), dtype=np.float32)
    one_batch = FeatureExtractor(tiny_config(batch_size=8), "cpu").embed(tiles)
    in_twos = FeatureExtractor(tiny_config(batch_size=2), "cpu").embed(tiles)
    assert one_batch.shape == (5, *FeatureExtractor(tiny_config(), "cpu").grid, one_batch.shape[-1])
    torch.testing.assert_close(in_twos, one_batch, rtol=1e-5, atol=1e-5)


def test_input_size_must_be_a_multiple_of_the_patch():
    with pytest.raises(BackboneError, match="not a multiple of the patch size 14"):
        FeatureExtractor(tiny_config(input_size=57), "cpu")


def test_the_checkouts_bundled_backbones_folder_is_searched_whatever_the_working_directory(tmp_path, monkeypatch):
    from pathlib import Path

    from rtg_anomaly.backbone.features import backbones_dirs

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RTG_ANOMALY_BACKBONES", raising=False)
    checkout = Path(__file__).resolve().parent.parent / "model_artifacts" / "backbones"
    assert checkout.is_dir() and checkout in backbones_dirs()
