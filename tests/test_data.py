"""GSM8K loading, validation, the synthetic generator and chat prompts (trl_sapo.gsm8k.data)."""

from __future__ import annotations

import json
import logging
import re

import pytest
from datasets import Dataset, DatasetDict
from helpers import REPO_ROOT

from trl_sapo.gsm8k.data import (
    FEW_SHOT_EXAMPLES,
    SYSTEM_PROMPT,
    DataError,
    generate_problems,
    load_gsm8k,
    to_prompts,
)
from trl_sapo.gsm8k.rewards import accuracy_reward, extract_final_answer, format_reward, reference_answer

# --------------------------------------------------------------------------------------------------------------------
# The real GSM8K files
# --------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("split", "size"), [("train", 7473), ("test", 1319)])
def test_local_gsm8k_folder(gsm8k_dir, split, size):
    dataset = load_gsm8k(gsm8k_dir, split)
    assert len(dataset) == size
    assert {"question", "answer"} <= set(dataset.column_names)
    references = [reference_answer(a) for a in dataset["answer"]]
    assert all(r is not None for r in references)
    # The reference solution itself earns full accuracy and format rewards.
    assert accuracy_reward(dataset["answer"][:200], answer=dataset["answer"][:200]) == [1.0] * 200
    assert format_reward(dataset["answer"][:200]) == [1.0] * 200
    if split == "test":
        assert references[0] == "18"  # Janet's ducks


def test_local_file_and_seeded_subset(gsm8k_dir):
    full = load_gsm8k(gsm8k_dir / "test.jsonl")
    a = load_gsm8k(gsm8k_dir / "test.jsonl", num_examples=20, seed=1)
    b = load_gsm8k(gsm8k_dir / "test.jsonl", num_examples=20, seed=1)
    c = load_gsm8k(gsm8k_dir / "test.jsonl", num_examples=20, seed=2)
    assert len(full) == 1319 and len(a) == 20
    assert a["question"] == b["question"] != c["question"]
    assert set(a["question"]) <= set(full["question"])
    assert len(load_gsm8k(gsm8k_dir / "test.jsonl", num_examples=5000)) == 1319  # larger than the split: all of it


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


GOOD = {"question": "Tom has 3 apples and buys 2 more. How many?", "answer": "3 + 2 = 5\n#### 5"}


def test_temp_jsonl_and_json_and_folder(tmp_path):
    rows = [GOOD, {"question": "What is 10 - 4?", "answer": "#### 6", "extra": 1}]
    dataset = load_gsm8k(_write_jsonl(tmp_path / "x.jsonl", rows))
    assert dataset["answer"] == [GOOD["answer"], "#### 6"]
    (tmp_path / "y.json").write_text(json.dumps(rows))
    assert len(load_gsm8k(tmp_path / "y.json")) == 2
    folder = tmp_path / "data"
    folder.mkdir()
    _write_jsonl(folder / "validation.jsonl", rows)
    assert len(load_gsm8k(folder, "validation")) == 2
    with pytest.raises(DataError, match=r"no test\.jsonl or test\.json in folder .*validation\.jsonl"):
        load_gsm8k(folder, "test")


def test_in_memory_dataset_and_dict():
    dataset = Dataset.from_list([GOOD])
    assert load_gsm8k(dataset)["question"] == [GOOD["question"]]
    assert len(load_gsm8k(DatasetDict(test=dataset), "test")) == 1
    with pytest.raises(DataError, match="split 'train' not in the DatasetDict"):
        load_gsm8k(DatasetDict(test=dataset), "train")


# --------------------------------------------------------------------------------------------------------------------
# Bad data
# --------------------------------------------------------------------------------------------------------------------

BAD_ROWS = [
    ({"question": "", "answer": "#### 1"}, r"row 1: 'question' must be a non-empty string, got ''"),
    ({"question": "   ", "answer": "#### 1"}, r"row 1: 'question' must be a non-empty string"),
    ({"question": None, "answer": "#### 1"}, r"row 1: 'question' must be a non-empty string, got None"),
    (
        {"question": "Q?", "answer": "the answer is 5"},
        r"row 1: 'answer' has no number after '####': 'the answer is 5'",
    ),
    ({"question": "Q?", "answer": "work\n#### "}, r"row 1: 'answer' has no number after '####'"),
    ({"question": "Q?", "answer": "#### five"}, r"row 1: 'answer' has no number after '####': '#### five'"),
    ({"question": "Q?", "answer": None}, r"row 1: 'answer' has no number after '####': None"),
]


@pytest.mark.parametrize(("bad", "message"), BAD_ROWS)
def test_bad_row_raises_naming_row(tmp_path, bad, message):
    path = _write_jsonl(tmp_path / "bad.jsonl", [GOOD, bad, GOOD])
    with pytest.raises(DataError, match=message) as info:
        load_gsm8k(path)
    assert str(path) in str(info.value) and "skip_invalid=True in Python" in str(info.value)
    assert "--skip_invalid_rows true on the command line" in str(info.value)  # issue 31 item 4: CLI users too


def test_skip_invalid_drops_and_logs_count(tmp_path, caplog):
    rows = [GOOD, BAD_ROWS[0][0], GOOD, BAD_ROWS[3][0], BAD_ROWS[5][0], GOOD]
    path = _write_jsonl(tmp_path / "bad.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="trl_sapo.gsm8k.data"):
        dataset = load_gsm8k(path, skip_invalid=True)
    assert len(dataset) == 3 and set(dataset["answer"]) == {GOOD["answer"]}
    assert "dropped 3 invalid row(s) of 6 (first: row 1)" in caplog.text
    with pytest.raises(DataError, match="every row is invalid"):
        load_gsm8k(_write_jsonl(tmp_path / "all_bad.jsonl", [BAD_ROWS[3][0]]), skip_invalid=True)


def test_missing_columns_empty_and_unreadable(tmp_path):
    with pytest.raises(DataError, match=r"missing column\(s\) \['answer'\]; it has \['question', 'solution'\]"):
        load_gsm8k(_write_jsonl(tmp_path / "cols.jsonl", [{"question": "Q?", "solution": "#### 1"}]))
    with pytest.raises(DataError, match="is empty"):
        load_gsm8k(Dataset.from_dict({"question": [], "answer": []}))
    # Mixed types in one column: pyarrow's error is wrapped with the file name.
    mixed = _write_jsonl(tmp_path / "mixed.jsonl", [GOOD, {"question": 12, "answer": "#### 1"}])
    with pytest.raises(DataError, match=r"mixed\.jsonl, row 1: .question. must be a non-empty string, got 12"):
        load_gsm8k(mixed)
    (tmp_path / "data.csv").write_text("question,answer\n")
    with pytest.raises(DataError, match=r"must be \.json or \.jsonl"):
        load_gsm8k(tmp_path / "data.csv")
    with pytest.raises(DataError, match="num_examples must be a positive integer"):
        load_gsm8k(Dataset.from_list([GOOD]), num_examples=0)


def test_unknown_source_is_a_clear_error(tmp_path, monkeypatch):
    # Not a local path -> tried on the Hub, which is offline in tests: the error says both.
    with pytest.raises(DataError, match=r"'no/such-dataset-xyz' is not a local path, and loading it from the Hugging"):
        load_gsm8k("no/such-dataset-xyz")

    # The default dataset without Hub access (also where a cached copy exists): the message names the two offline
    # choices.
    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (OfflineModeIsEnabled)")

    monkeypatch.setattr("trl_sapo.gsm8k.data.load_dataset", offline)
    with pytest.raises(DataError) as err:
        load_gsm8k("openai/gsm8k", split="train")
    assert "such as ../shared/data/gsm8k" in str(err.value) and "or 'synthetic'" in str(err.value)


# --------------------------------------------------------------------------------------------------------------------
# Synthetic problems
# --------------------------------------------------------------------------------------------------------------------

_STEP_RE = re.compile(r"<<(\d+)([-+*/])(\d+)=(\d+)>>(\d+)")


def _check_solution(answer: str, steps: tuple[int, int]) -> int:
    """Recompute every calculator annotation and check the chain ends at the '#### N' answer."""
    calcs = _STEP_RE.findall(answer)
    assert steps[0] <= len(calcs) <= steps[1], answer
    ops = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}
    for a, op, b, result, shown in calcs:
        a, b, result = int(a), int(b), int(result)
        assert result == int(shown) == ops[op](a, b) and result >= 0, answer
        if op == "/":
            assert a % b == 0, answer
    final = int(answer.rsplit("#### ", 1)[1])
    assert final == int(calcs[-1][3]) and final > 0
    return final


def test_generator_answers_are_correct_and_schema():
    dataset = generate_problems(300, seed=0)
    assert dataset.column_names == ["question", "answer"] and len(dataset) == 300
    for question, answer in zip(dataset["question"], dataset["answer"]):
        final = _check_solution(answer, (2, 4))
        assert question.endswith("?") and reference_answer(answer) == str(final)
        # Every operand of the first calculation appears in the question (the problem is self-contained).
        first = _STEP_RE.search(answer)
        assert all(re.search(rf"\b{n}\b", question) for n in (first.group(1), first.group(3))), (question, answer)
    assert len(set(dataset["question"])) >= 295  # varied
    assert load_gsm8k(dataset) is not None  # passes validation


@pytest.mark.parametrize(("num_steps", "bounds"), [(1, (1, 1)), (2, (2, 2)), (4, (4, 4)), ((2, 3), (2, 3))])
def test_generator_num_steps_knob(num_steps, bounds):
    for answer in generate_problems(60, seed=3, num_steps=num_steps, max_value=20)["answer"]:
        _check_solution(answer, bounds)


def test_generator_determinism_and_options():
    assert generate_problems(20, seed=5)[:] == generate_problems(20, seed=5)[:]
    assert generate_problems(20, seed=5)["question"] != generate_problems(20, seed=6)["question"]
    small = generate_problems(200, seed=0, num_steps=2, max_value=20)
    large = generate_problems(200, seed=0, num_steps=2, max_value=1000)
    mean = lambda d: sum(int(reference_answer(a)) for a in d["answer"]) / len(d)  # noqa: E731
    assert mean(small) * 5 < mean(large)
    with pytest.raises(DataError, match="num_steps must be >= 1"):
        generate_problems(3, num_steps=(3, 2))
    with pytest.raises(DataError, match="max_value must be >= 10"):
        generate_problems(3, max_value=5)


def test_synthetic_source_splits_and_options():
    train = load_gsm8k("synthetic", "train", num_examples=50)
    test = load_gsm8k("synthetic", "test", num_examples=50)
    assert not set(train["question"]) & set(test["question"])
    assert load_gsm8k("synthetic", "test", num_examples=50)["question"] == test["question"]
    assert len(load_gsm8k("synthetic", "test")) == 1319
    easy = load_gsm8k("synthetic:num_steps=1,max_value=20", "train", num_examples=30)
    for answer in easy["answer"]:
        _check_solution(answer, (1, 1))
    ranged = load_gsm8k("synthetic:num_steps=3-4", "train", num_examples=30)
    for answer in ranged["answer"]:
        _check_solution(answer, (3, 4))
    with pytest.raises(DataError, match=r"bad synthetic dataset option 'steps=2'.*valid keys are num_steps"):
        load_gsm8k("synthetic:steps=2")
    with pytest.raises(DataError, match="bad synthetic dataset option 'num_steps=two'"):
        load_gsm8k("synthetic:num_steps=two")


# --------------------------------------------------------------------------------------------------------------------
# Prompts
# --------------------------------------------------------------------------------------------------------------------


def test_to_prompts_zero_shot():
    dataset = to_prompts(generate_problems(3, seed=0))
    assert set(dataset.column_names) == {"question", "answer", "prompt"}
    for row in dataset:
        assert row["prompt"] == [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": row["question"]},
        ]
    assert "####" in SYSTEM_PROMPT
    no_system = to_prompts(generate_problems(1, seed=0), system_prompt=None)
    assert [m["role"] for m in no_system[0]["prompt"]] == ["user"]


def test_to_prompts_few_shot():
    dataset = to_prompts(generate_problems(2, seed=0), num_few_shot=2)
    roles = [m["role"] for m in dataset[0]["prompt"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert dataset[0]["prompt"][1]["content"] == FEW_SHOT_EXAMPLES[0]["question"]
    assert dataset[0]["prompt"][-1]["content"] == dataset[0]["question"]
    # Custom examples (GSM8K-style, with calculator annotations that are stripped from the shown solution).
    custom = generate_problems(3, seed=9)
    prompt = to_prompts(generate_problems(1, seed=0), num_few_shot=3, few_shot_examples=custom)[0]["prompt"]
    shots = prompt[2:-1:2]
    assert [m["content"].split("\n")[-1] for m in shots] == [a.split("\n")[-1] for a in custom["answer"]]
    assert all("<<" not in m["content"] and extract_final_answer(m["content"]) for m in shots)
    with pytest.raises(DataError, match="only 4 few-shot examples"):
        to_prompts(generate_problems(1), num_few_shot=5)
    with pytest.raises(DataError, match="few-shot example 0 has no"):
        to_prompts(generate_problems(1), num_few_shot=1, few_shot_examples=[{"question": "Q", "answer": "A"}])


def test_prompt_renders_with_chat_template(tiny_model_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_path)
    row = to_prompts(generate_problems(1, seed=0), num_few_shot=1)[0]
    text = tokenizer.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert text.startswith("<|im_start|>system\n" + SYSTEM_PROMPT)
    assert text.count("<|im_start|>user") == 2 and text.count("<|im_start|>assistant") == 2
    assert text.endswith(row["question"] + "<|im_end|>\n<|im_start|>assistant\n")


def test_alternate_phrasing_is_disjoint_from_the_standard_templates():
    """`phrasing=alternate` (the demo's unseen-wording held-out set): valid GSM8K rows, exact answers, 1-2 steps, and
    no sentence shared with the standard generator's problems."""
    alternate = load_gsm8k("synthetic:num_steps=1-2,max_value=20,phrasing=alternate", split="test", num_examples=300)
    standard = load_gsm8k("synthetic:num_steps=1-2,max_value=20", split="train", num_examples=300)
    for answer in alternate["answer"]:
        steps = re.findall(r"<<([^=]+)=(-?\d+)>>", answer)
        assert 1 <= len(steps) <= 2
        for expr, value in steps:  # every calculator annotation is exact integer arithmetic
            assert eval(expr.replace("/", "//")) == int(value)  # noqa: S307 (generated arithmetic only)
        assert int(reference_answer(answer)) == int(steps[-1][1]) > 0
    skeleton = lambda q: {re.sub(r"\d+|\b[A-Z][a-z]+\b", "#", s) for s in q.split(". ")}  # noqa: E731
    alternate_sentences = set().union(*map(skeleton, alternate["question"]))
    standard_sentences = set().union(*map(skeleton, standard["question"]))
    assert not alternate_sentences & standard_sentences
    with pytest.raises(DataError, match="phrasing"):
        load_gsm8k("synthetic:phrasing=poetic", split="test", num_examples=4)
    with pytest.raises(DataError, match="1-2 steps"):
        load_gsm8k("synthetic:num_steps=3,phrasing=alternate", split="test", num_examples=4)


def test_synthetic_test_split_is_disjoint_by_construction():
    """Every synthetic test question hashes into the test bucket and no other split's does, so no seed or size can
    put a held-out question into training (the demo trains on other seeds than it evaluates)."""
    from trl_sapo.gsm8k.synthetic import is_test_question

    source = "synthetic:num_steps=1,max_value=20"
    test = load_gsm8k(source, "test", num_examples=64)
    assert all(map(is_test_question, test["question"])) and len(set(test["question"])) == 64
    for seed in range(4):
        train = load_gsm8k(source, "train", num_examples=256, seed=seed)
        assert not any(map(is_test_question, train["question"]))
        assert not set(train["question"]) & set(test["question"])


def test_demo_heldout_overlap_with_training_is_what_the_docs_say():
    """What "disjoint" means for the demo's held-out set (README, docs/results.md §2b; issue 30 item 10): no
    held-out question is a training question, but for the training seeds of the stored studies (0-4; the 256
    problems `recipes/smollm2-135m_cpu_demo.yaml` draws from) some are a training problem with another person, and
    many share their arithmetic (the `<<a op b=c>>` calculation: numbers and operation) with one. The held-out set
    itself is pinned: docs/results/demo_seeds.json and learning_gsm8k.json were measured on exactly these 128."""
    import hashlib

    from trl_sapo.gsm8k.data import load_heldout_mix
    from trl_sapo.gsm8k.synthetic import _PEOPLE

    heldout = load_heldout_mix(128)
    digest = hashlib.sha256(
        "\n".join(f"{q}\n{a}" for ds in heldout.values() for q, a in zip(ds["question"], ds["answer"])).encode()
    )
    assert digest.hexdigest()[:16] == "2b71d2bb37d6beee", "the stored studies' held-out problems changed"
    person = re.compile(r"\b(" + "|".join(name for name, _, _ in _PEOPLE) + r"|[Ss]he|[Hh]e|[Hh]er|[Hh]is)\b")
    renamed = lambda question: person.sub("<person>", question)  # noqa: E731
    calculation = lambda answer: tuple(re.findall(r"<<([^>]*)>>", answer))  # noqa: E731
    counts = {name: {"verbatim": [], "renamed": [], "same calculation": []} for name in heldout}
    for seed in range(5):
        train = load_gsm8k("synthetic:num_steps=1,max_value=20", "train", num_examples=256, seed=seed)
        questions, templates = set(train["question"]), set(map(renamed, train["question"]))
        calculations = set(map(calculation, train["answer"]))
        for name, ds in heldout.items():
            counts[name]["verbatim"].append(sum(q in questions for q in ds["question"]))
            counts[name]["renamed"].append(sum(renamed(q) in templates for q in ds["question"]))
            counts[name]["same calculation"].append(sum(calculation(a) in calculations for a in ds["answer"]))
    assert counts == {
        "same kind as training": {"verbatim": [0] * 5, "renamed": [3, 5, 0, 3, 5], "same calculation": [27, 30, 24, 29, 30]},
        "unseen phrasings": {"verbatim": [0] * 5, "renamed": [0] * 5, "same calculation": [17, 20, 15, 18, 15]},
    }  # fmt: skip
    readme, results = (" ".join((REPO_ROOT / doc).read_text().split()) for doc in ("README.md", "docs/results.md"))
    assert (
        "none is a training question word for word, though some share a training problem's numbers and operation"
        in readme
    )
    for numbers in ("3, 5, 0, 3, 5", "27, 30, 24, 29, 30", "17, 20, 15, 18, 15"):
        assert numbers in results, numbers


def test_split_by_calculation_shares_no_numbers_and_operation():
    """The opt-in for new held-out sets: with split_by=calculation on both sides, the demo-sized sets share no
    `<<a op b=c>>` calculation (the default, by question, shares 24-30 of 64: the test above), operations stay
    balanced, and a bad value is refused."""
    from trl_sapo.gsm8k.synthetic import operations

    calculation = lambda answer: tuple(re.findall(r"<<([^>]*)>>", answer))  # noqa: E731
    heldout = [
        load_gsm8k(f"synthetic:num_steps=1,max_value=20,split_by=calculation{extra}", "test", num_examples=64)
        for extra in ("", ",phrasing=alternate")
    ]
    for ds in heldout:
        assert len(set(ds["question"])) == 64
        assert sorted(map(operations, ds["answer"])) == sorted("+-*/" * 16)
    for seed in range(5):
        train = load_gsm8k(
            "synthetic:num_steps=1,max_value=20,split_by=calculation", "train", num_examples=256, seed=seed
        )
        assert not set(map(calculation, train["answer"])) & {calculation(a) for ds in heldout for a in ds["answer"]}
    with pytest.raises(DataError, match="split_by must be 'question' or 'calculation'"):
        load_gsm8k("synthetic:split_by=name", "test", num_examples=4)


@pytest.mark.parametrize("phrasing", ["standard", "alternate"])
def test_one_step_operations_are_balanced(phrasing):
    from trl_sapo.gsm8k.synthetic import operations

    for split, n in (("train", 256), ("test", 64)):
        dataset = generate_problems(n, seed=1, num_steps=1, max_value=20, phrasing=phrasing, split=split)
        ops = [operations(a) for a in dataset["answer"]]
        assert {op: ops.count(op) for op in "+-*/"} == dict.fromkeys("+-*/", n // 4)
        for answer, op in zip(dataset["answer"], ops):  # the label is the operation the solution performs
            _check_solution(answer, (1, 1))
            assert f" {op} " in answer.splitlines()[0]


def test_operations_reads_annotations_in_order():
    from trl_sapo.gsm8k.synthetic import operations

    assert operations("a <<3*4=12>>12 then <<12+5=17>>17\n#### 17") == "*,+"
    assert operations("<<48/2=24>> <<-3+4=1>> <<(2-1)*3=3>>") == "/,-"  # a leading sign is not the operation
    assert operations("#### 5") == "" and operations("<<" * 50_000) == ""
