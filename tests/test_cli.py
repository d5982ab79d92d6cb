"""The `structgen` command without surprises: --version, `python -m structgen`, defaults in
--help, a hint for `pkg.module.Model`, a progress rate from the first finished batch."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import structgen
from structgen.cli import main


def test_version_and_python_m_are_the_same_command():
    for command in ([sys.executable, "-m", "structgen", "--version"],
                    [sys.executable, "-c", "import sys; from structgen.cli import main; "
                                           "sys.exit(main(['--version']))"]):
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and out.stdout.strip() == f"structgen {structgen.__version__}"


@pytest.mark.parametrize("command", ["batch", "generate", "serve"])
def test_every_option_with_a_value_says_its_default(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    entries, current = [], None
    for line in capsys.readouterr().out.splitlines():  # "  --option VALUE  help", help wraps on
        start = re.match(r"  (--[a-z-]+)( [A-Z_{]\S*)?(.*)", line)
        if start:
            current = [start.group(1), start.group(3)] if start.group(2) else None
            entries += [current] if current else []
        elif current is not None and line.startswith("      "):
            current[1] += " " + line.strip()
        else:
            current = None
    assert len(entries) >= 6
    required = {"--schema", "--input", "--output", "--prompt", "--prompt-template"}
    for option, help_text in entries:
        if option not in required:
            assert "default" in help_text, f"{option}: {help_text}"


def test_a_dot_where_the_colon_belongs_gets_the_right_spelling(tmp_path, capsys):
    rows = tmp_path / "in.jsonl"
    rows.write_text(json.dumps({"text": "x"}) + "\n")
    code = main(["batch", "--schema", "mypkg.models.Person", "--input", str(rows),
                 "--output", str(tmp_path / "out.jsonl"), "--dry-run"])
    assert code == 2 and "write mypkg.models:Person" in capsys.readouterr().err


def test_the_progress_bar_shows_a_rate_once_a_batch_is_done(tmp_path, smollm2_tokenizer):
    from structgen.testing import tiny_random_model

    model = tiny_random_model(smollm2_tokenizer, seed=0)
    model.hf_model.save_pretrained(tmp_path / "model")
    smollm2_tokenizer.save_pretrained(tmp_path / "model")
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(6)))
    (tmp_path / "s.json").write_text(json.dumps({"type": "object", "properties": {
        "a": {"type": "integer"}}, "required": ["a"]}))
    out = subprocess.run([sys.executable, "-m", "structgen", "batch", "--schema", str(tmp_path / "s.json"),
                          "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"),
                          "--model", str(tmp_path / "model"), "--batch-size", "2", "--max-tokens", "12"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    updates = [line for line in out.stderr.replace("\r", "\n").splitlines()
               if re.search(r"structgen batch: +\d+%.*\| [1-9]\d*/6", line)]
    assert updates and all("?row/s" not in line for line in updates), updates
    assert re.search(r"[\d.]+(row/s|s/row)", updates[0])
