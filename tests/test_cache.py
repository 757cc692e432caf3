"""Embedding cache: named by content, reused when it matches the encoder, rebuilt when it does not."""
import numpy as np

from retrieval import Corpus, Dataset, Doc
from retrieval.dense.cache import cache_paths, cached_embeddings


class CountingEncoder:
    """Deterministic 2-d vectors; counts how many texts it encoded."""

    model_name, fingerprint, dim = "toy", "f" * 64, 2

    def __init__(self, scale=1.0):
        self.scale, self.encoded = scale, 0

    def _vectors(self, texts):
        self.encoded += len(texts)
        return np.array([[len(t) * self.scale, 1.0] for t in texts], dtype=np.float32)

    def encode_documents(self, texts, progress=False):
        return self._vectors(texts)

    encode_queries = encode_documents

    def describe(self):
        return {"model": "toy"}


def toy_dataset():
    corpus = Corpus([Doc(f"d{i}", "", "x" * (i + 1)) for i in range(10)])
    return Dataset(corpus, {"q1": "xx", "q2": "xxxxx"}, {"q1": {"d1": 1}}, "toy", "test")


def test_cache_is_named_by_content_reused_and_rebuilt_on_mismatch(tmp_path):
    dataset = toy_dataset()
    doc_path, query_path = cache_paths(tmp_path, CountingEncoder(), dataset)
    assert (doc_path.name, query_path.name) == ("toy-toy-ffffffffffff-10docs.docs.npy", "toy-toy-ffffffffffff-10docs-test2queries.npy")

    first = CountingEncoder()
    docs, queries, qids = cached_embeddings(first, dataset, tmp_path, check=3)
    assert first.encoded == 12 and docs.shape == (10, 2) and qids == ["q1", "q2"] and doc_path.is_file()

    again = CountingEncoder()
    docs2, queries2, _ = cached_embeddings(again, dataset, tmp_path, check=3)
    assert again.encoded == 3  # only the spot check
    np.testing.assert_array_equal(docs, docs2)
    np.testing.assert_array_equal(queries, queries2)

    np.save(doc_path, docs * 2)  # a file that no longer matches what the encoder gives
    third = CountingEncoder()
    docs3, _, _ = cached_embeddings(third, dataset, tmp_path, check=3)
    assert third.encoded == 3 + 10  # spot check failed, everything re-encoded
    np.testing.assert_array_equal(docs3, docs)


def test_a_wrapped_encoder_never_shares_its_base_cache(tmp_path):
    """A method wrapper with the base's fingerprint (e.g. fewer layers) gets its own file, one per setting."""
    from retrieval.dense.encoders import EncoderWrapper

    class Scaled(EncoderWrapper):
        def __init__(self, base, factor):
            super().__init__(base)
            self.factor = factor

        def describe(self):
            return {"base": self.base.describe(), "factor": self.factor}

    dataset = toy_dataset()
    base = CountingEncoder()
    names = {cache_paths(tmp_path, enc, dataset)[0].name for enc in (base, Scaled(base, 2), Scaled(base, 3))}
    assert len(names) == 3


def test_a_model_folder_path_is_one_file_name(tmp_path):
    encoder = CountingEncoder()
    encoder.model_name = "results/lexsembridge/slr/model"
    doc_path, _ = cache_paths(tmp_path, encoder, toy_dataset())
    assert doc_path.parent == tmp_path and doc_path.name.startswith("toy-results_lexsembridge_slr_model-")


def test_a_shorter_max_length_gets_its_own_file(tmp_path):
    """Vectors of documents cut to 128 tokens must never be served for the model's own 256 (or back)."""

    class Limited(CountingEncoder):
        own_max_length = 256

        def __init__(self, max_length):
            super().__init__()
            self.max_length = max_length

        def describe(self):
            return {"model": "toy", "max_length": self.max_length}

    dataset = toy_dataset()
    own, short = (cache_paths(tmp_path, Limited(n), dataset)[0].name for n in (256, 128))
    assert own == "toy-toy-ffffffffffff-10docs.docs.npy"  # the model's own limit keeps the plain name
    assert short != own and short.startswith("toy-toy-ffffffffffff-10docs-cfg")
