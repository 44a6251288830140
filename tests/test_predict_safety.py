"""Batch prediction that two processes cannot corrupt and no odd path can hang: the output-folder lock,
resolved input paths, unwritable output folders, FIFOs and devices."""

from __future__ import annotations

import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module
from omegaconf import DictConfig

import cxrnet.output_lock
from cxrnet.data.images import ImageReadError
from cxrnet.inference import load_model
from cxrnet.output_lock import LOCK_NAME, OutputFolderBusyError, OutputFolderError, locked_output_folder
from cxrnet.predict import predict
from cxrnet.predict_files import resolve_inputs

from inference_helpers import radiograph, tiny_checkpoint, write_png

__all__ = ["tiny_checkpoint"]  # a fixture, used by name

N_IMAGES = 4


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of four small PNG radiographs."""
    folder = tmp_path_factory.mktemp("images")
    for i in range(N_IMAGES):
        write_png(folder / f"cxr{i}.png", radiograph(40, 36, seed=i))
    return folder


def compose_predict(
    checkpoint: Path, input: Path | str | list[str], output_dir: Path, *overrides: str
) -> DictConfig:
    spec = input if isinstance(input, (str, Path)) else "[" + ",".join(input) + "]"
    with initialize_config_module(config_module="cxrnet.conf", version_base="1.3"):
        return compose(
            config_name="predict",
            overrides=[
                f"checkpoint={checkpoint}",
                f"input={spec}",
                f"output_dir={output_dir}",
                "progress=false",
                "overlays=false",
                *overrides,
            ],
        )


def rows_of(out: Path) -> list[dict[str, str]]:
    with (out / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    records = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert [r["path"] for r in rows] == [r["path"] for r in records], "CSV and JSONL disagree"
    assert len({r["path"] for r in rows}) == len(rows), "duplicate rows"
    return rows


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Fail instead of hanging: SIGALRM interrupts a blocking open() of a FIFO with an exception."""

    def expire(signum: int, frame: object) -> None:
        raise TimeoutError(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# ----------------------------------------------------------------------------------- one writer per folder


def test_a_second_predict_on_a_busy_folder_is_refused_naming_the_first(
    tiny_checkpoint: Path, images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with locked_output_folder(out, owner="cxrnet.predict"):  # another run holds the folder
        with pytest.raises(
            OutputFolderBusyError,
            match=re.escape(f"another cxrnet.predict is writing to {out} (pid {os.getpid()})"),
        ) as caught:
            predict(compose_predict(tiny_checkpoint, images, out))
        assert caught.value.pid == os.getpid()
        assert not (out / "predictions.csv").exists(), "the refused run wrote nothing"
    summary = predict(compose_predict(tiny_checkpoint, images, out))  # released: the folder is free again
    assert summary["n_ok"] == N_IMAGES and len(rows_of(out)) == N_IMAGES
    assert (out / LOCK_NAME).is_file()


def test_lock_wait_waits_for_the_first_run_and_then_skips_its_rows(
    tiny_checkpoint: Path, images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    predict(compose_predict(tiny_checkpoint, images, out))
    waiting = threading.Event()
    real_sleep = cxrnet.output_lock.time.sleep

    def sleep(seconds: float) -> None:
        waiting.set()  # the second run found the folder busy and is waiting for it
        real_sleep(seconds)

    monkeypatch.setattr(cxrnet.output_lock.time, "sleep", sleep)
    results: dict[str, object] = {}

    def second_run() -> None:
        try:
            results["summary"] = predict(compose_predict(tiny_checkpoint, images, out, "lock_wait=60"))
        except BaseException as err:  # reported by the main thread
            results["error"] = err

    with locked_output_folder(out):
        thread = threading.Thread(target=second_run)
        thread.start()
        assert waiting.wait(60), "the second run did not wait for the lock"
        assert "summary" not in results and "error" not in results
    thread.join(120)
    assert "error" not in results, results.get("error")
    summary = results["summary"]
    assert (summary["n_ok"], summary["n_skipped"]) == (0, N_IMAGES)
    assert len(rows_of(out)) == N_IMAGES


def test_a_bad_lock_wait_names_the_option(tiny_checkpoint: Path, images: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"lock_wait=-1 must be a number of seconds >= 0"):
        predict(compose_predict(tiny_checkpoint, images, tmp_path / "out", "lock_wait=-1"))


def _predict_command(checkpoint: Path, images: Path, out: Path, *overrides: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "cxrnet.predict",
        f"checkpoint={checkpoint}",
        f"input={images}",
        f"output_dir={out}",
        "overlays=false",
        "num_threads=1",
        *overrides,
    ]


ENV = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_WAIT_POLICY": "PASSIVE"}


@pytest.mark.slow
def test_two_concurrent_command_line_runs_on_one_folder(
    tiny_checkpoint: Path, images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    # Refused at once while another run holds the folder: one line naming it, exit 1, no traceback.
    with locked_output_folder(out):
        refused = subprocess.run(
            _predict_command(tiny_checkpoint, images, out),
            capture_output=True,
            text=True,
            env=ENV,
            timeout=300,
        )
    assert refused.returncode == 1
    assert f"cxrnet.predict: another cxrnet.predict is writing to {out} (pid {os.getpid()})" in refused.stderr
    assert "Traceback" not in refused.stderr + refused.stdout
    # Two runs started together, both willing to wait: one predicts everything, the other skips it all.
    runs = [
        subprocess.Popen(
            _predict_command(tiny_checkpoint, images, out, "lock_wait=300"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=ENV,
        )
        for _ in range(2)
    ]
    logs = [run.communicate(timeout=300)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], logs
    done = sorted(line.split("done: ")[1] for log in logs for line in log.splitlines() if "done: " in line)
    assert done[0].startswith(f"0 ok, 0 error, {N_IMAGES} skipped"), done
    assert done[1].startswith(f"{N_IMAGES} ok, 0 error, 0 skipped"), done
    assert len(rows_of(out)) == N_IMAGES


# ----------------------------------------------------------------------------------- resolved input paths


def test_a_folder_reached_through_a_symlink_is_not_predicted_again(
    tiny_checkpoint: Path, images: Path, tmp_path: Path
) -> None:
    real = tmp_path / "real"
    shutil.copytree(images, real)
    (real / "alias.png").symlink_to(real / "cxr0.png")  # the same file under a second name
    link = tmp_path / "link"
    link.symlink_to(real, target_is_directory=True)
    out = tmp_path / "out"

    paths, _ = resolve_inputs([str(real), str(link)])
    assert paths == sorted(p.resolve() for p in real.glob("cxr*.png"))
    first = predict(compose_predict(tiny_checkpoint, [str(real), str(link)], out))
    assert (first["n_inputs"], first["n_ok"]) == (N_IMAGES, N_IMAGES)
    assert {r["path"] for r in rows_of(out)} == {str(p) for p in paths}
    again = predict(compose_predict(tiny_checkpoint, link, out))  # the same folder under another name
    assert (again["n_ok"], again["n_skipped"]) == (0, N_IMAGES)
    assert len(rows_of(out)) == N_IMAGES


def test_rows_written_under_unresolved_paths_still_count_as_done(
    tiny_checkpoint: Path, images: Path, tmp_path: Path
) -> None:
    """Outputs of runs from before inputs were resolved name files by the path given (here: via a symlink)."""
    link = tmp_path / "link"
    link.symlink_to(images, target_is_directory=True)
    out = tmp_path / "out"
    predict(compose_predict(tiny_checkpoint, images, out))
    for name in ("predictions.csv", "predictions.jsonl"):
        path = out / name
        path.write_text(path.read_text().replace(str(images), str(link)))
    assert all(r["path"].startswith(str(link)) for r in rows_of(out))
    again = predict(compose_predict(tiny_checkpoint, link, out))
    assert (again["n_ok"], again["n_skipped"]) == (0, N_IMAGES)
    assert len(rows_of(out)) == N_IMAGES


# ----------------------------------------------------------------------------------- FIFOs and devices


def test_a_fifo_or_a_device_is_refused_without_blocking(
    tiny_checkpoint: Path, images: Path, tmp_path: Path
) -> None:
    fifos = [tmp_path / "pipe.png", tmp_path / "pipe.dcm", tmp_path / "pipe"]
    for fifo in fifos:
        os.mkfifo(fifo)
    model = load_model(tiny_checkpoint)
    with deadline(30):
        for path in [*fifos, Path("/dev/zero")]:
            with pytest.raises(ImageReadError, match="is not a regular file"):
                model.predict(str(path))
        results = list(model.predict_files([fifos[0], images / "cxr0.png", Path("/dev/zero")]))
        assert [r.prediction is None for r in results] == [True, False, True]
        assert all("not a regular file" in r.error for r in results if r.prediction is None)
        with pytest.raises(ValueError, match="is not a regular file or a folder"):
            resolve_inputs(str(fifos[0]))
        # A FIFO inside an input folder is not an image file: it is left out, and the run does not block.
        mixed = tmp_path / "mixed"
        shutil.copytree(images, mixed)
        os.mkfifo(mixed / "pipe.png")
        summary = predict(compose_predict(tiny_checkpoint, mixed, tmp_path / "out"))
    assert (summary["n_inputs"], summary["n_ok"]) == (N_IMAGES, N_IMAGES)


# ----------------------------------------------------------------------------------- unwritable output folders


def test_an_output_dir_that_is_a_file_is_refused_before_loading_the_model(
    images: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.write_text("not a folder")
    with pytest.raises(OutputFolderError, match=re.escape(f"output folder {out} is a file, not a folder")):
        predict(compose_predict(tmp_path / "no-such.ckpt", images, out))  # the checkpoint is never opened


def _read_only(folder: Path, command: list[str]) -> list[str]:
    """``command``, run where ``folder`` cannot be written: by permissions, or (as root, whom permissions do
    not stop) under a private read-only bind mount that no other process sees."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return command
    private = ["unshare", "-m", "--propagation", "private"]
    if shutil.which("unshare") is None or subprocess.run([*private, "true"], capture_output=True).returncode:
        pytest.skip("running as root without mount namespaces: no way to make a folder read-only")
    script = 'mount --bind "$0" "$0" && mount -o remount,bind,ro "$0" "$0" && exec "$@"'
    return [*private, "sh", "-c", script, str(folder), *command]


@pytest.mark.slow
@pytest.mark.parametrize("below", ["", "new/deeper"], ids=["existing", "to-be-created"])
def test_a_read_only_output_folder_gives_one_line_naming_it(
    below: str, tiny_checkpoint: Path, images: Path, tmp_path: Path
) -> None:
    locked = tmp_path / "read-only"
    out = locked / below if below else locked
    command = _read_only(locked, _predict_command(tiny_checkpoint, images, out))
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=ENV, timeout=300)
    finally:
        locked.chmod(0o755)
    assert done.returncode == 1, done.stderr
    reason = "Read-only file system" if os.geteuid() == 0 else "Permission denied"
    assert done.stderr.strip().splitlines() == [
        f"cxrnet.predict: cannot write to output folder {out} ({reason}); choose a writable output_dir, or "
        "make this folder writable"
    ]
    assert "Traceback" not in done.stdout
