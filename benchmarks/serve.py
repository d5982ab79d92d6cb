"""structgen serve under concurrent clients: rows/s and latency at 1, 4 and 16 clients.

    python benchmarks/serve.py                  # the embedded model, 32 requests, max_tokens 48
    python benchmarks/serve.py --tiny           # the tiny random model (a quick look at overheads)

The server runs in this process (FastAPI + uvicorn on a free loopback port, continuous batching,
--max-batch 16); each client is a thread with its own `openai.OpenAI`, taking the next request of
the same list until it is empty. 1 client is the requests sent one at a time. For every run:
rows/s, tokens/s, p50/p99 latency, schema-valid answers, requests lost (no answer) or duplicated
(answered twice, or more rows finished in the scheduler than were sent), the answers equal to the
one-at-a-time answer of the same request, and the process RSS before and after. Writes
benchmarks/results/serve.md, serve.jsonl (one line per request and run) and serve.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from _plotting import pyplot

RESULTS = Path(__file__).parent / "results"


def code_commit() -> str:
    """The commit measured, and whether structgen/ differed from it."""
    here = Path(__file__).parent
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=here).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD", "--", "../structgen"], cwd=here).returncode
    return commit + (" plus uncommitted changes to structgen/" if dirty else "")
ROOT = Path(__file__).parent.parent
NAMES = ["Alice Martin", "Bob Chen", "Carla Diaz", "Deepak Rao", "Emma Novak", "Farid Haddad",
         "Greta Olsen", "Hiro Tanaka", "Ines Costa", "Jonas Weber"]
JOBS = ["nurse", "welder", "teacher", "pilot", "chef", "lawyer", "farmer", "architect"]
CITIES = ["Lyon", "Osaka", "Lima", "Oslo", "Pune", "Graz", "Cork", "Tunis"]
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "maxLength": 40}, "age": {"type": "integer", "minimum": 0, "maximum": 120},
    "job": {"type": "string", "maxLength": 30}, "city": {"type": "string", "maxLength": 30}},
    "required": ["name", "age", "job", "city"]}


def prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"Extract the person: {rng.choice(NAMES)} is a {rng.randint(19, 80)}-year-old "
            f"{rng.choice(JOBS)} who lives in {rng.choice(CITIES)}." for _ in range(n)]


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def run(url: str, texts: list[str], clients: int, max_tokens: int) -> tuple[list[dict], float]:
    """Every request once, from ``clients`` threads; (one record per answer, wall seconds)."""
    import openai

    work: queue.Queue = queue.Queue()
    for index, text in enumerate(texts):
        work.put((index, text))
    records: list[dict] = []
    lock = threading.Lock()

    def client_thread() -> None:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=600)
        while True:
            try:
                index, text = work.get_nowait()
            except queue.Empty:
                return
            started = time.perf_counter()
            response = client.chat.completions.create(
                model="bench", messages=[{"role": "user", "content": text}], max_tokens=max_tokens,
                response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON}})
            record = {"index": index, "id": response.id, "seconds": time.perf_counter() - started,
                      "content": response.choices[0].message.content,
                      "finish_reason": response.choices[0].finish_reason,
                      "completion_tokens": response.usage.completion_tokens}
            with lock:
                records.append(record)

    started = time.perf_counter()
    threads = [threading.Thread(target=client_thread) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return records, time.perf_counter() - started


def valid(content: str) -> bool:
    import jsonschema

    try:
        return jsonschema.Draft202012Validator(PERSON).is_valid(json.loads(content))
    except json.JSONDecodeError:
        return False


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=48)
    parser.add_argument("--clients", default="1,4,16,16",
                        help="comma-separated client counts, 1 first (a repeated count shows whether "
                             "memory stays flat)")
    parser.add_argument("--max-batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tiny", action="store_true", help="the tiny random model instead of SmolLM2")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (1: no spinning against other processes on a shared machine)")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    counts = [int(c) for c in args.clients.split(",")]

    import structgen
    from structgen.serve.app import create_app
    from structgen.serve.server import BackgroundServer

    if args.tiny:
        from structgen.testing import tiny_random_model

        model = tiny_random_model(str(ROOT / "tests" / "fixtures" / "smollm2_tokenizer"))
    else:
        model = structgen.load_model()
    texts = prompts(args.requests, args.seed)
    app = create_app(model, max_batch=args.max_batch, max_queue=max(64, args.requests))
    stats = app.state.scheduler.stats
    load_start = os.getloadavg()[0]
    table, lines_out, first_answers = [], [], {}
    whole_started = time.perf_counter()
    with BackgroundServer(app) as server:
        run(server.url, texts[:1], 1, args.max_tokens)  # compile the schema, warm up
        for clients in counts:
            before_rss, before = rss_mib(), dict(stats)
            records, seconds = run(server.url, texts, clients, args.max_tokens)
            after_rss = rss_mib()
            answered = [r["index"] for r in records]
            finished = stats["finished"] - before.get("finished", 0)
            lost = len(set(range(len(texts))) - set(answered))
            duplicated = (len(answered) - len(set(answered)) + len(records) - len({r["id"] for r in records})
                          + max(0, finished - len(texts)))
            if not first_answers:
                first_answers = {r["index"]: r["content"] for r in records}
            same = sum(first_answers.get(r["index"]) == r["content"] for r in records)
            latencies = [r["seconds"] for r in records]
            tokens = sum(r["completion_tokens"] for r in records)
            row = dict(clients=clients, requests=len(records),
                       valid=sum(valid(r["content"]) for r in records), seconds=seconds,
                       rows_per_s=len(records) / seconds, tokens_per_s=tokens / seconds,
                       p50=percentile(latencies, 0.5), p99=percentile(latencies, 0.99), lost=lost,
                       duplicated=duplicated, same_as_sequential=same, length=sum(
                           r["finish_reason"] == "length" for r in records),
                       max_live=stats["max_live"], rss_start=before_rss, rss_end=after_rss)
            table.append(row)
            ordered = sorted(records, key=lambda r: r["index"])
            lines_out += [json.dumps({"clients": clients, **r}, ensure_ascii=False) for r in ordered]
            print(f"{clients} clients: {len(records)} answers in {seconds:.1f} s ({row['rows_per_s']:.2f} "
                  f"rows/s), p50 {row['p50']:.2f} s, p99 {row['p99']:.2f} s", flush=True)
    minutes = (time.perf_counter() - whole_started) / 60
    sequential = table[0]["rows_per_s"]
    lines = [
        "Code path: `openai.OpenAI(base_url=...).chat.completions.create(response_format={\"type\": "
        "\"json_schema\", ...})` from client threads -> `structgen serve`'s app (FastAPI + uvicorn, in "
        "this process, loopback) -> `structgen.serve.scheduler.Scheduler` (continuous batching, "
        f"max_batch {args.max_batch}) -> `structgen.decoding.loop.Batch`.",
        "",
        f"# structgen serve: concurrent clients on the {'tiny random' if args.tiny else 'embedded'} model "
        f"({model.name}, CPU, greedy)",
        "",
        f"Command: `{' '.join(['python benchmarks/serve.py', *sys.argv[1:]])}`  ",
        f"Code: structgen commit {code_commit()}.",
        "",
        f"{len(texts)} extraction prompts, one JSON schema (4 fields), max_tokens={args.max_tokens}; each "
        "run sends every prompt once; 1 client = the requests one at a time. Versions: structgen "
        f"{structgen.__version__}, python {platform.python_version()}; machine {platform.machine()}, "
        f"{os.cpu_count()} cores (shared), torch {torch.__version__} with {args.threads} thread(s), "
        f"load average {load_start:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at end; whole run {minutes:.1f} min.",
        "",
        "| clients | requests | schema-valid | lost | duplicated | seconds | rows/s | tokens/s | vs 1 client "
        "| p50 latency (s) | p99 latency (s) | same answer as 1 client | closed by budget "
        "| RSS start -> end (MiB) |",
        "|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for row in table:
        lines.append(
            f"| {row['clients']} | {row['requests']} | {row['valid']} | {row['lost']} | "
            f"{row['duplicated']} | "
            f"{row['seconds']:.1f} | {row['rows_per_s']:.2f} | {row['tokens_per_s']:.1f} | "
            f"{row['rows_per_s'] / sequential:.2f}x | {row['p50']:.2f} | {row['p99']:.2f} | "
            f"{row['same_as_sequential']}/{row['requests']} | {row['length']} | "
            f"{row['rss_start']:.0f} -> {row['rss_end']:.0f} |")
    if any(row["same_as_sequential"] < row["requests"] for row in table):
        lines += ["", "Answers that differ from the one-client answer come from float32 batching: padded "
                  "rows sum in another order, which can flip a near-tie in greedy decoding; every one "
                  "still validates."]
    text = "\n".join(lines) + "\n"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "serve.md").write_text(text)
    (RESULTS / "serve.jsonl").write_text("\n".join(lines_out) + "\n")
    print(text)
    _plot(table)


def _plot(table) -> None:
    plt = pyplot()
    if plt is None:
        return
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.5))
    labels = [str(row["clients"]) for row in table]
    left.bar(labels, [row["rows_per_s"] for row in table])
    left.set_xlabel("concurrent clients")
    left.set_ylabel("rows/s")
    left.set_title("throughput")
    positions = range(len(table))
    right.bar([p - 0.2 for p in positions], [row["p50"] for row in table], width=0.4, label="p50")
    right.bar([p + 0.2 for p in positions], [row["p99"] for row in table], width=0.4, label="p99")
    right.set_xticks(list(positions), labels)
    right.set_xlabel("concurrent clients")
    right.set_ylabel("latency (s)")
    right.set_title("latency per request")
    right.legend()
    figure.tight_layout()
    figure.savefig(RESULTS / "serve.png", dpi=120)


if __name__ == "__main__":
    main()
