"""The CLI from the shell: ``tracerl demo --quick`` (tiny model, toy task, reward before/after, plot) and
``tracerl train CONFIG`` (a TOML run that stops cleanly on SIGTERM and resumes from its checkpoint)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path


def test_quick_demo_prints_before_and_after_and_writes_the_plot(tmp_path: Path) -> None:
    run_dir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "tracerl", "demo", "--quick", "--run-dir", str(run_dir), "--minutes", "0.3",
         "--runners", "2", "--no-progress"],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = " ".join(proc.stdout.split())  # rich wraps long lines
    pattern = r"held-out reward \(greedy, 16 tasks\): before (\d\.\d{3}) → after (\d\.\d{3}) \((\d+) steps"
    match = re.search(pattern, out)
    assert match, out
    before, after, steps = float(match[1]), float(match[2]), int(match[3])
    assert 0.0 <= before <= 1.0 and 0.0 <= after <= 1.0 and steps >= 1
    assert f"plot: {run_dir / 'rewards.png'}" in out
    png = (run_dir / "rewards.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 10_000
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in records if r["kind"] == "val"]
    assert vals[0]["step"] == 0 and vals[0]["val_reward"] == before and vals[-1]["val_reward"] == after
    assert sum(r["kind"] == "train" for r in records) == steps
    assert f"trained model: {run_dir / 'final'}" in out and "MB)" in out  # says what it wrote, and how big


def test_demo_in_a_log_prints_a_line_per_step_and_the_validations(tmp_path: Path) -> None:
    """Without a terminal (a log file, CI) the progress display prints plain lines instead of a bar."""
    run_dir = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, "-m", "tracerl", "demo", "--quick", "--run-dir", str(run_dir), "--minutes", "0.3",
         "--runners", "2"],
        capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    err = proc.stderr
    steps = re.findall(r"step (\d+)/\d+ · train reward (\d\.\d{3})", err)
    assert steps and [int(s) for s, _ in steps] == list(range(1, len(steps) + 1)), err[-2000:]
    assert "held-out reward at step 0:" in err
    assert "\x1b[" not in err and "━" not in err  # no terminal control codes or bar characters in a log


def test_demo_names_the_flag_it_refuses_before_creating_anything(tmp_path: Path) -> None:
    for flags, words in ((["--minutes", "-1"], "--minutes must be a positive number"),
                         (["--model", "does-not-exist"], "--model: model 'does-not-exist'"),
                         (["--resume"], "--resume:")):
        proc = subprocess.run(
            [sys.executable, "-m", "tracerl", "demo", "--run-dir", str(tmp_path / "run"), *flags],
            capture_output=True, text=True, timeout=120,
        )
        assert proc.returncode == 1 and words in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and "trainer.time_budget_s" not in proc.stderr
        assert not (tmp_path / "run").exists()  # nothing was created


def test_demo_refuses_a_bad_store_url(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "tracerl", "demo", "--quick", "--run-dir", str(tmp_path), "--store", "demo.db"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "store.url 'demo.db' is not a store URL" in proc.stderr and "sqlite:///" in proc.stderr


def test_train_runs_a_toml_config_stops_on_sigterm_and_resumes(tmp_path: Path) -> None:
    (tmp_path / "tasks.jsonl").write_text(
        "\n".join(json.dumps({"question": f"How many {w} are there? Reply with a number."}) for w in ("cats", "dogs"))
    )
    run_dir = tmp_path / "run"
    (tmp_path / "run.toml").write_text(
        f"""
agent = "tracerl.tasks.toy:digits_agent"
train_tasks = "tasks.jsonl"
val_tasks = "demo-toy:val:4"

[runners]
n = 2

[algorithm]
model = "tiny-random"
group_size = 4
lr = 1e-3

[trainer]
run_dir = "{run_dir}"
batch_size = 1
epochs = 100
val_every = 0
max_tokens = 8
progress = false
"""
    )
    command = [sys.executable, "-m", "tracerl", "train", str(tmp_path / "run.toml")]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = run_dir / "metrics.jsonl"
    def steps() -> int:
        return sum('"train"' in line for line in metrics.read_text().splitlines()) if metrics.exists() else 0

    deadline = time.monotonic() + 420  # generous: two tiny steps take seconds alone, far longer on a loaded CI box
    while time.monotonic() < deadline and proc.poll() is None and steps() < 2:
        time.sleep(0.2)
    trained = steps()
    proc.send_signal(signal.SIGTERM)  # what a job scheduler sends; handled like Ctrl-C
    _, err = proc.communicate(timeout=120)
    assert trained >= 2, f"only {trained} steps in 420 s before SIGTERM; stderr: {err[-3000:]}"
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted: saving a checkpoint of step" in err
    state = json.loads(next((run_dir / "checkpoints").glob("step-*/trainer.json")).read_text())
    stopped_at = state["step"]
    assert stopped_at >= 2

    done = subprocess.run([*command, "--max-steps", str(stopped_at + 2)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    out = " ".join(done.stdout.split())
    assert re.search(r"held-out reward: before \d\.\d{3} → after \d\.\d{3}", out), out
    assert f"{stopped_at + 2} steps (stopped by max_steps)" in out
    records = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, stopped_at + 3))
    assert [r["n"] for r in records if r["kind"] == "val"] == [4, 4]  # before the first step and after the last


def test_train_reports_a_bad_config_without_a_traceback(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text('agent = "my_agent"\ntrain_tasks = "t.jsonl"\n[algorithm]\nmodel = "m"\n')
    proc = subprocess.run(
        [sys.executable, "-m", "tracerl", "train", str(tmp_path / "run.toml")], capture_output=True, text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "'module:function'" in proc.stderr and "Traceback" not in proc.stderr
