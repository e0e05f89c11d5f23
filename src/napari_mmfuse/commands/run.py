"""``mmfuse run``: a recipe on every subject of a cohort, on Dask distributed.

Examples::

    mmfuse run recipe.yaml --subjects "study/sub-*" -o results                 # local cluster, 2 workers
    mmfuse run recipe.yaml --subjects subjects.csv -o results --workers 8 --resume
    mmfuse run recipe.yaml --subjects "study/sub-*" -o results --scheduler tcp://head:8786
"""

from __future__ import annotations

import sys
from pathlib import Path


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a recipe on every subject of a cohort (Dask: local cluster or an existing scheduler)",
        description="Run a recipe (YAML/JSON: inputs per subject and ordered operations) on every subject. "
        "One folder per subject holds each step's outputs and their provenance sidecars; cohort.csv and "
        "cohort.parquet hold one row per subject (status, timings, measurements); cohort.log the run log.",
    )
    parser.add_argument("recipe", help="recipe file (.yaml, .yml or .json)")
    parser.add_argument("--subjects", required=True, metavar="PATTERN|CSV",
                        help="subject folders as a glob (\"study/sub-*\") or a CSV with a subject column and one "
                        "column per recipe input")
    parser.add_argument("-o", "--output", required=True, metavar="OUTDIR", help="output folder")
    parser.add_argument("--scheduler", default="local", metavar="local|ADDRESS",
                        help="local: start a local cluster (default); or an existing scheduler, tcp://host:8786")
    parser.add_argument("--workers", type=int, default=2, help="local cluster: worker processes (default 2)")
    parser.add_argument("--memory-limit", default="auto",
                        help="local cluster: memory per worker, e.g. 4GiB (default: the machine's share)")
    parser.add_argument("--resume", action="store_true",
                        help="keep outputs whose sidecars match the recipe and inputs; compute the rest")
    parser.add_argument("--overwrite", action="store_true", help="recompute everything into an existing OUTDIR")
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: each worker's best)")
    parser.set_defaults(func=run_cohort_command)


def run_cohort_command(args) -> int:
    from ..cohort import find_subjects, load_recipe, print_summary, run_cohort, start_client
    from ..cohort.cluster import TABLE_STEM, close_client, dashboard_of

    recipe = load_recipe(args.recipe)
    subjects = find_subjects(recipe, args.subjects)
    outdir = Path(args.output)
    table = outdir / f"{TABLE_STEM}.csv"
    if table.exists() and not (args.resume or args.overwrite):
        raise FileExistsError(f"{outdir} holds a cohort run; pass --resume to continue it or --overwrite to redo it")
    if args.workers < 1:
        raise ValueError(f"--workers must be at least 1, got {args.workers}")
    print(f"mmfuse run: {recipe.name}: {len(recipe.steps)} steps on {len(subjects)} subjects", file=sys.stderr)
    client = start_client(args.scheduler, workers=args.workers, memory_limit=args.memory_limit)
    print(f"Dask dashboard: {dashboard_of(client)}", file=sys.stderr)
    from tqdm import tqdm

    try:
        with tqdm(total=len(subjects), unit="subject", file=sys.stderr) as bar:
            def advance(row):
                bar.set_postfix_str(f"{row['subject']} {row['status']}")
                bar.update()

            rows = run_cohort(recipe, subjects, outdir, client=client, resume=args.resume, device=args.device,
                              on_row=advance)
    finally:
        close_client(client)
    print_summary(rows, outdir)
    return 0 if all(row["status"] == "done" for row in rows) else 1
