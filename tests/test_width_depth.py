"""Width vs depth at one N = 12·d²·L (lm_lab/scaling/width_depth.py, experiment=width_depth) and dropout by site
(experiment=dropout): the shapes, their refusals, and the points each study's multirun trains, composed as run.py
composes them (no training)."""

import itertools
import logging
import math
import shlex
from pathlib import Path

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationKeyError, InterpolationResolutionError

from lm_lab.config import RunConfig, compose
from lm_lab.errors import ConfigError
from lm_lab.models import non_embedding_params
from lm_lab.scaling.width_depth import MAX_MISS, shapes, table, width_for

EXPERIMENTS = Path(__file__).resolve().parent.parent / "conf" / "experiment"


def sweep_points(name: str, args: list[str]) -> list[tuple[object, dict]]:
    """(swept value, resolved config) of each run `python run.py -m experiment=NAME ARGS` makes: Hydra's basic
    sweeper takes the YAML's `hydra.sweeper.params`, a swept key on the command line replacing its list. Composed
    once, the swept key set per point (its one node is what an override sets)."""
    params = OmegaConf.load(EXPERIMENTS / f"{name}.yaml").hydra.sweeper.params
    parsed = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in params.items()] + args)
    sweeps = {o.get_key_element(): o for o in parsed if o.is_sweep_override()}
    fixed = [o.input_line for o in parsed if not o.is_sweep_override() and not o.get_key_element().startswith("hydra.")]
    (key, sweep), *others = sweeps.items()
    assert not others, "one swept key per study"
    cfg = compose([f"experiment={name}", *fixed])
    points = []
    for value in sweep.sweep_iterator():
        OmegaConf.update(cfg, key, value)
        points.append((value, OmegaConf.to_container(cfg, resolve=True)))
    return points


def derived(plain: dict) -> RunConfig:
    """The derived run of a resolved config. Its `_target_` sections, which these studies leave as they are and
    whose check imports Lightning (seconds), are checked by tests/test_config.py."""
    sections = ("callbacks", "logger", "checkpoint_io")
    return RunConfig.from_dict({k: v for k, v in plain.items() if k not in sections}).derive()


def header_command(name: str) -> list[str]:
    """The arguments of the CPU command in an experiment's header, after `python run.py -m`."""
    lines = (EXPERIMENTS / f"{name}.yaml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("#   CPU"))
    body = itertools.takewhile(lambda line: line.startswith("#     "), lines[start + 1 :])
    words = shlex.split(" ".join(line[1:].strip().rstrip("\\") for line in body))
    assert words[:3] == ["python", "run.py", "-m"] and words[3] == f"experiment={name}"
    return words[4:]


# -- the shapes ------------------------------------------------------------------------------------------------


def test_gpt2_small_is_the_12_layer_shape_of_85M():
    assert 12 * 768**2 * 12 == 84_934_656
    assert width_for(85e6, 12, 64) == 768


def test_the_seed_sized_sweep():
    found = shapes(8.5e7, [6, 12, 18, 24], 64)
    assert [s[:4] for s in found] == [
        (6, 1088, 17, 85_229_568),
        (12, 768, 12, 84_934_656),
        (18, 640, 10, 88_473_600),
        (24, 512, 8, 75_497_472),
    ]
    assert [s.miss for s in found] == pytest.approx([0.002701, -0.000769, 0.040866, -0.111794], abs=1e-6)


def test_the_width_is_the_multiple_nearest_in_N_not_in_d():
    """sqrt(N / 12) = 8.51 heads of 64: 576 is the nearer width, 512 the nearer N (-11.6% against +11.8%)."""
    assert math.sqrt(3.56e6 / 12) / 64 == pytest.approx(8.5105, abs=1e-4)
    assert width_for(3.56e6, 1, 64) == 512


def test_the_width_is_at_least_one_head():
    assert width_for(1e3, 12, 64) == 64  # sqrt(N / 12L) = 2.6: rounds to no head; `shapes` refuses its miss


@pytest.mark.parametrize("head_dim", [16, 64, 128])
def test_every_shape_holds_N_with_whole_heads(head_dim):
    for params in (1e5, 7.7e6, 85e6, 1.3e9):
        for n_layer in range(1, 49):
            try:
                (s,) = shapes(params, [n_layer], head_dim)
            except ConfigError:
                d = width_for(params, n_layer, head_dim)
                assert abs(12 * d * d * n_layer - params) / params > MAX_MISS  # refused only past the limit
                continue
            assert s.n_layer == n_layer and s.d_model == s.n_head * head_dim and s.n_head >= 1
            assert s.params == 12 * s.d_model**2 * n_layer and s.miss == pytest.approx((s.params - params) / params)
            assert abs(s.miss) <= MAX_MISS
            for other in (s.d_model - head_dim, s.d_model + head_dim):  # no other whole-head width is nearer N
                if other >= head_dim:
                    assert abs(12 * other**2 * n_layer - params) >= abs(s.params - params)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((85e6, [0], 64), r"width_depth\.n_layer=0 must be a positive integer"),
        ((85e6, [12.5], 64), r"width_depth\.n_layer=12\.5 must be a positive integer"),
        ((85e6, [True], 64), r"width_depth\.n_layer=True must be a positive integer"),
        ((85e6, ["12"], 64), r"width_depth\.n_layer='12' must be a positive integer"),
        ((85e6, [], 64), r"no depth given; sweep at least one"),
        ((0, [12], 64), r"width_depth\.target_params=0 must be a positive number"),
        ((float("nan"), [12], 64), r"width_depth\.target_params=nan must be a positive number"),
        ((85e6, [12], 0), r"width_depth\.head_dim=0 must be a positive integer"),
        (
            (2e5, [32], 16),
            r"at 32 layers the nearest width with head size 16 is d_model=16, whose 12·d²·L = 98,304 misses "
            r"N = 200,000 by -51% \(limit ±25%\); lower width_depth\.head_dim or the depth, or raise",
        ),
    ],
)
def test_refusals_name_the_setting_and_the_fix(args, message):
    with pytest.raises(ConfigError, match=message):
        shapes(*args)


def test_every_bad_depth_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        shapes(2e5, [0, 4, 32, -1], 16)
    assert len(err.value.problems) == 3


def test_the_table_prints_each_shape_and_its_count():
    lines = table(8.5e7, [6, 12], 64).splitlines()
    assert lines[0] == "width vs depth at N = 12·d²·L = 85,000,000 (head size 64)"
    assert lines[2].split() == ["6", "1088", "17", "85,229,568", "+0.27%"]
    assert lines[3].split() == ["12", "768", "12", "84,934,656", "-0.08%"]


# -- experiment=width_depth ------------------------------------------------------------------------------------


def test_the_width_depth_sweep_trains_each_shape_and_logs_its_count(caplog):
    with caplog.at_level(logging.INFO, logger="lm_lab.scaling.width_depth"):
        points = sweep_points("width_depth", [])
    assert [depth for depth, _ in points] == [6, 12, 18, 24]
    for (depth, plain), s in zip(points, shapes(8.5e7, [6, 12, 18, 24], 64), strict=True):
        model = derived(plain).model
        assert (model.n_layer, model.d_model, model.n_head, model.d_ff) == (depth, s.d_model, s.n_head, 4 * s.d_model)
        # 12·d²·L is every block matrix: the real count adds only biases (13d per layer) and the final LayerNorm
        assert non_embedding_params(model) == s.params + 13 * s.d_model * depth + 2 * s.d_model
    assert "n_layer=24 d_model=512 n_head=8, 12·d²·L = 75,497,472 (-11.18%)" in caplog.text


def test_a_width_depth_target_too_small_is_refused_when_resolved():
    cfg = compose(["experiment=width_depth", "width_depth.target_params=1e3"])
    with pytest.raises(InterpolationResolutionError, match=r"misses N = 1,000 by"):
        OmegaConf.to_container(cfg, resolve=True)


# -- experiment=dropout ----------------------------------------------------------------------------------------

SITES = {  # (embd, attn, resid) at rate p
    "none": (0, 0, 0),
    "all": (1, 1, 1),
    "embd": (1, 0, 0),
    "attn": (0, 1, 0),
    "resid": (0, 0, 1),
}


@pytest.mark.parametrize(("args", "p"), [([], 0.1), (["dropout_study.p=0.3"], 0.3)])
def test_each_dropout_site_sets_its_three_probabilities(args, p):
    points = sweep_points("dropout", args)
    assert [site for site, _ in points] == list(SITES)
    for site, plain in points:
        model = derived(plain).model
        assert (model.embd_dropout, model.attn_dropout, model.resid_dropout) == tuple(p * on for on in SITES[site])


def test_an_unknown_dropout_site_is_an_error():
    cfg = compose(["experiment=dropout", "dropout_study.site=emb"])
    with pytest.raises(InterpolationKeyError, match=r"dropout_study\.sites\.emb"):
        OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize(
    ("experiment", "points_are"),
    [
        ("width_depth", lambda p: (p["model"]["n_layer"], p["model"]["d_model"], p["model"]["n_head"])),
        ("dropout", lambda p: p["dropout_study"]["site"]),
    ],
)
def test_each_headers_cpu_command_composes_every_point_as_a_short_cpu_run(experiment, points_are):
    points = sweep_points(experiment, header_command(experiment))
    expected = {"width_depth": [(2, 96, 6), (4, 64, 4), (8, 48, 3)], "dropout": list(SITES)}[experiment]
    assert [points_are(plain) for _, plain in points] == expected
    for _, plain in points:
        run = derived(plain)
        assert (run.trainer.accelerator, run.train.max_steps) == ("cpu", 20)
