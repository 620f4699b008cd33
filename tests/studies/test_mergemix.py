"""MergeMix: the simplex search recovers a planted best mixture (inside the simplex and on a
vertex), the merge of experts is base + sum alpha_k (expert_k - base), the printed flag parses
back as the mixture, the experts' configs train from the base at a constant LR, and the CLI
refuses bad input in one line."""

import os
import subprocess
import sys

import numpy as np
import pytest

from lingjax import configs
from lingjax.checkpoint import save_params
from lingjax.configs.overrides import parse_mixture
from lingjax.studies import expert_config, merge_experts, mixture_flag, search_simplex
from tests.support.hf_synth import random_variables


@pytest.fixture(scope="module")
def params_checkpoint(tmp_path_factory):
    cfg = configs.get("tiny").model
    path = tmp_path_factory.mktemp("base") / "base"
    return save_params(str(path), cfg, random_variables(cfg, seed=0, std=0.1))


def test_the_search_recovers_a_planted_interior_mixture():
    rng = np.random.default_rng(0)
    planted = np.array([0.2, 0.5, 0.3])
    a = rng.standard_normal((3, 3)) + 2 * np.eye(3)  # an anisotropic bowl

    def objective(alpha):
        d = a @ (alpha - planted)
        return 1.5 + float(d @ d)

    found = search_simplex(objective, 3, log=None)
    np.testing.assert_allclose(found.alpha, planted, atol=2e-3)
    assert found.value == pytest.approx(1.5, abs=1e-5)
    assert np.isclose(found.alpha.sum(), 1) and (found.alpha >= 0).all()
    assert found.history[0][0] == pytest.approx([1 / 3] * 3)  # from the uniform mixture


def test_the_search_finds_a_vertex_when_the_best_point_is_outside_the_simplex():
    found = search_simplex(lambda al: float(np.sum((al - [-0.5, 1.5]) ** 2)), 2, log=None)
    np.testing.assert_allclose(found.alpha, [0.0, 1.0], atol=1e-4)


def test_a_planted_mixture_of_experts_is_recovered_from_merged_weights():
    # Experts are random perturbations of a random base; the target weights are the merge at
    # a planted alpha; the objective is the distance of a merge to them.
    rng = np.random.default_rng(1)
    base = {"w": rng.standard_normal((5, 4)).astype(np.float32), "b": rng.standard_normal(4)}
    experts = [
        {k: v + rng.standard_normal(v.shape).astype(np.float32) for k, v in base.items()}
        for _ in range(3)
    ]
    planted = [0.6, 0.1, 0.3]
    target = merge_experts(base, experts, planted)
    for k in base:  # the formula, by hand
        want = base[k] + sum(a * (e[k] - base[k]) for a, e in zip(planted, experts, strict=True))
        np.testing.assert_allclose(target[k], want, rtol=0, atol=1e-6)

    def objective(alpha):
        m = merge_experts(base, experts, alpha)
        return float(sum(np.sum((m[k] - target[k]) ** 2) for k in m))

    found = search_simplex(objective, 3, log=None)
    np.testing.assert_allclose(found.alpha, planted, atol=2e-3)


def test_the_flag_parses_back_as_the_mixture():
    domains = {"code": "/data/code", "docs": "/data/docs"}
    flag = mixture_flag(domains, [0.25, 0.75])
    key, _, value = flag.partition("=")
    assert key == "--config.data.mixture"
    specs = parse_mixture("data.mixture", value)
    assert [(s.name, s.path, s.weight) for s in specs] == [
        ("code", "/data/code", 0.25),
        ("docs", "/data/docs", 0.75),
    ]


def test_an_expert_trains_from_the_base_on_its_corpus_at_a_constant_lr(tmp_path):
    cfg = configs.get("tiny", **{"train.lr": 1e-3})
    e = expert_config(cfg, "ckpt/base", str(tmp_path), steps=20, lr=None)
    assert e.train.init_from == "ckpt/base" and e.train.schedule == "constant"
    assert e.train.steps == e.train.schedule_steps == 20 and e.train.lr == 1e-3
    assert e.data.corpus == str(tmp_path) and e.data.mixture == ()
    assert e.model == cfg.model


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--domains=code=/x"], "needs >= 2 domains"),
        (["--domains=code=/nope1,docs=/nope2"], "is not a directory"),
        (["--domains=code"], "bad entry 'code'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, args, needle, params_checkpoint):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lingjax.cli.mergemix",
            f"--base={params_checkpoint}",
            f"--target={tmp_path}",
            f"--root={tmp_path / 'root'}",
            *args,
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert r.returncode == 2 and needle in r.stderr, r.stderr[-2000:]
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "root").exists()
