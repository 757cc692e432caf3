"""User errors of the SEAL recipe scripts end in one line and exit 2, before anything loads; `recipe_queries`
(SEAL's and UGR's) reads back what a recipe folder was run on."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_DATA, shared, write_beir

from retrieval.errors import SpecError
from training import ugr
from training.seal import recipe_queries


@pytest.mark.parametrize("argv, says", [
    (["scripts/seal_dev_sweep.py", "{folder}", "lenght", "5"], "'lenght' is not a SEAL search option"),
    (["scripts/seal_dev_sweep.py", "{folder}", "length", "5"], "no results.json here"),
    (["scripts/seal_dev_sweep.py", "{folder}", "beam", "5,15", "--granularity", "sentence"], "not a folder written by `dengen train ugr`"),
    (["scripts/seal_dev_sweep.py", "{folder}", "beam", "5", "--test", "every"], "invalid choice: 'every'"),
    (["scripts/seal_hybrid.py", "{folder}"], "no results.json here"),
])
def test_scripts_refuse_bad_arguments_in_one_line(tmp_path, argv, says):
    done = subprocess.run([sys.executable, *[a.format(folder=tmp_path) for a in argv]], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr


def test_sweep_refuses_a_folder_of_the_other_recipe_or_without_its_index_in_one_line(tmp_path):
    """A SEAL folder given a granularity, a UGR folder given none, a UGR folder whose index is gone."""
    shared("scifact-claims")
    (tmp_path / "seal").mkdir()
    (tmp_path / "seal" / "results.json").write_text(json.dumps({"config": {"data": str(SHARED_DATA / "scifact")}}))
    (tmp_path / "ugr").mkdir()
    (tmp_path / "ugr" / "results.json").write_text(json.dumps({"config": {
        "data": str(SHARED_DATA), "granularities": ["sentence"], "dev_choices": [{}], "designs": ["discrete"]}, "rows": []}))
    for folder, extra, says in [("seal", ["--granularity", "sentence"], "not a folder written by `dengen train ugr`"),
                                ("ugr", [], "written by `dengen train ugr`, not `dengen train seal`"),
                                ("ugr", ["--granularity", "sentence"], "multitask-discrete-scifact: no such index folder")]:
        done = subprocess.run([sys.executable, "scripts/seal_dev_sweep.py", str(tmp_path / folder), "beam", "5", *extra],
                              cwd=REPO, capture_output=True, text=True)
        assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr, done.stderr[-500:]
    assert sorted(p.name for p in (tmp_path / "ugr").iterdir()) == ["results.json"]  # nothing written


def test_recipe_queries_reads_the_recipes_sample_and_dev_queries(tmp_path):
    queries = {f"q{i}": f"query {i}" for i in range(6)}
    data = write_beir(tmp_path / "data", queries=queries, qrels={q: {"d1": 1} for q in queries})
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.json").write_text(json.dumps({"config": {
        "data": str(data), "test_split": "test", "query_sample": 3, "dev_split": "rest", "dev_sample": 2, "seed": 0}}))
    config, test, sample, dev = recipe_queries(tmp_path / "out")
    assert len(test.queries) == 6 and len(sample) == 3 and len(dev.queries) == 2
    assert not set(sample) & set(dev.queries)  # dev queries are never test-sample queries
    with pytest.raises(SpecError, match="no results.json"):
        recipe_queries(tmp_path / "data")


def test_ugr_recipe_queries_reads_a_granularitys_queries_index_and_dev_choice(tmp_path):
    """The sentence granularity of the shared SciFact claims: the recipe's seeded test sample, dev queries
    drawn from training claims that did not train, and the options the granularity chose on them."""
    shared("scifact-claims")
    config = {"data": str(SHARED_DATA), "granularities": ["sentence"], "train_queries": 10,
              "test_sample": 5, "dev_sample": 3, "dev_choices": [{}, {"unigram_scores": True}], "designs": ["discrete"]}
    rows = [{"options": {"model": "multitask-discrete", "granularity": "sentence"}, "granularity": "sentence",
             "dev": {"chosen": {"unigram_scores": True}}}]
    (tmp_path / "results.json").write_text(json.dumps({"config": config, "rows": rows}))
    full, test, sample, dev, index, chosen = ugr.recipe_queries(tmp_path, "sentence")
    assert len(sample) == 5 and set(sample) <= set(test.queries) and len(test.queries) > 5
    units = ugr.load_units(full)
    trained = ugr.training_queries(units["sentence"], full)
    assert len(dev.queries) == 3 and not set(dev.queries) & (set(trained) | set(test.queries))
    assert all(dev.qrels[q] for q in dev.queries)  # dev queries have relevant sentences
    assert index == tmp_path / "indexes" / "multitask-discrete-scifact" and chosen == {"unigram_scores": True}
    with pytest.raises(SpecError, match="no 'page' granularity"):
        ugr.recipe_queries(tmp_path, "page")


def test_each_sweep_writes_its_own_file():
    """A sweep with other values, granularity or test mode does not overwrite an earlier sweep's record."""
    sys.path.insert(0, str(REPO / "scripts"))
    from seal_dev_sweep import sweep_name

    assert sweep_name("beam", [5, 15], "sentence", "all") == "dev-sweep-beam-5,15-sentence-test-all.json"
    assert sweep_name("length", [10, 8, 5], None, None) == "dev-sweep-length-10,8,5.json"
    names = {sweep_name("beam", v, g, t) for v in ([5], [15], [5, 15]) for g in (None, "sentence") for t in (None, "sample", "all")}
    assert len(names) == 18
