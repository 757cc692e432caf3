import shutil

import pytest
from conftest import shared

from eval.limit import load_limit, main_metric


def test_limit_small_loads_with_mteb_qrels():
    ds = load_limit(shared("limit-small"))
    assert len(ds.corpus) == 46 and len(ds.queries) == 1000
    assert all(len(docs) == 2 for docs in ds.qrels.values())
    assert main_metric(ds) == "recall@2"


def test_full_limit_names_the_missing_corpus(tmp_path):
    folder = tmp_path / "limit"
    shutil.copytree(shared("limit"), folder)
    with pytest.raises(FileNotFoundError) as err:
        load_limit(folder)
    assert f"{folder / 'corpus.jsonl'} is missing" in str(err.value) and "google-deepmind/limit" in str(err.value)
