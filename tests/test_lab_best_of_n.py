"""The best-of-N over-optimisation lab at a tiny budget: shape of its outputs, exact properties
of best-of-N curves, resuming, and config errors."""

import json

import pytest

from rlxf.core.config import load_config
from rlxf.lab.best_of_n import BestOfNLab, analyse
from rlxf.lab.pipeline import PipelineError
from rlxf.lab.registry import lab_class, lab_of

TINY = [
    "sft.optim.steps=1", "sft.optim.lr=1e-12", "sft.corpus_size=64", "sft.optim.batch_size=8",
    "comparisons.n_pairs=300", "reward_model.budgets=[60, 240]", "reward_model.epochs=1.0",
    "reward_model.min_steps=6", "reward_model.optim.batch_size=32", "ensemble.members=3",
    "best_of_n.n_max=16", "best_of_n.n_prompts=24",
]


def _config(tmp_path, sft_dir, *extra):
    toml = tmp_path / "lab.toml"
    toml.write_text('lab = "best_of_n"\n')
    return toml, load_config(BestOfNLab.Config, toml, [f'run.dir="{tmp_path / "run"}"', f'model.init="{sft_dir}"',
                                                       *TINY, *extra])


@pytest.fixture(scope="module")
def lab_run(pipeline_run, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bon")
    toml, cfg = _config(tmp, pipeline_run[0]._model_dir("sft"))
    assert lab_class(lab_of(toml)) is BestOfNLab
    lab = BestOfNLab(cfg, quiet=True, log=lambda _m: None)
    return lab, lab.execute(), cfg


def test_summary_shape_and_exact_curve_properties(lab_run):
    lab, summary, _ = lab_run
    on_disk = json.loads((lab.run.dir / "summary.json").read_text())
    assert set(on_disk) == {"single", "mean", "wco", "uwo"}
    gold_mean = lab.run.result("samples")["gold_mean"]
    for t, by_budget in on_disk.items():
        assert set(by_budget) == {"60", "240"}
        for curve in by_budget.values():
            assert list(curve) == ["1", "2", "4", "8", "16"]
            # N = 1 averages over every sample: the SFT policy's mean gold, whatever the reward
            assert curve["1"]["gold"] == pytest.approx(gold_mean, abs=1e-9)
            proxies = [curve[n]["proxy"] for n in curve]
            # nested groups: the mean of group maxima can only grow with N
            assert all(b >= a - 1e-6 for a, b in zip(proxies, proxies[1:]))
    # conservative aggregations score no higher than the mean of members
    for b in ("60", "240"):
        assert on_disk["wco"][b]["16"]["proxy"] <= on_disk["mean"][b]["16"]["proxy"] + 1e-6
        assert on_disk["uwo"][b]["16"]["proxy"] <= on_disk["mean"][b]["16"]["proxy"] + 1e-6
    assert summary == on_disk


def test_report_states_peak_and_n_max_numbers(lab_run):
    lab, summary, _ = lab_run
    html = (lab.run.dir / "report.html").read_text()
    a = analyse(summary)
    single = a["single"]["60"]
    assert f"gold peaks at N={single['peak_n']} ({single['peak_gold']:.3f})" in html
    assert f"WCO loses {a['wco']['60']['gold_lost']:.3f}" in html and "UWO loses" in html
    assert (lab.run.dir / "best_of_n.png").stat().st_size > 1000


def test_rerun_resumes_without_recomputing(lab_run):
    lab, summary, cfg = lab_run
    again = BestOfNLab(cfg, quiet=True, log=(msgs := []).append)
    assert again.execute() == summary
    assert all("done already" in m for m in msgs) and len(msgs) == len(again.stages())


def test_bad_configs_are_named(tmp_path):
    _, cfg = _config(tmp_path, "tiny", "reward_model.budgets=[500]", "comparisons.n_pairs=100")
    with pytest.raises(PipelineError, match="reward_model.budgets: the largest budget 500 exceeds"):
        BestOfNLab(cfg, quiet=True)
    _, cfg = _config(tmp_path, "tiny", 'best_of_n.reward_types=["single", "median"]')
    with pytest.raises(PipelineError, match="best_of_n.reward_types: unknown \\['median'\\]"):
        BestOfNLab(cfg, quiet=True)
    _, cfg = _config(tmp_path, "tiny", "best_of_n.n_max=12")
    with pytest.raises(PipelineError, match="n_max must be a power of two"):
        BestOfNLab(cfg, quiet=True)
    assert not (tmp_path / "run").exists()
