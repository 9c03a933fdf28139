"""Does `make demo` gain on every seed? Runs the real demo path once per training seed and aggregates.

For each seed: `make demo DEMO_ARGS="--seed N --output_dir <output_dir>/seedN"` (the set-up check, then
scripts/demo.py: evaluate, train with recipes/smollm2-135m_cpu_demo.yaml through scripts/gsm8k_sapo.py, evaluate
again). A seed whose summary.json exists is not run again, so the study can be stopped and continued. Then:
the held-out gain per seed (all 128 problems, each subset, each operation), its distribution over seeds (min / mean /
max, 95 % t-interval), per-operation mean gains, wall times, and the checks of issue 17 (every seed >= +0.05, mean
>= +0.10 with an interval excluding 0, no operation losing on average, <= 15 min per run). Results:
docs/results/demo_seeds.{json,md}; scripts/demo.py reads the JSON to say where its own gain falls.

    nice python -m benchmarks.demo_seeds --seeds 0 1 2 3 4                        # ~11 min per seed on 2 cores
    python -m benchmarks.demo_seeds --seeds 0 1 2 3 4 --report_only               # redraw docs/results/demo_seeds.md
    nice python -m benchmarks.demo_seeds --recipe my.yaml --output_dir out/my --results_dir out/my   # a candidate
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path

from tools.stats import mean_ci

REPO_ROOT = Path(__file__).resolve().parent.parent

RECIPE = REPO_ROOT / "recipes" / "smollm2-135m_cpu_demo.yaml"
OVERALL = "all held-out problems"
CRITERIA = {"min_gain_per_seed": 0.05, "min_mean_gain": 0.10, "max_minutes": 15.0}


def run_seed(seed: int, output_dir: Path, threads: int, recipe: Path = RECIPE) -> dict:
    summary_path = output_dir / f"seed{seed}" / "summary.json"
    if not summary_path.exists():
        demo_args = f"--seed {seed} --output_dir {output_dir / f'seed{seed}'}"
        if recipe != RECIPE:
            demo_args += f" --recipe {recipe}"
        command = ["make", "-s", "demo", f"DEMO_ARGS={demo_args}"]
        print(f"== OMP_NUM_THREADS={threads} " + " ".join(command), flush=True)
        # A fixed thread count: left to itself, the demo takes the cores idle when it starts, which another job
        # on the machine can change from one seed to the next; the seeds' wall times should be comparable.
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        subprocess.run(command, cwd=REPO_ROOT, check=True, env=env)
    return json.loads(summary_path.read_text())


def per_seed_row(seed: int, summary: dict) -> dict:
    subsets = summary["subsets"]
    return {
        "seed": seed,
        "threads": summary.get("threads"),
        "before": subsets[OVERALL]["before"]["accuracy"],
        "after": subsets[OVERALL]["after"]["accuracy"],
        "gain": subsets[OVERALL]["gain"]["diff"],
        "gain_by_row": {name: block["gain"]["diff"] for name, block in subsets.items()},
        "accuracy_by_row": {
            name: [block["before"]["accuracy"], block["after"]["accuracy"]] for name, block in subsets.items()
        },
        "n_by_row": {name: block["before"]["n"] for name, block in subsets.items()},
        "wall_time_s": summary["wall_time_s"]["total"],
        "recipe_sha256": summary["recipe_sha256"],
        "training": summary["training"],
    }


def aggregate(rows: list[dict]) -> dict:
    names = list(rows[0]["gain_by_row"])
    by_row = {name: mean_ci([r["gain_by_row"][name] for r in rows]) for name in names}
    accuracy_by_row = {
        name: [sum(r["accuracy_by_row"][name][i] for r in rows) / len(rows) for i in (0, 1)] for name in names
    }
    ops = [name for name in names if name.startswith("operation ")]
    gains = [r["gain"] for r in rows]
    minutes = [r["wall_time_s"] / 60 for r in rows]
    cores = os.cpu_count() or 1  # the time limit is for a run on every core of the machine
    timed = [r["wall_time_s"] / 60 for r in rows if r["threads"] == cores]
    overall = by_row[OVERALL]
    checks = {
        "every seed gains >= +0.05": min(gains) >= CRITERIA["min_gain_per_seed"],
        "mean gain >= +0.10": overall["mean"] >= CRITERIA["min_mean_gain"],
        "95 % interval of the mean excludes 0": overall["ci95"] is not None and overall["mean"] - overall["ci95"] > 0,
        "no operation loses on average": all(by_row[op]["mean"] >= 0 for op in ops),
        f"every run at {cores} threads <= 15 min": bool(timed) and max(timed) <= CRITERIA["max_minutes"],
    }
    return {
        "gain": overall,
        "gain_min": min(gains),
        "gain_max": max(gains),
        "gain_by_row": by_row,
        "mean_accuracy_by_row": accuracy_by_row,  # [before, after], mean over seeds
        "minutes": {"min": min(minutes), "max": max(minutes), "mean": sum(minutes) / len(minutes)},
        "checks": checks,
    }


def markdown(result: dict) -> str:
    rows, agg = result["runs"], result["aggregate"]
    names = list(rows[0]["gain_by_row"])
    lines = [
        "# `make demo` over training seeds\n",
        f"Recipe `{result['recipe']}` (sha256 {result['recipe_sha256']}), {len(rows)} seeds, each run through "
        '`make demo DEMO_ARGS="--seed N ..."`. Held-out: the same 128 problems in every run (greedy). '
        "Generated by `benchmarks/demo_seeds.py` from `demo_seeds.json`.\n",
        "| seed | threads | before | after | gain | " + " | ".join(n for n in names if n != OVERALL) + " | minutes |",
        "|---|---|---|---|---|" + "---|" * (len(names) - 1) + "---|",
    ]
    for r in rows:
        cells = " | ".join(f"{r['gain_by_row'][n]:+.3f}" for n in names if n != OVERALL)
        lines.append(
            f"| {r['seed']} | {r['threads']} | {r['before']:.3f} | {r['after']:.3f} | **{r['gain']:+.3f}** | {cells} "
            f"| {r['wall_time_s'] / 60:.1f} |"
        )
    lines += ["\nMean gain over seeds ± 95 % t-interval, per row of the demo's report:\n", "| row | n | mean gain |",
              "|---|---|---|"]  # fmt: skip
    for name in names:
        g = agg["gain_by_row"][name]
        ci = "" if g["ci95"] is None else f" ± {g['ci95']:.3f}"
        lines.append(f"| {name} | {rows[0]['n_by_row'][name]} | {g['mean']:+.3f}{ci} |")
    lines.append(
        f"\nGain on all 128 problems: min {agg['gain_min']:+.3f}, mean {agg['gain']['mean']:+.3f}"
        + ("" if agg["gain"]["ci95"] is None else f" ± {agg['gain']['ci95']:.3f}")
        + f", max {agg['gain_max']:+.3f}. Wall time {agg['minutes']['min']:.1f}-{agg['minutes']['max']:.1f} min.\n"
    )
    lines += ["| check | met |", "|---|---|"] + [
        f"| {k} | {'yes' if v else '**no**'} |" for k, v in agg["checks"].items()
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2, 3, 4])
    parser.add_argument("--output_dir", type=Path, default=REPO_ROOT / "benchmarks" / "out" / "demo_seeds")
    parser.add_argument("--results_dir", type=Path, default=REPO_ROOT / "docs" / "results")
    parser.add_argument("--report_only", action="store_true", help="aggregate the seeds already run; train nothing")
    parser.add_argument(
        "--recipe",
        type=Path,
        default=RECIPE,
        help="a candidate recipe, run through the same `make demo` path (needs its own --output_dir and --results_dir)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads per run (default: OMP_NUM_THREADS, else every core)"
    )
    args = parser.parse_args(argv)
    args.recipe = args.recipe.resolve()
    if not args.recipe.is_file():
        parser.error(f"--recipe {args.recipe}: no such file")
    defaults = {"output_dir": parser.get_default("output_dir"), "results_dir": parser.get_default("results_dir")}
    if args.recipe != RECIPE and any(getattr(args, k) == v for k, v in defaults.items()):
        parser.error("--recipe other than the demo's needs its own --output_dir and --results_dir (the defaults hold "
                     "the demo recipe's record, which scripts/demo.py quotes)")  # fmt: skip
    threads = args.threads or int(os.environ.get("OMP_NUM_THREADS", 0)) or os.cpu_count() or 1
    rows = []
    for seed in args.seeds:
        if args.report_only and not (args.output_dir / f"seed{seed}" / "summary.json").exists():
            continue
        rows.append(per_seed_row(seed, run_seed(seed, args.output_dir, threads, args.recipe)))
    if not rows:
        raise SystemExit(f"no finished seeds under {args.output_dir} (run without --report_only first)")
    digests = {r["recipe_sha256"] for r in rows}
    if len(digests) != 1:
        raise SystemExit(f"the seeds under {args.output_dir} were run with different recipes ({sorted(digests)})")
    result = {
        "recipe": str(args.recipe.relative_to(REPO_ROOT) if args.recipe.is_relative_to(REPO_ROOT) else args.recipe),
        "recipe_sha256": digests.pop(),
        "machine": f"{os.cpu_count()} CPU cores",
        "runs": rows,
        "aggregate": aggregate(rows),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    (args.results_dir / "demo_seeds.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (args.results_dir / "demo_seeds.md").write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
