"""Checkpoints: our format round trip, reference .pth loading and conversion, refusing pickles."""

import json
import os
import pickle

import pytest
import torch
from helpers import images, make_model

from tarflow import TarFlow
from tarflow.hub import ModelLoadError, convert, infer_config, load_model, load_reference


def test_save_load_round_trip(tmp_path):
    model = make_model(num_classes=3, in_channels=3, nvp=False)
    model.noise_std = 0.1
    model.class_names = ["cat", "dog", "fox"]
    model.dataset = "toy"
    model.sampling = {"guidance": 2.0}
    model.save_pretrained(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["class_names"] == ["cat", "dog", "fox"] and cfg["noise_std"] == 0.1
    assert cfg["sampling"] == {"guidance": 2.0} and cfg["nvp"] is False and cfg["head_dim"] == 16
    assert (tmp_path / "m" / "model.safetensors").is_file()
    loaded = load_model(tmp_path / "m")
    assert loaded.config == model.config
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    x = images(model)
    torch.testing.assert_close(loaded(x)[0], model(x)[0], atol=0, rtol=0)


def test_loading_our_format_is_strict(tmp_path):
    model = make_model()
    model.save_pretrained(tmp_path / "m")
    cfg_path = tmp_path / "m" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["layers_per_block"] = 3
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ModelLoadError, match="could not load the model folder"):
        load_model(tmp_path / "m")


def _reference_file(tmp_path, model, name):
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return path


@pytest.mark.parametrize("nvp", [True, False])
def test_reference_pth_loads_strictly_with_inferred_architecture(tmp_path, nvp):
    model = make_model(nvp=nvp, num_classes=3, in_channels=3, img_size=8, patch_size=4, channels=64, head_dim=64,
                       num_blocks=3, layers=2)
    path = _reference_file(tmp_path, model, "afhq_model_4_64_3_2_0.07.pth")
    loaded = load_model(path)
    assert (loaded.in_channels, loaded.patch_size, loaded.img_size, loaded.channels) == (3, 4, 8, 64)
    assert (loaded.num_blocks, loaded.layers_per_block, loaded.nvp, loaded.num_classes) == (3, 2, nvp, 3)
    assert loaded.noise_std == 0.07 and loaded.class_names == ["cat", "dog", "wild"] and loaded.dataset == "afhq"
    x = images(model)
    y = torch.tensor([0, 1, 2])
    torch.testing.assert_close(loaded(x, y)[0], model(x, y)[0], atol=0, rtol=0)


def test_infer_config_without_a_telling_name():
    rgb = make_model(in_channels=3, patch_size=2, channels=64, head_dim=64)
    assert infer_config(rgb.state_dict())["in_channels"] == 3
    grey = make_model(in_channels=1, patch_size=4, channels=64, head_dim=64)
    cfg = infer_config(grey.state_dict())
    assert (cfg["in_channels"], cfg["patch_size"], cfg["img_size"]) == (1, 4, 8)
    assert infer_config(grey.state_dict(), in_channels=4)["patch_size"] == 2
    with pytest.raises(ModelLoadError, match="reference layout"):
        infer_config({"foo": torch.zeros(1)})


def test_convert_reference_to_our_format(tmp_path):
    model = make_model(num_classes=2, in_channels=3, patch_size=4, channels=64, head_dim=64)
    path = _reference_file(tmp_path, model, "imagenet_model_4_64_2_2_0.15.pth")
    out = convert(path, tmp_path / "converted")
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["noise_std"] == 0.15 and cfg["dataset"] == "imagenet"
    again = load_model(out)
    x = images(model)
    torch.testing.assert_close(again(x)[0], model(x)[0], atol=0, rtol=0)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {os.environ['EVIL_MARKER']}",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    monkeypatch.setenv("EVIL_MARKER", str(marker))
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"blocks.0.proj_in.weight": _Evil()}, f)
    torch.save({"w": _Evil()}, tmp_path / "evil2.pth")
    for p in [path, tmp_path / "evil2.pth"]:
        with pytest.raises(ModelLoadError, match="refused"):
            load_reference(p)
    assert not marker.exists()


def test_clear_errors_for_bad_sources(tmp_path):
    with pytest.raises(ModelLoadError, match="neither a model folder"):
        load_model(tmp_path / "nothing-here.bin")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(ModelLoadError, match="Hub repo"):
        load_model("someone/not-a-model-anywhere")  # offline in tests
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ModelLoadError, match="refused"):
        load_model(tmp_path / "junk.pth")
    torch.save({"a": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ModelLoadError, match="reference layout"):
        load_model(tmp_path / "other.pth")


def test_model_card_and_mixin_from_pretrained(tmp_path):
    model = make_model(num_classes=2)
    model.save_pretrained(tmp_path / "m")
    assert (tmp_path / "m" / "README.md").is_file()
    direct = TarFlow.from_pretrained(tmp_path / "m", strict=True)
    assert direct.num_classes == 2
