"""`dpo-cli convert-data`: the seed-002 job as one command, filters, safety of inputs and outputs, the summary."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dpo_cli.core.errors import DataError, InputError
from dpo_cli.data.convert import ConvertOptions, convert

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures" / "data"

U = lambda c: {"role": "user", "content": c}  # noqa: E731
A = lambda c: {"role": "assistant", "content": c}  # noqa: E731


def _dpo_en_zh(path: Path, n: int = 12) -> None:
    """A parquet file shaped like DPO-En-Zh-20k: prompt, chosen/rejected conversations, language."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = []
    for i in range(n):
        language = "zh" if i % 2 else "en"
        q = f"问题{i}" if language == "zh" else f"question {i}"
        rows.append({"prompt": q, "chosen": [U(q), A(f"good {i}")], "rejected": [U(q), A(f"bad {i}")],
                     "language": language})
    pq.write_table(pa.Table.from_pylist(rows), path)


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run the real entry point in a child; report which heavy libraries it imported on stderr's last line."""
    code = ("import sys, json\nfrom dpo_cli.cli import main\nsys.argv = ['dpo-cli'] + sys.argv[1:]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    status = exc.code or 0\nelse:\n    status = 0\n"
            "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'trl') if m in sys.modules)\n"
            "print('IMPORTED ' + json.dumps(heavy), file=sys.stderr)\nsys.exit(status)\n")
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"), COLUMNS="200")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd,
                          timeout=120)


def test_seed_002_job_is_one_command_without_heavy_imports(tmp_path):
    source = tmp_path / "train-00000-of-00001.parquet"
    _dpo_en_zh(source)
    out = tmp_path / "dpo_zh.json"
    result = run_cli("convert-data", str(source), "--where", "language == 'zh'", "--limit", "3", "--to", "alpaca",
                     "-o", str(out))
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text(encoding="utf-8"))
    assert rows == [{"instruction": f"问题{i}", "input": "", "chosen": f"good {i}", "rejected": f"bad {i}"}
                    for i in (1, 3, 5)]
    assert "IMPORTED []" in result.stderr
    assert "messages" in result.stdout and "filtered out" in result.stdout and "zh 3" in result.stdout


def test_bad_row_is_one_line_exit_2_and_no_output(tmp_path):
    out = tmp_path / "out.jsonl"
    result = run_cli("convert-data", str(FIXTURES / "bad" / "identical.jsonl"), "-o", str(out))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if not line.startswith("IMPORTED")]
    assert lines == [f"error: {FIXTURES / 'bad' / 'identical.jsonl'}:2: field 'rejected': chosen and rejected are "
                     "identical"]
    assert not out.exists() and list(tmp_path.iterdir()) == []


def _opts(inputs, output, **kw) -> ConvertOptions:
    return ConvertOptions(inputs=[str(p) for p in inputs], output=Path(output), **kw)


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_inputs_are_never_written(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_bytes((FIXTURES / "trl_explicit.jsonl").read_bytes())
    before = _digest(source)
    with pytest.raises(InputError, match="is the input"):
        convert(_opts([source], source, force=True))
    link = tmp_path / "link.jsonl"
    link.symlink_to(source)
    with pytest.raises(InputError, match="is the input"):
        convert(_opts([source], link, force=True))
    with pytest.raises(InputError, match="is the input"):
        convert(_opts([str(tmp_path / "*.jsonl")], tmp_path / "in.jsonl", force=True))
    assert _digest(source) == before


def test_existing_output_needs_force(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("keep me\n")
    with pytest.raises(InputError, match="exists; pass --force"):
        convert(_opts([FIXTURES / "alpaca.jsonl"], out))
    assert out.read_text() == "keep me\n"
    convert(_opts([FIXTURES / "alpaca.jsonl"], out, force=True))
    assert len(out.read_text().splitlines()) == 3


def test_failure_midway_leaves_the_old_output_and_no_temp_files(tmp_path):
    out = tmp_path / "out.jsonl"
    out.write_text("old\n")
    with pytest.raises(DataError):
        convert(_opts([FIXTURES / "alpaca.jsonl", FIXTURES / "bad" / "empty_response.jsonl"], out, force=True))
    assert out.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_skip_invalid_writes_rejects_with_reasons(tmp_path):
    bad = FIXTURES / "bad"
    inputs = [bad / "identical.jsonl", bad / "null_field.jsonl", bad / "empty_response.jsonl"]
    out, rejects = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"
    summary = convert(_opts(inputs, out, skip_invalid=True, rejects=rejects))
    assert summary.written == 3 and summary.stats.read == 6
    assert dict(summary.stats.dropped) == {"identical": 1, "null-field": 1, "empty-response": 1}
    lines = [json.loads(line) for line in rejects.read_text().splitlines()]
    assert [(r["check"], r["line"], r["field"]) for r in lines] == [
        ("identical", 2, "rejected"), ("null-field", 2, "rejected"), ("empty-response", 2, "rejected")]
    assert lines[0]["row"]["chosen"] == [A("same")]

    from rich.console import Console

    from dpo_cli.data.convert import print_summary

    console = Console(record=True, width=200)
    print_summary(console, summary)
    text = console.export_text()
    assert "dropped: identical" in text and "1 (chosen and rejected are identical, or differ only in whitespace)" in text
    assert f"{bad / 'identical.jsonl'}:2: field 'rejected': chosen and rejected are identical" in text


def test_rejects_needs_skip_invalid(tmp_path):
    with pytest.raises(InputError, match="--skip-invalid"):
        convert(_opts([FIXTURES / "alpaca.jsonl"], tmp_path / "o.jsonl", rejects=tmp_path / "r.jsonl"))


def _many(tmp_path, n=40) -> Path:
    path = tmp_path / "many.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"q{i % 30}", "chosen": "a", "rejected": "b"}) + "\n"
                            for i in range(n)))
    return path


def test_dedupe_shuffle_and_eval_split(tmp_path):
    source = _many(tmp_path)
    out = tmp_path / "out.jsonl"
    summary = convert(_opts([source], out, dedupe=True))
    assert summary.duplicates == 10 and summary.written == 30
    plain = out.read_text().splitlines()

    first = convert(_opts([source], out, dedupe=True, shuffle=True, seed=3, force=True))
    shuffled = out.read_text().splitlines()
    assert first.written == 30 and sorted(shuffled) == sorted(plain) and shuffled != plain
    convert(_opts([source], out, dedupe=True, shuffle=True, seed=3, force=True))
    assert out.read_text().splitlines() == shuffled  # the seed fixes the order

    split = convert(_opts([source], out, dedupe=True, eval_split=0.2, force=True))
    eval_path = tmp_path / "out.eval.jsonl"
    assert split.eval_output == eval_path and split.eval_written == 6 and split.written == 24
    train_rows, eval_rows = out.read_text().splitlines(), eval_path.read_text().splitlines()
    assert sorted(train_rows + eval_rows) == sorted(plain) and not set(train_rows) & set(eval_rows)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # spool removed


def test_limit_counts_rows_after_filtering(tmp_path):
    summary = convert(_opts([_many(tmp_path)], tmp_path / "o.jsonl", where="prompt in ['q1', 'q2', 'q3']",
                            limit=2))
    assert summary.written == 2
    assert [json.loads(x)["prompt"] for x in (tmp_path / "o.jsonl").read_text().splitlines()] == ["q1", "q2"]


def test_parquet_and_json_outputs_and_keep(tmp_path):
    import pyarrow.parquet as pq

    source = FIXTURES / "messages.jsonl"
    convert(_opts([source], tmp_path / "o.parquet", where="language == 'zh'", keep=["language"]))
    table = pq.read_table(tmp_path / "o.parquet").to_pylist()
    assert table == [{"prompt": [U("用中文说你好。")], "chosen": [A("你好！")], "rejected": [A("Hello!")],
                      "language": "zh"}]
    convert(_opts([FIXTURES / "alpaca.jsonl"], tmp_path / "o.json"))
    assert json.loads((tmp_path / "o.json").read_text(encoding="utf-8")) == [
        json.loads(x) for x in (FIXTURES / "expected" / "alpaca.jsonl").read_text(encoding="utf-8").splitlines()]


def test_keep_names_a_missing_column(tmp_path):
    with pytest.raises(DataError) as err:
        convert(_opts([FIXTURES / "alpaca.jsonl"], tmp_path / "o.jsonl", keep=["language"]))
    assert (err.value.line, err.value.field) == (1, "language")


def test_where_column_missing_from_the_first_row_is_a_typo(tmp_path):
    with pytest.raises(DataError) as err:
        convert(_opts([FIXTURES / "messages.jsonl"], tmp_path / "o.jsonl", where="lang == 'zh'"))
    assert err.value.line == 1 and "did you mean 'language'" in str(err.value)


def test_where_comparison_that_fails_on_a_row_names_it(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "score": 3}) + "\n"
                    + json.dumps({"prompt": "p", "chosen": "a", "rejected": "c", "score": "high"}) + "\n")
    with pytest.raises(DataError) as err:
        convert(_opts([path], tmp_path / "o.jsonl", where="score > 2"))
    assert (err.value.line, str(err.value).split(": ")[-1]) == (2, "cannot compare text with a number using '>'")
    summary = convert(_opts([path], tmp_path / "o.jsonl", where="score > 2", skip_invalid=True, force=True))
    assert summary.written == 1 and dict(summary.stats.dropped) == {"filter": 1}
