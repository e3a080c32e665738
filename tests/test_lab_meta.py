"""The meta-RL lab runs its stages at a tiny budget, writes its table and plots, and refuses bad input."""

import json

import pytest

from rlxf.algorithms.control.lpo import InnerConfig
from rlxf.algorithms.control.lpo_meta import ESConfig, distil_clip, save_drift
from rlxf.core.config import ConfigError, load_config
from rlxf.lab.meta import MetaLab
from rlxf.lab.registry import lab_class, lab_of


def _tiny(tmp_path, methods='["clip", "dpo", "mine"]'):
    path = tmp_path / "mine.pt"
    if not path.exists():
        es = ESConfig(temporal=True)
        save_drift(path, distil_clip(es.hidden, True, steps=50), es, InnerConfig(), [], "test")
    return [f'run.dir="{tmp_path / "lab"}"', f"methods={methods}", f'drifts={{mine="{path}"}}', "seeds=2", "updates=2",
            "horizons=[1]", "levels=1", "n_envs=2", "n_steps=4", "eval_envs=2"]


def test_meta_lab_smoke(tmp_path):
    assert lab_class(lab_of("configs/lab_meta.toml")) is MetaLab
    cfg = load_config(MetaLab.Config, "configs/lab_meta.toml", _tiny(tmp_path))
    summary = MetaLab(cfg, log=lambda _m: None).execute()
    assert list(summary) == ["cartpole_N2", "cartpole_N1", "levels_inside", "levels_outside", "acrobot_N2"]
    for name, r in summary.items():
        for m in ("clip", "dpo", "mine"):
            assert len(r[m]["final"]) == 2 and len(r[m]["curve"]) == r["updates"]
    assert all(-500 <= x <= -1 for x in summary["acrobot_N2"]["clip"]["final"])  # Acrobot returns: -1 per step
    run_dir = tmp_path / "lab"
    assert json.loads((run_dir / "summary.json").read_text()) == summary
    page = (run_dir / "report.html").read_text()
    assert "levels_outside" in page and "meta_drifts.png" in page
    assert (run_dir / "meta_returns.png").stat().st_size > 1000 and (run_dir / "meta_drifts.png").stat().st_size > 1000


def test_meta_lab_refuses_an_unknown_method_before_running(tmp_path):
    cfg = load_config(MetaLab.Config, "configs/lab_meta.toml", _tiny(tmp_path, '["clip", "nosuch"]'))
    with pytest.raises(ConfigError, match="'nosuch'.*drifts.nosuch"):
        MetaLab(cfg)
    assert not (tmp_path / "lab").exists()
