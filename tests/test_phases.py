"""`wubugen phases`: phases run in order, each from the previous best, and a re-run skips finished phases."""
import json

from wubugen.cli import main


def test_phase_plan_runs_in_order_and_skips_done_phases(tmp_path, capsys):
    plan = tmp_path / "plan.toml"
    plan.write_text(f"""
preset = "tiny"
root = "{tmp_path / 'runs'}"
[options]
max_steps = 2
progress = false
cache_dir = "{tmp_path / 'cache'}"
[[phase]]
name = "p1"
lambda_kl = 0.0001
[[phase]]
name = "p2"
lambda_kl = 0.001
disc_use_gaad_film_condition = true
""")
    assert main(["phases", str(plan)]) == 0
    out = capsys.readouterr().out
    assert "new phase from" in out and "p1" in out
    s2 = json.loads((tmp_path / "runs" / "p2" / "summary.json").read_text())
    assert s2["lambda_kl"] == 0.001 and s2["steps"] == 2
    assert main(["phases", str(plan)]) == 0
    assert capsys.readouterr().out.count("skipped") == 2


def test_bad_plan_is_a_one_line_error(tmp_path, capsys):
    plan = tmp_path / "plan.toml"
    plan.write_text("preset = 'tiny'\n")
    assert main(["phases", str(plan)]) == 2
    assert "no [[phase]] tables" in capsys.readouterr().err
    plan.write_text("preset = 'tiny'\n[[phase]]\nname = 'a'\nlambda_kl = 'lots'\n")
    assert main(["phases", str(plan)]) == 2
    assert "phase a: --lambda_kl" in capsys.readouterr().err
