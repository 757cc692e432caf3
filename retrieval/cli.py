"""The `dengen` command line: index build, search, eval, report.

Everything heavy is imported inside the command that needs it, so `dengen --help` is instant.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import signal
import sys
import threading
from pathlib import Path

SPEC_HELP = "retriever spec: bm25 | dense:model=minilm,index=Flat | bm25+dense | a saved index folder | config.yaml"
TRUST_HELP = ("trust the saved indexes this command loads to name model folders outside themselves "
              "(refused by default: a manifest is untrusted input; docs/reliability.md)")
OVERWRITE_HELP = "replace an existing dengen index at --out (a folder that is not a dengen index is never replaced)"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _ks(text: str) -> list[int]:
    try:
        ks = sorted({int(k) for k in text.split(",") if k.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--k expects comma-separated integers, got {text!r}") from None
    if not ks or ks[0] < 1:
        raise argparse.ArgumentTypeError("--k needs positive integers")
    return ks


def cmd_index_build(args) -> None:
    from retrieval.data import load_corpus
    from retrieval.spec import parse_spec

    retriever = parse_spec(args.retriever)
    options = {name: value for name, value in (("shards", args.shards), ("workers", args.workers),
                                               ("ray_address", args.ray_address)) if value is not None}
    retriever.check_index_options(args.engine, **options)  # a bad spec or option fails before the corpus is read
    corpus = load_corpus(args.data, stream=args.stream)
    retriever.index(corpus, engine=args.engine, **options)
    retriever.save(args.out, overwrite=args.overwrite)
    print(f"indexed {retriever.doc_count} documents in {retriever.build_seconds:.1f} s -> {args.out}")


def cmd_search(args) -> None:
    from retrieval.api import load_retriever
    from retrieval.data import load_queries

    retriever = load_retriever(args.index)
    if args.query is not None:
        for rank, hit in enumerate(retriever.search_one(args.query, args.k), start=1):
            snippet = (hit.text or "").replace("\n", " ")
            snippet = snippet[: args.snippet] + ("..." if len(snippet) > args.snippet else "")
            print(f"{rank:>3}  {hit.score:9.4f}  {hit.doc_id}  {snippet}")
        return
    run = retriever.search(load_queries(args.queries), args.k)
    run.to_trec(args.out, tag=args.tag)
    print(f"{len(run)} queries -> {args.out}")


def cmd_eval(args) -> None:
    from eval.metrics import evaluate_run
    from eval.runner import evaluate, format_table
    from retrieval.data import load_dataset
    from retrieval.errors import SpecError
    from retrieval.run import Run
    from retrieval.spec import parse_spec

    if args.suite:
        from eval.report import markdown_table
        from eval.suite import run_suite

        if not args.retriever:
            raise SpecError("--suite needs --retriever")
        records = run_suite(args.retriever, args.out or "results", args.suite, args.data_root,
                            args.tasks.split(",") if args.tasks else None, name=args.name)
        print(markdown_table(records) if records else "no task ran")
        return
    if args.sts or args.rarb:
        return _eval_file(args)
    if not args.data:
        raise SpecError("eval needs --data DIR (or --suite NAME, --sts FILE, --rarb FILE)")
    retriever = parse_spec(args.retriever) if args.retriever else None
    if retriever is not None and not retriever.doc_count:
        retriever.check_index_options()  # a bad spec fails before the dataset is read
    if args.keep_missing and args.mteb:
        raise SpecError("--keep-missing is for dengen's runner; mteb's tasks read qrels with --drop-missing or as they are")
    dataset = load_dataset(args.data, args.split, drop_missing=args.drop_missing, keep_missing=args.keep_missing)
    if args.run:
        from eval.record import Result

        metrics = evaluate_run(dataset.qrels, Run.from_trec(args.run), args.k)
        record = Result(task=dataset.name, family="retrieval", dataset=dataset.name, split=dataset.split,
                        label=Path(args.run).stem, retriever={"kind": "run", "file": args.run}, metrics=metrics,
                        main_metric="ndcg@10" if "ndcg@10" in metrics else next(iter(metrics)),
                        num_queries=len(dataset.queries), num_docs=len(dataset.corpus))
        run = None
    elif args.mteb:
        from eval.mteb_adapter import MtebRetriever, mteb_record, mteb_scores, retrieval_metric_names
        from eval.mteb_tasks import local_retrieval_task

        main_score = f"ndcg_at_{10 if 10 in args.k else args.k[0]}"  # mteb needs it among the cut-offs
        task = local_retrieval_task(args.data, args.split, dataset.name, main_score=main_score, k_values=args.k,
                                    drop_missing=args.drop_missing)
        scores = mteb_scores(MtebRetriever(retriever), task)
        record, run = mteb_record(retriever, dataset.name, dataset.split, scores, retrieval_metric_names(args.k)), None
    else:
        record, run = evaluate(retriever, dataset, args.k)
    if args.name:
        record = dataclasses.replace(record, label=args.name)
    if args.retriever and args.save_index:
        retriever.save(args.save_index, overwrite=args.overwrite)
    print(format_table([record]))
    if args.out:
        out = Path(args.out)
        stem = f"{dataset.name}-{dataset.split}-{record.label}" + ("-mteb" if args.mteb else "")
        record.write(out, stem)
        if run is not None:
            try:
                run.to_trec(out / f"{stem}.trec", tag=record.label)
            except ValueError as err:  # e.g. LIMIT's doc ids are names with spaces
                print(f"no TREC run written: {err}", file=sys.stderr)
        print(f"wrote {out / (stem + '.json')}")


def _eval_file(args) -> None:
    """`dengen eval --sts FILE` (cosine Spearman of the retriever's encoder on a pair file) or `--rarb FILE`
    (RAR-b multiple-choice accuracy on a set file, with and without its instruction)."""
    from eval.report import markdown_table
    from retrieval.errors import SpecError
    from retrieval.longdoc import encoder_of
    from retrieval.spec import parse_spec

    if not args.retriever:
        raise SpecError("--sts and --rarb need --retriever")
    if args.sts:
        from eval.sts import evaluate_sts, load_pair_file

        load_pair_file(args.sts)  # a bad file fails before the model loads
        encoder = encoder_of(parse_spec(args.retriever))
        if encoder is None:
            raise SpecError(f"--sts needs a retriever with a sentence encoder; {args.retriever!r} has none")
        records = [evaluate_sts(encoder, args.sts)]
    else:
        from eval.rarb import evaluate_mcr_sets, load_mcr

        load_mcr(args.rarb)  # a bad file fails before the model loads
        records = evaluate_mcr_sets(args.retriever, [args.rarb])
    if args.name:
        records = [dataclasses.replace(r, label=args.name) for r in records]
    print(markdown_table(records))
    for record in records if args.out else ():
        from eval.runner import safe_name

        print(f"wrote {record.write(args.out, safe_name(f'{record.column}-{record.label}'))}")


def cmd_serve(args) -> None:
    from retrieval.serve import parse_index_args, serve

    serve(parse_index_args(args.indexes), host=args.host, port=args.port)


def cmd_report(args) -> None:
    from eval.record import read_results
    from eval.report import markdown_table, write_report
    from retrieval.errors import DataError

    records = read_results(args.results)
    if not records:
        raise DataError(args.results, None, None, "no result files (*.json) to report")
    page = write_report(records, args.out, title=args.title)
    print(markdown_table(records))
    _wrote_report(page, args)


def _wrote_report(page: Path, args) -> None:
    from eval.report import render

    print(f"wrote {page}, {page.parent / 'README.md'} and {page.parent / 'report.json'}")
    if args.screenshot:
        width, height = (int(n) for n in args.window.lower().split("x"))
        render(page, screenshot=args.screenshot, size=(width, height))
        print(f"wrote {args.screenshot}")


def cmd_leaderboard(args) -> None:
    from eval.leaderboard import Task, check_board, read_board, run_board
    from eval.report import markdown_table, write_report
    from retrieval.errors import DataError, SpecError

    board = read_board(args.board)
    for folder in args.data or ():
        if not Path(folder).is_dir():
            raise DataError(folder, None, None, "--data: no such BEIR folder")
        board.tasks.append(Task(f"beir:{folder}"))
    only = set(args.row) if args.row else None
    unknown = sorted(only - {row.name for row in board.rows}) if only else []
    if unknown:
        raise SpecError(f"--row: {', '.join(map(repr, unknown))} not in {args.board}")
    only_tasks = set(args.task) if args.task else None
    unknown = sorted(only_tasks - {n for t in board.tasks for n in (t.name, t.key)}) if only_tasks else []
    if unknown:
        raise SpecError(f"--task: {', '.join(map(repr, unknown))} not in {args.board} (its tasks: "
                        f"{', '.join(t.key for t in board.tasks)})")
    if args.action == "report":  # the stored cells only: no row computed, no recipe trained
        if only or only_tasks:
            raise SpecError("--row/--task: `leaderboard report` computes nothing; use `leaderboard run` to compute cells")
        only = set()
    filled = run_board(board, args.out, args.data_root, train=not args.no_train and args.action != "report",
                       cached=args.action != "check", only=only, only_tasks=only_tasks)
    print(f"{filled.computed} cell(s) computed, {len(filled.results)} result(s), {len(filled.missing)} cell(s) empty; "
          f"the cells took {filled.seconds / 3600:.1f} h to compute")
    if filled.results:
        page = write_report(filled.results, Path(args.out) / "report", title=board.title, missing=filled.missing,
                            profiles=filled.profiles)
        print(markdown_table(filled.results))
        _wrote_report(page, args)
    if args.action == "check":
        failures = check_board(board, filled)
        for line in failures:
            print(f"FAIL {line}", file=sys.stderr)
        if failures:
            raise SpecError(f"{args.board}: {len(failures)} expected score(s) not reproduced (listed above)")
        scope = " (the cells outside --row/--task as stored)" if only or only_tasks else ""
        print(f"{args.board}: every expected score reproduced{scope}")


# method -> training module with main(argv) reading `--config FILE.yaml`
TRAINERS = {
    "adapter": "training.adapter",
    "matryoshka2d": "training.matryoshka2d",
    "lexsembridge": "training.lexsembridge",
    "dse": "training.dse",
    "dupmae": "training.dupmae",
    "sitemb": "training.sitemb",
    "seal": "training.seal",
    "corpusbrain": "training.corpusbrain",
    "ugr": "training.ugr",
}


def cmd_train(args) -> None:
    import importlib

    importlib.import_module(TRAINERS[args.method]).main(["--config", args.config, *args.trainer_args])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dengen", description="Dense, sparse and generative retrieval behind one API.")
    sub = parser.add_subparsers(dest="command", required=True)

    index = sub.add_parser("index", help="build indexes").add_subparsers(dest="action", required=True)
    build = index.add_parser("build", help="index a corpus and save it")
    build.add_argument("--data", required=True, help="corpus: a BEIR folder or a jsonl/tsv file")
    build.add_argument("--retriever", required=True, help=SPEC_HELP)
    build.add_argument("--out", required=True, help="folder to save the index in")
    build.add_argument("--stream", action="store_true",
                       help="leave the corpus on disk and index it in chunks (corpora larger than memory; dense: "
                            "one faiss index, IVF/PQ trained on the first 262,144 documents)")
    build.add_argument("--engine", choices=("local", "ray"), default="local",
                       help="this process, or Ray: dense documents encoded by Ray Data actors, SEAL's FM-index "
                            "shards built by Ray tasks (docs/ray.md)")
    build.add_argument("--ray-address", help="with --engine ray: the cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    build.add_argument("--workers", type=_positive_int, help="with --engine ray: encoder actors (default: one per CPU)")
    build.add_argument("--shards", type=_positive_int, help="dense: faiss shards of successive documents, searched in parallel "
                                                  "(default 1; with --engine ray one per worker); seal: FM-index shards")
    build.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP)
    build.add_argument("--trust-paths", action="store_true", help=TRUST_HELP)
    build.set_defaults(func=cmd_index_build)

    search = sub.add_parser("search", help="search a saved index")
    search.add_argument("--index", required=True, help="saved index folder")
    what = search.add_mutually_exclusive_group(required=True)
    what.add_argument("--query", help="one query; prints the top hits with a text snippet")
    what.add_argument("--queries", help="queries file or BEIR folder; writes a TREC run to --out")
    search.add_argument("--out", help="TREC run file (with --queries)")
    search.add_argument("--k", type=_positive_int, default=10, help="hits per query")
    search.add_argument("--snippet", type=int, default=100, help="characters of text to show per hit")
    search.add_argument("--tag", default="dengen", help="run tag in the TREC file")
    search.add_argument("--trust-paths", action="store_true", help=TRUST_HELP)
    search.set_defaults(func=cmd_search)

    ev = sub.add_parser("eval", help="evaluate a retriever (or a TREC run) on a dataset split, or run a suite")
    ev.add_argument("--data", help="dataset folder (BEIR layout or MTEB-style qrels)")
    ev.add_argument("--sts", help="instead of --data: an STS pair file (score, sentence1, sentence2; .tsv or .csv, "
                                  "gz or not) scored by cosine Spearman of the retriever's encoder")
    ev.add_argument("--rarb", help="instead of --data: a RAR-b multiple-choice set file (.csv or .csv.gz with "
                                   "instructions,queries,documents,labels), accuracy with and without the instruction")
    ev.add_argument("--suite", help="run a benchmark suite instead of one dataset: default")
    ev.add_argument("--tasks", help="with --suite: only these tasks, comma-separated")
    ev.add_argument("--data-root", help="with --suite: the shared data folder (default $DENGEN_SHARED_DATA or ../shared/data beside the repository)")
    source = ev.add_mutually_exclusive_group(required=True)
    source.add_argument("--retriever", help=SPEC_HELP)
    source.add_argument("--run", help="score an existing TREC run file instead")
    ev.add_argument("--split", default="test",
                    help="which judgements to score: qrels/NAME.tsv (or .jsonl/.txt, or qrels-NAME.jsonl), with "
                         "queries-NAME.jsonl when the folder has per-split queries (default: test; e.g. dev, train)")
    ev.add_argument("--k", type=_ks, default=[10, 100], help="cut-offs, e.g. 10,100")
    ev.add_argument("--out", help="results folder: writes <dataset>-<split>-<label>.json and .trec")
    ev.add_argument("--name", help="label for this configuration in results and reports")
    ev.add_argument("--save-index", help="also save the built index to this folder")
    ev.add_argument("--overwrite", action="store_true", help=OVERWRITE_HELP.replace("--out", "--save-index"))
    ev.add_argument("--mteb", action="store_true", help="score through mteb.evaluate (the retriever behind mteb's search protocol) instead of dengen's runner")
    missing = ev.add_mutually_exclusive_group()
    missing.add_argument("--drop-missing", action="store_true",
                         help="drop qrels whose ids are not in the corpus/queries (warns with counts; figures then "
                              "differ from official ones)")
    missing.add_argument("--keep-missing", action="store_true",
                         help="score qrels documents missing from the corpus as trec_eval does (relevant, never "
                              "retrieved), reproducing official figures; lines of unknown queries are dropped")
    ev.add_argument("--trust-paths", action="store_true", help=TRUST_HELP)
    ev.set_defaults(func=cmd_eval)

    train = sub.add_parser("train", help="train a method from a YAML recipe (see training/configs/)")
    train.add_argument("method", choices=sorted(TRAINERS))
    train.add_argument("--config", required=True, help="YAML recipe, e.g. training/configs/adapter-scifact.yaml")
    train.set_defaults(func=cmd_train)

    report = sub.add_parser("report", help="leaderboard (Markdown + HTML with plots) of all results in a folder")
    report.add_argument("results", help="folder of result JSON files written by dengen eval")
    report.add_argument("--out", required=True, help="report folder: README.md, index.html, PNG plots")
    report.add_argument("--title", default="dengen leaderboard")
    report.add_argument("--screenshot", help="also render the page in headless Chromium to this PNG")
    report.add_argument("--window", default="1200x1600", help="screenshot size, WIDTHxHEIGHT pixels")
    report.set_defaults(func=cmd_report)

    srv = sub.add_parser("serve", help="serve saved indexes over HTTP (JSON API and a search page), loaded once")
    srv.add_argument("indexes", nargs="+", help="saved index folders, as PATH or NAME=PATH")
    srv.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    srv.add_argument("--port", type=_positive_int, default=8000)
    srv.add_argument("--trust-paths", action="store_true", help=TRUST_HELP)
    srv.set_defaults(func=cmd_serve)

    board = sub.add_parser("leaderboard", help="fill, check or render a leaderboard file (rows x tasks, cached per cell)")
    board.add_argument("action", choices=("run", "check", "report"),
                       help="run: compute the cells not already stored; check: compute every cell again and "
                            "fail (exit 2) on any score outside its expected tolerance; report: render the stored "
                            "cells only (nothing computed)")
    board.add_argument("board", help="leaderboard YAML, e.g. eval/leaderboards/default.yaml")
    board.add_argument("--out", required=True, help="folder for the report (report/), and for the cells (cells/) of a board without its own cells: folder and of every check")
    board.add_argument("--data", action="append", help="also score every row on this BEIR folder (repeatable)")
    board.add_argument("--data-root", help="the shared data folder (default $DENGEN_SHARED_DATA or ../shared/data)")
    board.add_argument("--no-train", action="store_true", help="never run a row's recipe (cells that need it stay empty, with the reason)")
    board.add_argument("--row", action="append", help="compute only this row (repeatable); the others come from the cache")
    board.add_argument("--task", action="append", help="compute only this task (repeatable; a name, or a key such as "
                       "squad-pages@200); the other cells come from the cache")
    board.add_argument("--screenshot", help="also render the report in headless Chromium to this PNG")
    board.add_argument("--window", default="1400x2400", help="screenshot size, WIDTHxHEIGHT pixels")
    board.set_defaults(func=cmd_leaderboard)
    return parser


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)  # `train` hands the rest to its trainer (--verify, --records)
    if extra and getattr(args, "func", None) is not cmd_train:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.trainer_args = extra
    if getattr(args, "func", None) is cmd_search and args.queries and not args.out:
        build_parser().error("search --queries needs --out RUN.trec")
    from retrieval.errors import USER_ERRORS

    # SIGTERM takes the Ctrl-C path, so long work cleans up (no half-written index) and exits 130 too
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers live there only
    if main_thread:
        previous = signal.signal(signal.SIGTERM, _interrupt)
    from retrieval.models import trusting_paths

    try:
        with trusting_paths() if getattr(args, "trust_paths", False) else contextlib.nullcontext():
            args.func(args)
    except USER_ERRORS as err:  # anything else is a bug and keeps its traceback
        print(f"dengen: error: {' '.join(str(err).splitlines())}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("dengen: interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt


if __name__ == "__main__":
    main()
