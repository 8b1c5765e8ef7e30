"""`sandpit batch` on the generated fixture (statuses, resume after Ctrl-C) and batch.run from the client."""
import json
import signal
import subprocess
import sys
import time

from conftest import ROOT

from sandpit import Client


def expected(task_id: str) -> str:
    return {"pass": "passed", "fail": "failed", "raise": "failed", "loop": "timeout", "oom": "oom"}[task_id.split("-")[0]]


def make_tasks(path, n):
    subprocess.run([sys.executable, f"{ROOT}/Fixtures/batch/make_tasks.py", str(path), "--n", str(n), "--loops", "2",
                    "--hogs", "1", "--work", "3000", "--timeout-ms", "1500"], check=True)
    return [json.loads(l) for l in open(path)]


def test_batch_cli_judges_every_task_and_resumes_after_interrupt(daemon, sandpit, tmp_path):
    tasks = make_tasks(tmp_path / "tasks.jsonl", 60)
    out = tmp_path / "results.jsonl"
    cmd = [sandpit, "batch", str(tmp_path / "tasks.jsonl"), "--out", str(out), "--socket", daemon, "--concurrency", "2"]
    # Interrupt it part way (as Ctrl-C does).
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if out.exists() and len(out.read_text().splitlines()) >= 10:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    first = [json.loads(l) for l in out.read_text().splitlines()]
    assert 10 <= len(first) < len(tasks), "interrupted part way"
    assert "--resume" in err
    # Without --resume it refuses to overwrite.
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode != 0 and "--resume" in r.stderr
    r = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert f"resuming: {len(first)} of {len(tasks)}" in r.stderr
    results = [json.loads(l) for l in out.read_text().splitlines()]
    ids = [x["id"] for x in results]
    assert sorted(ids) == sorted(t["id"] for t in tasks) and len(set(ids)) == len(ids), "each task once"
    for x in results:
        assert x["status"] == expected(x["id"]), x
    by = {x["id"]: x for x in results}
    assert by["raise-13"]["reason"] == "exception: ValueError: task 13 gave up"
    assert by["fail-7"]["reason"] == "stdout differs from expect.stdout"
    assert "passed" in r.stdout and "timeout" in r.stdout, "the summary table"
    with Client(daemon) as c:
        left = [s for s in c.list_sandboxes() if "sandpit.batch" in s.get("metadata", {}) and s["state"] != "deleted"]
        assert left == [], "every task and base sandbox is deleted"


def test_the_code_eval_fixture_is_judged_as_its_ids_say(daemon, sandpit, tmp_path):
    """Fixtures/batch/eval: 150 code-eval tasks (a function and its asserts), 15 with a wrong expected value.
    The fixture is the one Benchmarks/batch.py --eval times; here every verdict is checked, and the
    committed file must be what make_tasks.py writes (so the two never drift apart)."""
    fixture = f"{ROOT}/Fixtures/batch/eval/tasks.jsonl"
    subprocess.run([sys.executable, f"{ROOT}/Fixtures/batch/eval/make_tasks.py", str(tmp_path / "fresh.jsonl")], check=True, capture_output=True)
    assert open(fixture).read() == (tmp_path / "fresh.jsonl").read_text(), "tasks.jsonl is stale: run Fixtures/batch/eval/make_tasks.py"
    tasks = [json.loads(l) for l in open(fixture)]
    assert len(tasks) >= 150
    out = tmp_path / "results.jsonl"
    r = subprocess.run([sandpit, "batch", fixture, "--out", str(out), "--socket", daemon, "--concurrency", "2"],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    assert r.returncode in (0, 1), r.stderr
    results = {x["id"]: x for x in map(json.loads, out.read_text().splitlines())}
    assert sorted(results) == sorted(t["id"] for t in tasks)
    wrong = {i: (x["status"], x.get("reason"), x.get("stderr", "")[-300:]) for i, x in results.items() if x["status"] != expected(i)}
    assert wrong == {}, wrong
    assert all("AssertionError" in results[i]["stderr"] for i in results if i.startswith("fail-")), "a wrong answer fails its assert"


def test_batch_method_from_the_client_with_shared_setup(client):
    seen = []
    tasks = [{"id": f"t{i}", "files": {"data.txt": "41\n"}, "setup": ["python3 -c \"open('prepared', 'w').write('yes')\""],
              "code": f"print(int(open('data.txt').read()) + 1, open('prepared').read(), {i})",
              "expect": {"stdout": f"42 yes {i}"}} for i in range(6)]
    tasks.append({"id": "bad", "cmd": ["false"]})
    tasks.append({"id": "boom", "setup": "exit 9", "cmd": "true"})
    summary = client.batch(tasks, concurrency=3, on_result=seen.append)
    by = {r["id"]: r for r in seen}
    assert all(by[f"t{i}"]["status"] == "passed" for i in range(6)), seen
    assert by["bad"]["status"] == "failed" and by["bad"]["exitCode"] == 1
    assert by["boom"]["status"] == "error" and "setup[0]" in by["boom"]["reason"]
    assert summary["passed"] == 6 and summary["failed"] == 1 and summary["error"] == 1 and summary["total"] == 8


def test_batch_tasks_keep_their_disk_limit_and_leave_nothing(client):
    # Task sandboxes write to a scratch layer sized by the policy's disk limit:
    # filling it fails inside the task (ENOSPC), and the next task starts empty.
    tasks = [{"id": "fill", "cmd": "head -c 64M /dev/zero > big; echo rc=$?; ls -s big"},
             {"id": "after", "cmd": "test -e big && echo leaked || echo clean"}]
    seen = []
    summary = client.batch(tasks, concurrency=1, limits={"diskBytes": 16 << 20}, on_result=seen.append)
    by = {r["id"]: r for r in seen}
    assert "No space left on device" in by["fill"]["stderr"], by["fill"]
    kib = int(by["fill"]["stdout"].split("rc=1\n")[1].split()[0])
    assert 8 << 10 < kib <= 16 << 10, by["fill"]["stdout"]
    assert by["after"]["stdout"] == "clean\n", by["after"]
    assert summary["total"] == 2
    assert not [s for s in client.list_sandboxes() if s.get("metadata", {}).get("sandpit.batch")], "task sandboxes are deleted"


def test_batch_streams_a_large_task_file_keeps_ids_and_resumes_after_sigint(daemon, sandpit, tmp_path):
    """2,500 tasks of ~1 KiB (a 2.5 MB file, past the old 1 MiB read), ids mixed int/string: each runs
    exactly once across an interrupt and --resume, ids come back exactly, with the task's index. The
    resumed run is more than one batch.run request's worth (2,000 tasks): the CLI once stopped after its
    first request as if interrupted."""
    path = tmp_path / "tasks.jsonl"
    with open(path, "w") as f:
        for i in range(2500):
            tid = i if i % 2 == 0 else f"t-{i}"
            code = "pad = '" + "p" * 1000 + f"'\nprint(len(pad) + {i})\n"
            f.write(json.dumps({"id": tid, "code": code, "expect": {"stdout": str(1000 + i)}}) + "\n")
            if i == 10:
                f.write("\n")   # blank lines are skipped and do not count as tasks
    assert path.stat().st_size > 2_500_000
    out = tmp_path / "results.jsonl"
    cmd = [sandpit, "batch", str(path), "--out", str(out), "--socket", daemon, "--concurrency", "2"]
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak_kib = 0
    for _ in range(2400):
        try:
            rss = [l for l in open(f"/proc/{p.pid}/status") if l.startswith("VmRSS:")]
            peak_kib = max(peak_kib, int(rss[0].split()[1])) if rss else peak_kib
        except OSError:
            pass
        if out.exists() and len(out.read_text().splitlines()) >= 100:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err
    first = [json.loads(l) for l in out.read_text().splitlines() if l.strip()]
    assert 100 <= len(first) < 500
    r = subprocess.run(cmd + ["--resume"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr
    assert "concurrency 2" in r.stdout, r.stdout
    results = [json.loads(l) for l in out.read_text().splitlines() if l.strip()]
    ids = [x["id"] for x in results]
    assert len(ids) == 2500 and len({json.dumps(i) for i in ids}) == 2500, "every task exactly once"
    for x in results:
        i = x["index"]
        assert x["id"] == (i if i % 2 == 0 else f"t-{i}"), x   # an integer id stays an integer
        assert x["status"] == "passed", x
    print(f"batch CLI peak RSS while running 2,500 tasks: {peak_kib // 1024} MiB")
    assert peak_kib < 128 << 10, f"the batch process grew to {peak_kib // 1024} MiB"


def test_batch_reports_a_bad_line_with_its_file_and_line(sandpit, daemon, tmp_path):
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"id": 1, "cmd": "true"}\n\n{"id": 2, "cmd": "true"\n')
    r = subprocess.run([sandpit, "batch", str(path), "--out", str(tmp_path / "o.jsonl"), "--socket", daemon],
                       stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and f"{path}:3:" in r.stderr, r.stderr
    assert not (tmp_path / "o.jsonl").exists() or (tmp_path / "o.jsonl").read_text() == "", "nothing ran"


def test_batch_verdicts_name_the_limit_a_task_ran_into(client):
    seen = []
    tasks = [{"id": "disk", "cmd": "head -c 64M /dev/zero > big"},
             {"id": "forks", "cmd": "for i in $(seq 100); do sleep 2 & done; wait; exit 0", "timeoutMs": 20000},
             {"id": "fine", "cmd": "echo ok"}]
    client.batch(tasks, concurrency=2, limits={"diskBytes": 16 << 20, "pids": 32}, on_result=seen.append)
    by = {r["id"]: r for r in seen}
    assert by["disk"]["status"] == "failed" and by["disk"]["reason"].startswith("disk_full:"), by["disk"]
    assert by["forks"]["reason"].startswith("pids_limit:"), by["forks"]
    assert by["fine"]["status"] == "passed" and by["fine"].get("reason") is None
    assert [by[k]["index"] for k in ("disk", "forks", "fine")] == [0, 1, 2]
