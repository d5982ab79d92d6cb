"""Batch throughput on the embedded model: a loop over generate vs generate_batch vs Ray.

    python benchmarks/batch_throughput.py --rows 32

The same extraction prompts and schema for every run, greedy, same max_tokens: a Python loop over
`structgen.generate` (the baseline), `generate_batch` at batch sizes 1, 4 and 16, and the
`structgen batch` job on a local Ray cluster with 2 workers. Reports rows/s, tokens/s, the share of
schema-valid results (checked with jsonschema) and the speed-up over the loop. Writes
benchmarks/results/batch_throughput.md and batch_throughput.png.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from _plotting import pyplot
from pydantic import BaseModel, Field

RESULTS = Path(__file__).parent / "results"
NAMES = ["Alice Martin", "Bob Chen", "Carla Diaz", "Deepak Rao", "Emma Novak", "Farid Haddad",
         "Greta Olsen", "Hiro Tanaka", "Ines Costa", "Jonas Weber"]
JOBS = ["nurse", "welder", "teacher", "pilot", "chef", "lawyer", "farmer", "architect"]
CITIES = ["Lyon", "Osaka", "Lima", "Oslo", "Pune", "Graz", "Cork", "Tunis"]


class Person(BaseModel):
    name: str = Field(max_length=40)
    age: int = Field(ge=0, le=120)
    job: str = Field(max_length=30)
    city: str = Field(max_length=30)


def prompts(rows: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"Extract the person: {rng.choice(NAMES)} is a {rng.randint(19, 80)}-year-old "
            f"{rng.choice(JOBS)} who lives in {rng.choice(CITIES)}." for _ in range(rows)]


def valid(value) -> bool:
    import jsonschema

    data = value.model_dump() if isinstance(value, BaseModel) else value
    return jsonschema.Draft202012Validator(Person.model_json_schema()).is_valid(data)


def loop_over_generate(model, texts, max_tokens):
    import structgen

    results = [structgen.generate_with_details(Person, t, model=model, max_tokens=max_tokens) for t in texts]
    return [r.value for r in results], sum(r.completion_tokens for r in results)


def batched(model, texts, max_tokens, batch_size):
    import structgen

    results = structgen.generate_batch_with_details(Person, texts, model=model, batch_size=batch_size,
                                                    max_tokens=max_tokens)
    return [r.value for r in results], sum(r.completion_tokens for r in results)


def on_ray(texts, max_tokens, workers: int):
    import ray

    from structgen.batch import BatchJob, run_job

    with tempfile.TemporaryDirectory() as folder:
        source, target = Path(folder, "in.jsonl"), Path(folder, "out.jsonl")
        source.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
        schema = Path(folder, "person.json")
        schema.write_text(json.dumps(Person.model_json_schema()))
        ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
        try:
            job = BatchJob(schema=str(schema), batch_size=8, max_tokens=max_tokens)
            run_job(job, str(source), str(target), engine="ray", workers=workers, progress=False)
        finally:
            ray.shutdown()
        records = [json.loads(line) for line in target.read_text().splitlines()]
    return [r["result"] for r in records if r["ok"]], sum(r["tokens"] for r in records if r["ok"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()

    import structgen

    model = structgen.load_model()
    texts = prompts(args.rows, args.seed)
    structgen.generate(Person, texts[0], model=model, max_tokens=args.max_tokens)  # compile, warm up
    runs = [("loop over generate", lambda: loop_over_generate(model, texts, args.max_tokens))]
    runs += [(f"generate_batch, batch {b}", lambda b=b: batched(model, texts, args.max_tokens, b))
             for b in (1, 4, 16)]
    if not args.no_ray:
        runs.append(("structgen batch --engine ray, 2 workers (incl. start-up)",
                     lambda: on_ray(texts, args.max_tokens, 2)))
    table = []
    for name, run in runs:
        started = time.perf_counter()
        values, tokens = run()
        seconds = time.perf_counter() - started
        table.append((name, len(values), sum(valid(v) for v in values), seconds, tokens))
        print(f"{name}: {len(values)} rows in {seconds:.1f} s", flush=True)
    baseline = table[0][1] / table[0][3]
    lines = [
        "# Batch throughput on the embedded model (SmolLM2-135M, CPU, greedy)",
        "",
        f"Command: `python benchmarks/batch_throughput.py {' '.join(sys.argv[1:])}`".rstrip(),
        "",
        f"{args.rows} extraction prompts, schema `Person` (4 fields), max_tokens={args.max_tokens}; "
        "all runs in one process, one after the other, on this 2-core machine.",
        "",
        "| run | rows | schema-valid | seconds | rows/s | tokens/s | vs loop |",
        "|---|--:|--:|--:|--:|--:|--:|",
    ]
    for name, rows, ok, seconds, tokens in table:
        lines.append(f"| {name} | {rows} | {ok} | {seconds:.1f} | {rows / seconds:.2f} | "
                     f"{tokens / seconds:.1f} | {rows / seconds / baseline:.2f}x |")
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "batch_throughput.md").write_text(text)
    print(text)
    _plot(table)


def _plot(table) -> None:
    plt = pyplot()
    if plt is None:
        return
    figure, axis = plt.subplots(figsize=(7, 3.5))
    axis.barh([row[0] for row in table], [row[1] / row[3] for row in table])
    axis.set_xlabel("rows / s")
    axis.invert_yaxis()
    axis.set_title("rows/s, SmolLM2-135M, 2 CPU cores")
    figure.tight_layout()
    figure.savefig(RESULTS / "batch_throughput.png", dpi=120)


if __name__ == "__main__":
    main()
