"""The ``structgen`` command.

    structgen generate --schema pkg.module:Model|schema.json --prompt "..." [--stream]
    structgen serve [--model NAME] [--host 127.0.0.1] [--port 8000] [--max-batch N] [--api-key KEY]
    structgen batch --schema pkg.module:Model|schema.json --input rows.jsonl --output results.jsonl
                    [--prompt-field text | --prompt-template "...{field}..."] [--id-field id]
                    [--model NAME] [--batch-size N] [--max-tokens N] [--max-retries N]
                    [--engine local|ray]
                    [--address ADDR] [--workers N] [--retry-failed] [--rerun-changed] [--dry-run]

``batch`` locks the output for the run (a second run on it exits 2 naming the holder), gives every
input line exactly one record, and resumes from the output: rows done for the same content are
skipped, failed ones are kept unless ``--retry-failed``, and a row whose content changed since its
ok result is an error record unless ``--rerun-changed`` (docs/batch.md has the details).

Exit status: 0 every input row has an ok record, 1 some row's record is a failure (its error is
in the output; a ``--dry-run`` predicts this), 2 the job itself could not run (bad schema
reference, unreadable input, unwritable or locked output, ...: the message says what).
"""

from __future__ import annotations

import argparse
import os
import sys

from structgen import __version__
from structgen.errors import StructgenError
from structgen.schema import DEFAULT_WHITESPACE, WHITESPACE_MODES


class _ShowDefaults(argparse.HelpFormatter):
    """Every option's help ends with its default; options without one say in words what happens."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text or not action.option_strings or action.default is None
                or action.default is False or action.default == argparse.SUPPRESS):
            return text
        return f"{text} (default: %(default)s)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="structgen", formatter_class=_ShowDefaults,
                                     description="Structured generation that always validates.")
    parser.add_argument("--version", action="version", version=f"structgen {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    batch = commands.add_parser(
        "batch", help="run one schema over a JSONL file of rows (resumable)",
        formatter_class=_ShowDefaults,
        description="Run one schema over a JSONL file of rows; every input line gets exactly one "
                    "record in --output, and rerunning the command resumes.",
        epilog="exit status: 0 every row ok, 1 some row failed (see its record), 2 the job could "
               "not run (bad schema or input, output unwritable or locked by another run)")
    batch.add_argument("--schema", required=True, help="pkg.module:Model, or a JSON-schema file")
    batch.add_argument("--input", required=True, help="JSONL file, one JSON object per line")
    batch.add_argument("--output", required=True,
                       help="JSONL results file (appended and locked for the run; reruns resume)")
    prompt = batch.add_mutually_exclusive_group()
    prompt.add_argument("--prompt-field", default="text", help="field holding the prompt")
    prompt.add_argument("--prompt-template", help='prompt built from fields, e.g. "Extract: {body}"')
    batch.add_argument("--id-field", help="field holding a unique row id (default: the line number)")
    batch.add_argument("--batch-size", type=int, default=8, help="rows decoded together")
    _add_answer_options(batch, "each row's answer")
    batch.add_argument("--engine", choices=["local", "ray"], default="local",
                       help="decode on this machine, or on a Ray cluster")
    batch.add_argument("--address", help="Ray cluster address (with --engine ray; default: a local cluster)")
    batch.add_argument("--workers", type=int, default=2, help="model replicas on Ray")
    batch.add_argument("--retry-failed", action="store_true",
                       help="run rows again whose record from an earlier run is a failure")
    batch.add_argument("--rerun-changed", action="store_true",
                       help="run rows again whose content changed since their result was written "
                            "(default: an error record), and rows whose record has no fingerprint")
    batch.add_argument("--dry-run", action="store_true",
                       help="check the schema, input and output, say what would run, write nothing")
    batch.add_argument("--no-progress", action="store_true", help="no progress bar")
    generate = commands.add_parser("generate", help="one answer for one prompt (optionally streamed)",
                                   formatter_class=_ShowDefaults)
    generate.add_argument("--schema", required=True, help="pkg.module:Model, or a JSON-schema file")
    generate.add_argument("--prompt", required=True, help="the user turn")
    _add_answer_options(generate, "the answer")
    generate.add_argument("--temperature", type=float, default=0.0,
                          help="sampling temperature; 0 decodes greedily")
    generate.add_argument("--seed", type=int,
                          help="seed of the sampler, for a reproducible answer (default: none)")
    generate.add_argument("--stream", action="store_true", help="show the object filling in")
    serve = commands.add_parser(
        "serve", help="an OpenAI-compatible server (needs pip install 'structgen[serve]')",
        formatter_class=_ShowDefaults,
        description="Serve POST /v1/chat/completions, GET /v1/models and GET /health: every "
                    "json_schema answer parses and validates, every tool call names a real tool "
                    "with valid arguments (docs/serve.md). --max-tokens is the budget of a "
                    "request that sets neither max_tokens nor max_completion_tokens.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default: %(default)s, reachable from this machine "
                            "only; 0.0.0.0 listens on all interfaces)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port")
    serve.add_argument("--max-batch", type=int, default=8, help="requests decoded together")
    serve.add_argument("--max-queue", type=int, default=64,
                       help="requests waiting for a place in the batch; past it a request gets 429")
    serve.add_argument("--api-key", default=os.environ.get("STRUCTGEN_API_KEY"),
                       help="key every request must send as 'Authorization: Bearer KEY' (default: "
                            "$STRUCTGEN_API_KEY, else none)")
    _add_answer_options(serve, "an answer", retries=False)
    args = parser.parse_args(argv)
    run = {"generate": _generate, "batch": _batch, "serve": _serve}[args.command]
    try:
        return run(args)
    except StructgenError as error:
        print(f"structgen: error: {error}", file=sys.stderr)
        return 2


def _add_answer_options(command: argparse.ArgumentParser, answer: str, retries: bool = True) -> None:
    """The options the commands share: what ``answer`` is decoded by and how it may look
    (``serve`` has no retries: a JSON schema's answer is never refused)."""
    command.add_argument("--model", help="model name or path (default: the embedded SmolLM2)")
    command.add_argument("--max-tokens", type=int, default=512,
                         help=f"token budget of {answer} (it still closes validly)")
    command.add_argument("--whitespace", choices=WHITESPACE_MODES, default=DEFAULT_WHITESPACE,
                         help=f"layout of {answer}'s JSON (docs/json-mode.md)")
    if retries:
        command.add_argument("--max-retries", type=int, default=0,
                             help=f"times {answer} is decoded again when a validator refuses it, "
                                  "with the error shown to the model")


def _generate(args) -> int:
    import json

    from pydantic_core import to_jsonable_python

    import structgen
    from structgen.batch.job import load_output_type

    output_type = load_output_type(args.schema)
    options = dict(model=args.model, max_tokens=args.max_tokens, temperature=args.temperature,
                   seed=args.seed, whitespace=args.whitespace, max_retries=args.max_retries)
    if not args.stream:
        value = structgen.generate(output_type, args.prompt, **options)
        print(json.dumps(to_jsonable_python(value), ensure_ascii=False))
        return 0
    live = sys.stdout.isatty()
    for item in structgen.stream(output_type, args.prompt, **options):
        if isinstance(item, structgen.Partial):
            shown = json.dumps(item.value, ensure_ascii=False)
            print(f"\r\x1b[2K{shown}" if live else shown, end="" if live else "\n", flush=True)
        elif isinstance(item, structgen.Retry):
            print(("\n" if live else "") + f"attempt {item.attempt} refused, retrying: {item.error.reason}",
                  file=sys.stderr, flush=True)
        else:
            final = json.dumps(to_jsonable_python(item), ensure_ascii=False)
            print(f"\r\x1b[2K{final}" if live else final, flush=True)
    return 0


def _serve(args) -> int:
    try:
        from structgen.serve.server import serve
    except ModuleNotFoundError as error:
        if error.name not in {"fastapi", "uvicorn", "starlette"}:
            raise
        print(f"structgen: error: structgen serve needs {error.name}: pip install 'structgen[serve]'",
              file=sys.stderr)
        return 2
    serve(args.model, host=args.host, port=args.port, max_batch=args.max_batch,
          max_queue=args.max_queue, api_key=args.api_key, whitespace=args.whitespace,
          max_tokens=args.max_tokens)
    return 0


def _batch(args) -> int:
    from structgen.batch.job import BatchJob
    from structgen.batch.runner import run_job

    job = BatchJob(schema=args.schema, prompt_field=None if args.prompt_template else args.prompt_field,
                   prompt_template=args.prompt_template, id_field=args.id_field, model=args.model,
                   batch_size=args.batch_size, max_tokens=args.max_tokens, whitespace=args.whitespace,
                   max_retries=args.max_retries)
    if args.dry_run:
        report, status = _dry_run(job, args)
        print(report)
        return status
    summary = run_job(job, args.input, args.output, engine=args.engine, address=args.address,
                      workers=args.workers, progress=not args.no_progress,
                      retry_failed=args.retry_failed, rerun_changed=args.rerun_changed)
    print(summary.render(), file=sys.stderr)
    return summary.exit_status


def _dry_run(job, args) -> tuple[str, int]:
    """What a run would do, and the exit status it would end with at best: the schema compiles
    to a regex, and which rows would run, fail, or stand as they are."""
    from structgen.batch.io import OutputFile, read_rows
    from structgen.batch.job import plan
    from structgen.batch.runner import check_distinct
    from structgen.schema import schema_to_regex
    from structgen.types import as_output_type

    job.check()
    spec = as_output_type(job.output_type())
    if spec.schema is not None:
        schema_to_regex(spec.schema, whitespace=job.whitespace)
    rows = list(read_rows(args.input))
    check_distinct(args.input, args.output)
    output = OutputFile.read_unlocked(args.output)
    work = plan(job, rows, output, retry_failed=args.retry_failed, rerun_changed=args.rerun_changed)
    bad = [row for row in work.pending if row.error is not None]
    lines = [f"schema {job.schema}: ok",
             f"input {args.input}: {work.rows} rows, {work.done} already done in {args.output}, "
             f"{work.kept_failed} failed earlier and kept, {len(work.pending) - len(bad)} to run, "
             f"{len(bad)} malformed or changed"]
    lines += [f"  {row.error}" for row in bad[:20]]
    if len(bad) > 20:
        lines.append(f"  ... and {len(bad) - 20} more")
    if work.unchecked:
        lines.append(f"{work.unchecked} rows stand on records without a fingerprint (older structgen)")
    if len(work.pending) > len(bad):
        lines.append(f"would run on model {job.model or 'smollm2 (embedded)'} in batches of "
                     f"{job.batch_size}, max_tokens={job.max_tokens}, max_retries={job.max_retries}")
    else:
        lines.append("nothing to decode: the model would not be loaded")
    return "\n".join(lines), 1 if bad or work.kept_failed else 0


if __name__ == "__main__":
    sys.exit(main())
