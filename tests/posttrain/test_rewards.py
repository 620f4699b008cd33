"""Verifiable rewards: exact match, and code run in a guarded subprocess that cannot write
outside its temporary directory, start programs, reach the network or hang."""

import time

import pytest

from lingjax.posttrain.rewards import (
    RewardError,
    code_of,
    exact_reward,
    make_code_reward,
    reward_function,
    run_python,
)


def test_exact_match_on_the_first_line():
    assert exact_reward({"answer": "12"}, " 12\nbecause 5+7") == 1.0
    assert exact_reward({"answer": "12"}, "13") == 0.0
    assert exact_reward({"answer": ["12", "twelve"]}, "twelve") == 1.0
    assert exact_reward({}, "12") == 0.0


def test_code_reward_runs_the_tests_against_the_response():
    reward = make_code_reward(timeout=10)
    tests = "assert add(2, 3) == 5\nassert add(-1, 1) == 0"
    good = "Here:\n```python\ndef add(a, b):\n    return a + b\n```\n"
    assert code_of(good).strip().startswith("def add")
    assert reward({"tests": tests}, good) == 1.0
    assert reward({"tests": tests}, "def add(a, b):\n    return a - b") == 0.0
    assert reward({"tests": tests}, "def add(a, b) return") == 0.0  # a syntax error
    assert reward({}, good) == 0.0  # nothing to check against


def test_the_sandbox_cannot_write_outside_its_directory_or_start_programs(tmp_path):
    target = tmp_path / "escaped.txt"
    attempts = [
        f"open({str(target)!r}, 'w').write('x')",
        f"import pathlib; pathlib.Path({str(target)!r}).write_text('x')",
        f"import os; os.system('touch {target}')",
        f"import os; fd = os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT); os.write(fd, b'x')",
        "import subprocess",
        f"import os; os.remove({str(tmp_path)!r})",
        "import socket",
    ]
    for code in attempts:
        ok, out = run_python(code, timeout=10)
        assert not ok, code
        assert not target.exists(), code
    ok, out = run_python("open('inside.txt', 'w').write('fine'); print(open('inside.txt').read())")
    assert ok and "fine" in out  # its own directory is writable
    assert tmp_path.exists()


def test_the_sandbox_does_not_hang():
    t0 = time.monotonic()
    ok, out = run_python("while True:\n    pass", timeout=1.0)
    assert not ok and out == "timeout" and time.monotonic() - t0 < 8
    # A child that forks to escape the timeout is killed with its session.
    ok, _ = run_python("import os\nos.fork()\nwhile True:\n    pass", timeout=1.0)
    assert not ok


def test_reward_specs():
    assert reward_function("exact") is exact_reward
    assert reward_function("operator:ne")({}, "x") is True  # module:function (record, response)
    for bad, needle in (("nope_module:f", "cannot import"), ("os:sep", "not a function")):
        with pytest.raises(RewardError, match=needle):
            reward_function(bad)
