"""The command line: bad input fails before any stage with a clear message and no files."""

import json

from rlxf.cli import main


def _run(capsys, *args):
    code = main(list(args))
    return code, capsys.readouterr().err


def test_unknown_config_key_names_key_and_file(tmp_path, capsys):
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[run]\ndir = "{tmp_path / "run"}"\n[sft]\nstepz = 3\n')
    code, err = _run(capsys, "run", str(cfg))
    assert code == 2
    assert "c.toml" in err and "sft.stepz" in err
    assert not (tmp_path / "run").exists()


def test_comparisons_row_missing_rejected_names_file_line_field(tmp_path, capsys):
    data = tmp_path / "prefs.jsonl"
    rows = [{"prompt": "sea a b c :", "chosen": "kalo", "rejected": "miru"}, {"prompt": "sea a b c :", "chosen": "kalo"}]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    code, err = _run(capsys, "quickstart", "--set", f"run.dir={tmp_path / 'run'}", "--set", f"comparisons.path={data}")
    assert code == 2
    assert "prefs.jsonl" in err and "line 2" in err and "rejected" in err
    assert not (tmp_path / "run").exists()


def test_missing_model_directory(tmp_path, capsys):
    code, err = _run(capsys, "quickstart", "--set", f"run.dir={tmp_path / 'run'}",
                     "--set", f"model.init={tmp_path / 'nope'}")
    assert code == 2 and "model.init" in err and "does not exist" in err
    assert not (tmp_path / "run").exists()


def test_unknown_loss_and_bad_loss_args(tmp_path, capsys):
    code, err = _run(capsys, "quickstart", "--set", f"run.dir={tmp_path / 'run'}", "--set", "dpo.loss=nope")
    assert code == 2 and "dpo.loss" in err and "dpo" in err
    code, err = _run(capsys, "quickstart", "--set", f"run.dir={tmp_path / 'run'}", "--set", "dpo.loss=ipo",
                     "--set", "dpo.loss_args={eps=0.1}")
    assert code == 2 and "eps" in err and "tau" in err
    assert not (tmp_path / "run").exists()


def test_report_of_a_finished_run(pipeline_run, capsys):
    pipe, _ = pipeline_run
    (pipe.run.dir / "report.html").unlink()
    assert main(["report", str(pipe.run.dir)]) == 0
    out = capsys.readouterr().out
    assert "dpo" in out and (pipe.run.dir / "report.html").exists()
    assert main(["report", str(pipe.run.dir / "stages")]) == 2


def test_ctrl_c_before_the_run_starts_is_a_clean_exit(monkeypatch, capsys):
    """Ctrl-C while the command is still starting (parsing, importing) exits 130 with the resume hint."""
    import rlxf.cli

    def interrupted():
        raise KeyboardInterrupt

    monkeypatch.setattr(rlxf.cli, "_parser", interrupted)
    assert rlxf.cli.main(["run", "config.toml"]) == 130
    assert "rlxf: interrupted; run the same command again to resume" in capsys.readouterr().err
