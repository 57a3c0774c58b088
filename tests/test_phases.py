"""`wubugen phases`: phases run in order, each from the previous best, and a re-run skips finished phases."""
import json
from pathlib import Path

from wubugen.cli import main


def write_plan(tmp_path, body: str) -> Path:
    """plan.toml in tmp_path: the tiny preset, runs/ and cache/ under tmp_path, no progress bars, then `body` (more
    [options] keys and the [[phase]] tables)."""
    plan = tmp_path / "plan.toml"
    plan.write_text(f"""
preset = "tiny"
root = "{tmp_path / 'runs'}"
[options]
progress = false
cache_dir = "{tmp_path / 'cache'}"
""" + body)
    return plan


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


# ---- plan parsing ----------------------------------------------------------------------------------------------------
import os  # noqa: E402
import signal  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from wubugen.errors import UserError  # noqa: E402
from wubugen.train.phases import Condition, load_plan, parse_condition, phase_options, status_lines  # noqa: E402

GUIDE = Path(__file__).resolve().parents[1] / "configs" / "phases" / "guide.toml"


@pytest.mark.parametrize("text,want", [
    ("avg_val_psnr > 20", Condition("avg_val_psnr > 20", "avg_val_psnr", ">", 20.0)),
    ("avg_val_ssim>=0.5", Condition("avg_val_ssim>=0.5", "avg_val_ssim", ">=", 0.5)),
    ("avg_val_lpips < 1e-1", Condition("avg_val_lpips < 1e-1", "avg_val_lpips", "<", 0.1)),
    ("avg_val_psnr >= entry - 0.5", Condition("avg_val_psnr >= entry - 0.5", "avg_val_psnr", ">=", -0.5, True)),
    ("avg_val_psnr > entry", Condition("avg_val_psnr > entry", "avg_val_psnr", ">", 0.0, True)),
    ("gan_stable", Condition("gan_stable")),
])
def test_conditions_parse(text, want):
    assert parse_condition(text, "here") == want


@pytest.mark.parametrize("text", ["psnr > 20", "avg_val_psnr = 20", "avg_val_psnr > lots", 20, "entry > 3"])
def test_bad_conditions_say_how_to_write_one(text):
    with pytest.raises(UserError, match="here"):
        parse_condition(text, "here")


def test_conditions_check_against_the_previous_phase_and_its_entry():
    info = {"best_metrics": {"avg_val_psnr": 17.0},
            "health": {"window_full": True, "active": ["d_guessing", "phase1_ranges"]}}
    assert parse_condition("avg_val_psnr > 20", "").check("p2", info, None) == (
        False, "p2's best avg_val_psnr 17 not > 20")
    assert parse_condition("avg_val_psnr > 16", "").check("p2", info, None)[0]
    rel = parse_condition("avg_val_psnr >= entry - 0.5", "")
    assert rel.check("p2", info, {"avg_val_psnr": 17.4}) == (True, "p2's best avg_val_psnr 17 >= entry 17.4-0.5")
    assert not rel.check("p2", info, {"avg_val_psnr": 18.0})[0]
    assert rel.check("p2", info, None)[0]  # no earlier checkpoint: holds by default, and says so
    stable = parse_condition("gan_stable", "")
    assert stable.check("p2", info, None) == (False, "p2 ended with d_guessing holding")  # phase1_ranges is advice
    assert stable.check("p2", {"health": {"window_full": True, "active": ["phase1_ranges"]}}, None)[0]
    assert "never filled" in stable.check("p2", {"health": {"window_full": False}}, None)[1]
    assert parse_condition("avg_val_ssim > 0", "").check("p2", info, None) == (
        False, "p2's best checkpoint has no avg_val_ssim")


def test_the_guide_plan_parses_with_its_rules():
    plan = load_plan(str(GUIDE))
    names = [ph["name"] for ph in plan["phase"]]
    assert names == ["phase1", "phase2a", "phase2b", "phase2c", "phase3", "phase4"]
    by = {ph["name"]: ph for ph in plan["phase"]}
    assert by["phase1"]["stop_plateau_patience"] == 3 and by["phase1"]["health_phase1_ranges"] is True
    assert by["phase2c"]["optional"] and by["phase2c"]["stop_metric_threshold"] == 22.0
    assert by["phase3"]["optional"] and [c.text for c in by["phase3"]["requires"]] == ["avg_val_psnr > 20",
                                                                                       "gan_stable"]
    assert by["phase3"]["disc_use_gaad_film_condition"] is True and by["phase3"]["lambda_kl"] == "previous"


@pytest.mark.parametrize("body,err", [
    ("[[phase]]\nlambda_kl = 1\n", "unique name"),
    ("[[phase]]\nname = 'a'\n[[phase]]\nname = 'a'\n", "unique name"),
    ("[[phase]]\nname = 'a'\noptional = 'yes'\n", "optional is true or false"),
    ("[[phase]]\nname = 'a'\nrequires = 3\n", "requires is a list"),
    ("[[phase]]\nname = 'a'\nrequires = ['psnr > 3']\n", "cannot read condition"),
])
def test_bad_plans_are_user_errors(tmp_path, body, err):
    p = tmp_path / "plan.toml"
    p.write_text(body)
    with pytest.raises(UserError, match=err):
        load_plan(str(p))


def test_phase_options_layering_load_from_and_try_out_lengths(tmp_path):
    p = tmp_path / "plan.toml"
    p.write_text("[options]\nbatch_size = 4\nlambda_kl = 0.5\n[[phase]]\nname = 'a'\nlambda_kl = 0.1\n"
                 "[[phase]]\nname = 'b'\nrequires = 'gan_stable'\nwandb_log_train_recon_interval = 7\n")
    plan = load_plan(str(p))
    a = phase_options(plan, 0, tmp_path / "r", {"batch_size": 2})
    assert a["lambda_kl"] == 0.1 and a["batch_size"] == 2 and "load_checkpoint" not in a
    assert a["checkpoint_dir"] == str(tmp_path / "r" / "a")
    b = phase_options(plan, 1, tmp_path / "r", {}, phase_steps=40)
    assert b["load_checkpoint"] == str(tmp_path / "r" / "a") and b["lambda_kl"] == 0.5
    assert (b["max_steps"], b["val_interval"], b["health_window"]) == (40, 5, 4)
    assert b["wandb_log_train_recon_interval"] == 7 and b["wandb_log_fixed_noise_samples_interval"] == 10
    assert "requires" not in b and "name" not in b


def test_dry_run_lists_the_guide_phases_and_trains_nothing(tmp_path, capsys):
    assert main(["phases", str(GUIDE), "--dry-run", "--root", str(tmp_path / "r"), "--set",
                 "phase4.lambda_gan=2.0"]) == 0
    out = capsys.readouterr().out
    assert out.count("phase phase") == 6 and "requires avg_val_psnr > 20, gan_stable" in out
    assert "'lambda_gan': '2.0'" in out and not (tmp_path / "r").exists()
    assert main(["phases", str(GUIDE), "--dry-run", "--set", "phase9.lambda_gan=2"]) == 2
    assert "phase9" in capsys.readouterr().err


# ---- hand-over, skipping, status, report (one short plan, trained once) ------------------------------------------
HANDOVER = """
preset = "tiny"
root = "{root}"
[options]
progress = false
cache_dir = "{cache}"
max_steps = 12
val_interval = 2
[[phase]]                            # plateau: no gain of 1000 dB over 1 validation -> ends at the 2nd (step 4)
name = "p1"
stop_plateau_patience = 1
stop_plateau_min_delta = 1000.0
[[phase]]                            # threshold: any PSNR is above 1 dB -> ends at the 1st validation (step 2)
name = "p2"
requires = ["avg_val_psnr > 1"]
lambda_kl = 0.003
stop_metric_threshold = 1.0
[[phase]]                            # optional, its bar out of reach: skipped with the reason
name = "p3"
optional = true
requires = ["avg_val_psnr > 99"]
[[phase]]                            # from p2 (the last that trained), with p2's lambda_kl; ends at its length
name = "p4"
lambda_kl = "previous"
max_steps = 3
val_interval = 0
"""


@pytest.fixture(scope="module")
def handover(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("handover")
    plan = tmp / "plan.toml"
    plan.write_text(HANDOVER.format(root=tmp / "runs", cache=tmp / "cache"))
    assert main(["phases", str(plan)]) == 0
    return plan, tmp / "runs"


def _summary(root, name):
    return json.loads((root / name / "summary.json").read_text())


def test_phases_hand_over_on_plateau_threshold_and_length(handover):
    _, root = handover
    s1, s2, s4 = (_summary(root, n) for n in ("p1", "p2", "p4"))
    assert s1["end_reason"]["kind"] == "plateau" and s1["steps"] == 4
    assert s2["end_reason"]["kind"] == "threshold" and s2["steps"] == 2
    assert "reached the threshold 1 dB" in s2["end_reason"]["detail"]
    assert s4["end_reason"] == {"kind": "length", "detail": "3 of 3 steps"}
    assert s4["lambda_kl"] == pytest.approx(0.003)  # "previous": p2's, not the preset's
    doc = json.loads((root / "phases.json").read_text())
    rec = {r["name"]: r for r in doc["phases"]}
    assert [rec[n]["state"] for n in ("p1", "p2", "p3", "p4")] == ["done", "done", "skipped", "done"]
    assert rec["p2"]["loaded_from"] == "p1" and rec["p4"]["loaded_from"] == "p2"
    assert rec["p3"]["reason"].startswith("p2's best avg_val_psnr") and "not > 99" in rec["p3"]["reason"]
    assert not (root / "p3").exists()


def test_phases_status_shows_each_phase(handover, capsys):
    plan, root = handover
    assert main(["phases", "status", str(root)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"plan {plan}") and lines[1].split()[:3] == ["phase", "state", "steps"]
    rows = {ln.split()[0]: ln for ln in lines[2:]}
    assert rows["p1"].split()[1:3] == ["done", "4"] and "plateau: avg_val_psnr gained" in rows["p1"]
    assert "psnr " in rows["p1"] and str(root / "p1" / "step_0000000") in rows["p1"]
    assert "threshold: avg_val_psnr" in rows["p2"]
    assert rows["p3"].split()[1] == "skipped" and "not > 99" in rows["p3"]
    assert "length: 3 of 3 steps" in rows["p4"]
    assert main(["phases", "status", str(plan)]) == 0  # the plan file names its root
    assert capsys.readouterr().out.splitlines()[2:] == lines[2:]
    assert main(["phases", "status", str(root / "p1")]) == 0  # one run: its info as JSON
    assert json.loads(capsys.readouterr().out)["state"] == "done"


def test_report_of_the_plan_is_one_self_contained_page(handover, capsys):
    _, root = handover
    assert main(["report", str(root)]) == 0
    page = (root / "report.html").read_text()
    assert f"report: {root / 'report.html'}" in capsys.readouterr().out
    for needle in ("p1", "plateau", "threshold", "skipped", "not &gt; 99", "Curves", "Health findings",
                   "context | target | reconstruction", "data:image/png;base64,", "data:image/gif;base64,"):
        assert needle in page, needle
    assert "http://" not in page and "https://" not in page and "src='/" not in page  # nothing fetched


def _chromium():
    import shutil

    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (apt-get install chromium)")
def test_report_renders_in_headless_chromium(handover, tmp_path):
    """As a person would see it: the page renders to a picture with the phase table, the curves and the samples."""
    import subprocess

    import numpy as np
    from PIL import Image

    _, root = handover
    main(["report", str(root), "--out", str(tmp_path / "r.html")])
    png = tmp_path / "r.png"
    proc = subprocess.run([_chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--screenshot={png}", "--window-size=1200,2400", (tmp_path / "r.html").as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert png.is_file(), proc.stderr[-2000:]
    img = np.asarray(Image.open(png).convert("RGB")).astype(np.float32)
    assert img.shape[:2] == (2400, 1200)
    rows_with_content = (img.std(axis=(1, 2)) > 5).mean()
    assert rows_with_content > 0.3  # text, tables, plots and strips, not a blank or error page
    green = ((img[..., 1] > img[..., 0] + 20) & (img[..., 1] > img[..., 2] + 20)).mean()
    assert green > 0.005  # the guide's target bands are drawn (green) and the states are coloured


def test_a_required_phase_whose_conditions_fail_stops_the_plan(handover, tmp_path, capsys):
    import shutil

    plan, root = handover
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    shutil.rmtree(copy / "p4")
    p = tmp_path / "plan.toml"
    p.write_text(plan.read_text().replace(str(root), str(copy)).replace("optional = true\n", ""))  # p3 required
    assert main(["phases", str(p)]) == 2
    err = capsys.readouterr().err
    assert "phase p3: its conditions are not met: p2's best avg_val_psnr" in err and "the plan stops here" in err
    rec = {r["name"]: r for r in json.loads((copy / "phases.json").read_text())["phases"]}
    assert rec["p3"]["state"] == "stopped" and "not > 99" in rec["p3"]["reason"]
    assert not (copy / "p4").exists()  # nothing after it ran


# ---- interruption ----------------------------------------------------------------------------------------------------
def test_an_interrupted_phase_shows_as_such_and_resumes_when_the_plan_runs_again(tmp_path, capsys, monkeypatch):
    from wubugen.train.step import StepRunner

    plan = write_plan(tmp_path, """[[phase]]
name = "a"
max_steps = 2
[[phase]]
name = "b"
max_steps = 6
lambda_kl = 0.002
""")
    real_run, calls = StepRunner.run, {"n": 0}

    def run_then_signal(self, *a, **k):  # Ctrl-C while phase b's 3rd step runs
        out = real_run(self, *a, **k)
        calls["n"] += 1
        if calls["n"] == 2 + 3:
            os.kill(os.getpid(), signal.SIGINT)
        return out

    monkeypatch.setattr(StepRunner, "run", run_then_signal)
    assert main(["phases", str(plan)]) == 128 + signal.SIGINT
    monkeypatch.setattr(StepRunner, "run", real_run)
    root = tmp_path / "runs"
    assert not (root / "b" / "summary.json").exists()
    capsys.readouterr()
    lines = status_lines(root)
    row_b = next(ln for ln in lines if ln.startswith("b "))
    assert row_b.split()[1:3] == ["interrupted", "3"] and "re-run the plan to resume it" in row_b
    assert main(["phases", str(plan)]) == 0  # again: a is done and skipped, b resumes exactly where it stopped
    out = capsys.readouterr().out
    assert "phase a: done" in out and "resum" in out
    sb = _summary(root, "b")
    assert sb["steps"] == 6 and sb["lambda_kl"] == pytest.approx(0.002)
    rec = {r["name"]: r for r in json.loads((root / "phases.json").read_text())["phases"]}
    assert rec["b"]["state"] == "done" and rec["b"]["loaded_from"] == "a"


def test_the_report_is_written_while_a_phase_trains(tmp_path, monkeypatch):
    """--report_every_minutes: the plan's page is rewritten at validations while its phases train (here at every one),
    with the running phase on it, and once more at the end."""
    import wubugen.track.html_report as html_report

    real, seen = html_report.write_report, []

    def spy(target, out=None):
        path = real(target, out)
        page = Path(path).read_text()
        seen.append((Path(target), "class='state-running'" in page, "class='state-done'" in page))
        return path

    monkeypatch.setattr(html_report, "write_report", spy)
    plan = write_plan(tmp_path, """max_steps = 4
val_interval = 2
report_every_minutes = 1e-9
[[phase]]
name = "a"
""")
    assert main(["phases", str(plan)]) == 0
    root = tmp_path / "runs"
    assert [t for t, _, _ in seen] == [root] * 4  # validations at steps 2 and 4, the run's end, the plan's end
    assert seen[0][1:] == (True, False) and seen[-1][1:] == (False, True)  # phase a running on the page, then done
    assert (root / "report.html").is_file() and not (root / "a" / "report.html").exists()


def test_a_single_run_writes_its_own_report_only_when_it_was_due(tmp_path):
    base = ["train", "--preset", "tiny", "--max_steps", "4", "--val_interval", "2", "--progress", "false",
            "--cache_dir", str(tmp_path / "cache")]
    assert main(base + ["--checkpoint_dir", str(tmp_path / "r1"), "--report_every_minutes", "1e-9"]) == 0
    assert "wubugen report: run" in (tmp_path / "r1" / "report.html").read_text()
    assert main(base + ["--checkpoint_dir", str(tmp_path / "r2")]) == 0  # 10 minutes by default: a short run writes none
    assert not (tmp_path / "r2" / "report.html").exists()
