"""User errors of the SEAL recipe scripts end in one line and exit 2, before anything loads; `recipe_queries`
reads back what a recipe folder was run on."""
import json
import subprocess
import sys

import pytest

from conftest import REPO, write_beir

from retrieval.errors import SpecError
from training.seal import recipe_queries


@pytest.mark.parametrize("argv, says", [
    (["scripts/seal_dev_sweep.py", "{folder}", "lenght", "5"], "'lenght' is not a SEAL search option"),
    (["scripts/seal_dev_sweep.py", "{folder}", "length", "5"], "no results.json here"),
    (["scripts/seal_hybrid.py", "{folder}"], "no results.json here"),
])
def test_scripts_refuse_bad_arguments_in_one_line(tmp_path, argv, says):
    done = subprocess.run([sys.executable, *[a.format(folder=tmp_path) for a in argv]], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 2 and says in done.stderr and "Traceback" not in done.stderr


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
