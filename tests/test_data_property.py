"""Property: any JSON row fed to any adapter (and any output shape) converts, raises DataError, or is left out on
purpose (Omitted, counted by the pipeline); nothing else."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpo_cli.core.errors import DataError
from dpo_cli.data.checks import Omitted, Where
from dpo_cli.data.formats import FORMATS, AdapterOptions, candidates
from dpo_cli.data.readers import iter_records
from dpo_cli.data.targets import KINDS, TARGETS

FIXTURES = Path(__file__).parent / "fixtures" / "data"
KEYS = sorted({column for fmt in FORMATS.values() for column in fmt.columns}
              | {"role", "content", "from", "value", "label", "completion", "language"})
ROLES = ["user", "assistant", "system", "tool", "human", "gpt", "observation", "function_call", "robot"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["", " ", "\n\nHuman: hi\n\nAssistant: yo", "0", "1"]))
messages = st.lists(st.fixed_dictionaries({}, optional={
    "role": st.one_of(st.sampled_from(ROLES), scalars), "content": st.one_of(st.text(max_size=8), scalars),
    "from": st.one_of(st.sampled_from(ROLES), scalars), "value": st.one_of(st.text(max_size=8), scalars)}),
    max_size=4)
values = st.recursive(st.one_of(scalars, messages),
                      lambda children: st.one_of(st.lists(children, max_size=4),
                                                 st.dictionaries(st.sampled_from(KEYS), children, max_size=4)),
                      max_leaves=12)
random_rows = st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), values, max_size=8)

# valid rows of every format (the project's fixtures, real files' rows included) with a few fields replaced by random
# values or removed
FIXTURE_ROWS = [json.loads(line) for path in sorted([*FIXTURES.glob("*.jsonl"), *FIXTURES.glob("*/*.jsonl")])
                if "expected" not in path.parts and "bad" not in path.parts
                for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
FIXTURE_ROWS += [row for path in sorted(FIXTURES.glob("llamafactory/*_demo.json"))
                 for row in json.loads(path.read_text(encoding="utf-8"))]
# and the Hub layouts' fixtures (jsonl and parquet)
FIXTURE_ROWS += [record.row for path in sorted((FIXTURES.parent / "hub").glob("*/*.*"))
                 if path.suffix in (".jsonl", ".parquet") for record in iter_records(path)]


@st.composite
def mutated_rows(draw):
    row = dict(draw(st.sampled_from(FIXTURE_ROWS)))
    for key in draw(st.lists(st.sampled_from(sorted(row)), max_size=2)):
        if draw(st.booleans()):
            row.pop(key, None)
        else:
            row[key] = draw(values)
    return row


rows = st.one_of(random_rows, mutated_rows())

OPTIONS = [AdapterOptions(), AdapterOptions(preference="safer", pairs="all"), AdapterOptions(pairs="threshold=1"),
           AdapterOptions(preference="safe-only")]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(row=rows, option=st.sampled_from(OPTIONS))
def test_every_adapter_and_shape_raises_only_data_errors(row, option):
    at = Where("random.jsonl", 7)
    candidates(row)  # detection never raises
    for fmt in FORMATS.values():
        try:
            examples = fmt.adapter(row, at, option)
        except DataError as exc:
            assert exc.file == "random.jsonl" and exc.line == 7
            continue
        except Omitted:
            continue
        assert isinstance(examples, list)
        for example in examples:
            for shape in list(TARGETS.values()) + list(KINDS.values()):
                try:
                    out = shape(example, at)
                except (DataError, Omitted):
                    continue
                assert isinstance(out, list) and all(isinstance(r, dict) for r in out)


whitespace_texts = st.lists(st.sampled_from(["a", "b", "ab", " ", "\n", "\t", "  "]), max_size=8).map("".join)


@given(whitespace_texts, whitespace_texts, st.booleans())
@settings(max_examples=2000, deadline=None)
def test_a_pair_differing_only_in_whitespace_is_refused_and_any_other_pair_passes(chosen, rejected, as_messages):
    """check_distinct's shortcut (the answers' first and last words) never lets a whitespace-only pair through."""
    from dpo_cli.data.checks import check_distinct

    same_words = chosen.split() == rejected.split()
    if as_messages:
        chosen, rejected = ({"role": "assistant", "content": text} for text in (chosen, rejected))
    try:
        check_distinct(chosen, rejected, Where("rows.jsonl", 1))
    except DataError as exc:
        assert same_words, exc
    else:
        assert not same_words
