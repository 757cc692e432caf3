"""Retrieval metrics through pytrec_eval (trec_eval's C code, the engine BEIR and mteb use).

Averages are over every judged query, a query the run misses counting 0 (trec_eval's -c), so a
retriever cannot gain by returning nothing for hard queries.
"""
from __future__ import annotations

from retrieval.run import Run

# our name -> trec_eval measure family; MRR@k is recip_rank on the run cut at k; p@k is trec_eval's P_k
# (relevant among the first k, divided by k even when fewer are returned: P_30 is p@30 with --k 30)
MEASURES = {"ndcg": "ndcg_cut", "recall": "recall", "map": "map_cut", "mrr": "recip_rank", "p": "P"}


def per_query(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], ks=(10, 100)) -> dict[str, dict[str, float]]:
    """{metric@k: {query_id: value}} for nDCG, Recall, MAP, MRR and precision (p@k) at each k."""
    import pytrec_eval

    ks = sorted({int(k) for k in ks})
    run = Run(run)
    cut = ",".join(map(str, ks))
    evaluator = pytrec_eval.RelevanceEvaluator(qrels, {f"ndcg_cut.{cut}", f"recall.{cut}", f"map_cut.{cut}", f"P.{cut}"})
    scores = evaluator.evaluate(run)
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"})
    out: dict[str, dict[str, float]] = {}
    for k in ks:
        mrr = rr.evaluate(run.truncate(k))
        for name, family in MEASURES.items():
            source, measure = (mrr, "recip_rank") if name == "mrr" else (scores, f"{family}_{k}")
            out[f"{name}@{k}"] = {qid: source.get(qid, {}).get(measure, 0.0) for qid in qrels}
    return out


def evaluate_run(qrels: dict[str, dict[str, int]], run: dict[str, dict[str, float]], ks=(10, 100)) -> dict[str, float]:
    """Mean of each metric over the judged queries: {"ndcg@10": ..., "recall@100": ..., ...}."""
    return {name: sum(values.values()) / len(values) for name, values in per_query(qrels, run, ks).items()}
