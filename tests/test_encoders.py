"""Saved method modules as encoders: the error paths of retrieval.dense.encoders and of a dense index over one."""
import numpy as np
import pytest

from indexes.manifest import write_index_dir
from retrieval import IndexLoadError, build_retriever, load_corpus, load_retriever
from retrieval.dense.adapter import ResidualAdapter
from retrieval.dense.encoders import encoder_fingerprint, load_encoder


def adapter(seed: int) -> ResidualAdapter:
    rng = np.random.default_rng(seed)
    return ResidualAdapter(rng.normal(size=(2, 384)) / 20, rng.normal(size=(384, 2)) / 20)


def test_a_module_whose_base_weights_changed_is_refused(tmp_path):
    adapter(0).save(tmp_path / "a", base={"model": "minilm", "sha256": "0" * 64})
    with pytest.raises(IndexLoadError, match="retrain the module"):
        load_encoder(tmp_path / "a")


def test_a_saved_folder_of_another_kind_is_not_an_encoder(tmp_path):
    write_index_dir(tmp_path / "bm25", lambda tmp: (tmp / "docids.txt").write_text("d1\n") and {"kind": "bm25"})
    with pytest.raises(ValueError, match="not an encoder"):
        load_encoder(tmp_path / "bm25")


def test_a_dense_index_refuses_a_module_folder_changed_after_indexing(tiny_beir, tmp_path):
    from retrieval.dense.encoder import SentenceEncoder

    base = {"model": "minilm", "sha256": SentenceEncoder("minilm").fingerprint}
    adapter(0).save(tmp_path / "a", base=base)
    before = encoder_fingerprint(tmp_path / "a")
    retriever = build_retriever("dense", model=str(tmp_path / "a"))
    retriever.index(load_corpus(tiny_beir))
    retriever.save(tmp_path / "index")
    adapter(1).save(tmp_path / "a", base=base)  # retrained in place
    assert encoder_fingerprint(tmp_path / "a") != before
    with pytest.raises(IndexLoadError, match="outside the index"):  # an untrusted index may not name it at all
        load_retriever(tmp_path / "index")
    with pytest.raises(IndexLoadError, match="re-index"):
        load_retriever(tmp_path / "index", trust_paths=True)
