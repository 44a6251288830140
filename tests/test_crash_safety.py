"""Nothing lost: atomic checkpoints, clear errors for damaged ones, appended logs, exact resume, same seed.

The slow tests kill ``python -m cxrnet.train`` with SIGKILL at a known point (tests/crash_helpers.py blocks
the run there), resume it from ``last.ckpt`` and require the final weights and ``metrics.csv`` to equal those
of a run that was never interrupted.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from cxrnet.callbacks import AtomicCheckpointIO, ResumableCSVLogger
from cxrnet.checkpoint import CheckpointError, atomic_write, check_checkpoint_file, read_checkpoint
from cxrnet.data.dataset import CXRDataset, collate
from cxrnet.data.records import RawItem
from cxrnet.data.transforms import Preprocessing, build_augmentation
from cxrnet.train import train

from conftest import TINY_MODEL

TESTS = Path(__file__).parent

# --------------------------------------------------------------------------------- atomic writes


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "last.ckpt"
    atomic_write(target, lambda handle: handle.write(b"old"))

    def broken(handle: object) -> None:
        handle.write(b"half of the new")  # type: ignore[attr-defined]
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]


def test_temporaries_of_killed_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    import socket

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    orphan = tmp_path / f".last.ckpt.partial-{host}-{dead.pid}-0a1b2c3d"
    alive = tmp_path / f".last.ckpt.partial-{host}-{os.getpid()}-0a1b2c3d"  # a writer that still runs
    other = tmp_path / f".best.ckpt.partial-{host}-{dead.pid}-0a1b2c3d"  # another file's: not touched
    for path in (orphan, alive, other):
        path.write_bytes(b"x" * 100)
    atomic_write(tmp_path / "last.ckpt", lambda handle: handle.write(b"new"))
    assert not orphan.exists() and alive.exists() and other.exists()


def test_checkpoint_io_writes_in_the_destination_folder_not_tmpdir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmpdir))
    seen: list[str] = []

    class Spy(AtomicCheckpointIO):
        def write(self, checkpoint: dict, handle: object) -> None:
            seen.append(handle.name)  # type: ignore[attr-defined]
            super().write(checkpoint, handle)  # type: ignore[arg-type]

    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    Spy().save_checkpoint({"state_dict": {"w": torch.ones(3)}}, target)
    assert Path(seen[0]).parent == target.parent and not list(tmpdir.iterdir())
    assert torch.equal(AtomicCheckpointIO().load_checkpoint(target)["state_dict"]["w"], torch.ones(3))


@pytest.mark.parametrize("damage", ["empty", "truncated"])
def test_a_damaged_checkpoint_is_refused_naming_the_file(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1000)}}, path)
    data = path.read_bytes()
    path.write_bytes(b"" if damage == "empty" else data[: len(data) // 2])
    expected = "empty" if damage == "empty" else "truncated"
    for load in (check_checkpoint_file, read_checkpoint, AtomicCheckpointIO().load_checkpoint):
        with pytest.raises(CheckpointError, match=rf"{path}.*{expected}"):
            load(path)


def test_resuming_from_an_empty_checkpoint_fails_at_once_with_its_name(
    tiny_train_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    empty = tmp_path / "last.ckpt"
    empty.touch()
    cfg = tiny_train_cfg(f"ckpt_path={empty}")
    with pytest.raises(CheckpointError, match=rf"{empty} is empty"):
        train(cfg)
    assert not Path(cfg.output_dir).exists()  # refused before any data, model or trainer was built


# ------------------------------------------------------------------------------------------ logs


def test_csv_logger_appends_and_replaces_only_the_redone_rows(tmp_path: Path) -> None:
    first = ResumableCSVLogger(tmp_path, name="logs", version="")
    for step in range(6):
        first.log_metrics({"loss": float(step), "epoch": step // 3}, step=step)
    first.save()
    with open(tmp_path / "logs" / "metrics.csv", "a") as handle:
        handle.write("0.5,")  # the kill cut the last append short
    # The crash came after step 5; the last checkpoint was at step 3, so the resumed run logs 3 again.
    second = ResumableCSVLogger(tmp_path, name="logs", version="")
    second.log_metrics({"loss": 30.0, "epoch": 1, "new_metric": 1.0}, step=3)
    second.log_metrics({"loss": 40.0, "epoch": 1}, step=4)
    second.save()
    with open(tmp_path / "logs" / "metrics.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["step"], row["loss"]) for row in rows] == [
        ("0", "0.0"),
        ("1", "1.0"),
        ("2", "2.0"),
        ("3", "30.0"),
        ("4", "40.0"),
    ]
    assert rows[3]["new_metric"] == "1.0" and rows[0]["new_metric"] == ""


# ----------------------------------------------------------------------------- reproducibility

TINY_RUN = [
    "data.image_size=64",
    "data.batch_size=8",
    "data.options.n_train=32",
    "data.options.n_val=16",
    "data.options.n_test=16",
    "trainer.max_epochs=3",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "test=false",
    *TINY_MODEL,
]


def _augmented_dataset(n: int = 6) -> CXRDataset:
    rng = np.random.default_rng(0)
    items = [
        RawItem(
            rng.random((64, 64), dtype=np.float32),
            meta={"path": f"x{i}", "patient_id": f"p{i}", "source": "t"},
        )
        for i in range(n)
    ]
    return CXRDataset(
        items, ["normal"], Preprocessing(image_size=64), transform=build_augmentation("default")
    )


def _images(dataset: CXRDataset, num_workers: int = 0) -> torch.Tensor:
    loader = DataLoader(dataset, batch_size=2, num_workers=num_workers, collate_fn=collate)
    return torch.cat([batch["image"] for batch in loader])


def test_augmentation_is_a_function_of_seed_epoch_and_index() -> None:
    first, second = _augmented_dataset(), _augmented_dataset()
    first.set_epoch(3, seed=7)
    second.set_epoch(3, seed=7)
    reference = _images(first)
    assert torch.equal(reference, _images(second))  # another pipeline instance, same draws
    assert torch.equal(reference, _images(first))  # reading again does not advance anything
    backwards = torch.stack([second[i]["image"] for i in reversed(range(len(second)))]).flip(0)
    assert torch.equal(reference, backwards)  # independent of the order the sampler draws in
    second.set_epoch(4, seed=7)
    assert not torch.equal(reference, _images(second))  # a new epoch draws anew
    second.set_epoch(3, seed=8)
    assert not torch.equal(reference, _images(second))  # and so does another seed


def test_persistent_dataloader_workers_follow_the_epoch() -> None:
    dataset = _augmented_dataset()
    expected = {}
    for epoch in (0, 1):
        dataset.set_epoch(epoch, seed=7)
        expected[epoch] = _images(dataset)
    dataset.set_epoch(0, seed=7)
    loader = DataLoader(dataset, batch_size=2, num_workers=2, persistent_workers=True, collate_fn=collate)
    for epoch in (0, 1):
        dataset.set_epoch(epoch, seed=7)  # the workers were started at epoch 0 and are reused
        assert torch.equal(torch.cat([batch["image"] for batch in loader]), expected[epoch])


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = _weights(a), _weights(b)
    assert wa.keys() == wb.keys()
    differing = [key for key in wa if not torch.equal(wa[key], wb[key])]
    assert not differing, f"{len(differing)} of {len(wa)} tensors differ, e.g. {differing[:3]}"


def _metrics_rows(run: Path) -> list[dict[str, str]]:
    with open(run / "logs" / "metrics.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_same_seed_gives_identical_weights_with_default_augmentation(tmp_path: Path) -> None:
    from conftest import compose_train

    runs = []
    for name in ("a", "b"):
        train(
            compose_train(
                [*TINY_RUN, "trainer.max_epochs=2", "data.augment=default", "logger=none"], tmp_path / name
            )
        )
        runs.append(tmp_path / name)
    _assert_same_weights(*runs)
    # and the augmentation does change the images (a run without it ends elsewhere)
    cfg = compose_train(
        [*TINY_RUN, "trainer.max_epochs=2", "data.augment=none", "logger=none"], tmp_path / "c"
    )
    train(cfg)
    with pytest.raises(AssertionError, match="tensors differ"):
        _assert_same_weights(runs[0], tmp_path / "c")


def _train_command(run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cxrnet.train", *TINY_RUN, f"hydra.run.dir={run}", *extra]


def _env(tmpdir: Path | None = None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])}
    env.update(OMP_WAIT_POLICY="PASSIVE", PYTHONWARNINGS="ignore")
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    return env


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> None:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]


def _run_and_kill(command: list[str], cwd: Path, env: dict[str, str], marker: Path) -> str:
    """Start a training run, wait until it blocks at the injected point, then SIGKILL it (and its workers)."""
    process = subprocess.Popen(
        command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():
            if process.poll() is not None:
                raise AssertionError(f"the run ended before the kill point: {process.stderr.read()[-3000:]}")
            assert time.monotonic() < deadline, "the run never reached the kill point"
            time.sleep(0.05)
        time.sleep(0.2)  # let the marker's writer reach its sleep
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the group of the process started above: it and its workers
        process.wait()
        process.stderr.close()
    return marker.read_text()


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """An uninterrupted run per configuration, trained once for the module."""
    runs: dict[tuple[str, ...], Path] = {}

    def get(*overrides: str) -> Path:
        if overrides not in runs:
            run = tmp_path_factory.mktemp("uninterrupted") / "run"
            _run(_train_command(run, *overrides), run.parent, _env())
            runs[overrides] = run
        return runs[overrides]

    return get


@pytest.mark.slow
@pytest.mark.parametrize(
    "overrides",
    [
        ("data.augment=none",),
        ("data.augment=default",),
        ("data.augment=default", "data.num_workers=2"),
        ("data.augment=default", "data.num_workers=2", "trainer.num_sanity_val_steps=0"),
        ("data.augment=default", "data.num_workers=2", "data.balanced_sampling=true"),
    ],
    ids=[
        "augment=none",
        "augment=default",
        "default+2-workers",
        "default+2-workers+no-sanity-check",
        "default+2-workers+balanced-sampling",
    ],
)
def test_kill_mid_epoch_then_resume_equals_an_uninterrupted_run(
    tmp_path: Path, uninterrupted: Callable[..., Path], overrides: tuple[str, ...]
) -> None:
    reference = uninterrupted(*overrides)
    run, marker = tmp_path / "run", tmp_path / "killed-here"
    pause = [
        "+callbacks.pause._target_=crash_helpers.PauseAtBatch",
        "+callbacks.pause.epoch=1",
        "+callbacks.pause.batch=2",
        f"+callbacks.pause.marker={marker}",
    ]
    _run_and_kill(_train_command(run, *overrides, *pause), tmp_path, _env(), marker)
    assert any(row["epoch"] == "0" for row in _metrics_rows(run))  # epoch 0 was logged before the kill
    assert read_checkpoint(run / "checkpoints" / "last.ckpt")["epoch"] == 0  # epoch 1 never finished
    _run(_train_command(run, *overrides, f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"), tmp_path, _env())
    _assert_same_weights(run, reference)
    # Epoch 0's rows kept (not wiped), the interrupted epoch's rows not doubled: the uninterrupted run's file.
    assert _metrics_rows(run) == _metrics_rows(reference)


@pytest.mark.slow
def test_kill_during_checkpoint_save_with_tmpdir_elsewhere_then_resume(
    tmp_path: Path, uninterrupted: Callable[..., Path]
) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on another file system than the test's folder")
    reference = uninterrupted("data.augment=default")
    tmpdir = shm / f"cxrnet-test-{os.getpid()}-{tmp_path.name}"
    tmpdir.mkdir()
    run, marker = tmp_path / "run", tmp_path / "killed-here"
    try:
        plugin = (
            f"trainer.plugins=[{{_target_:crash_helpers.PauseInSave,name:last.ckpt,nth:2,marker:'{marker}'}}]"
        )
        said = _run_and_kill(
            _train_command(run, "data.augment=default", plugin), tmp_path, _env(tmpdir), marker
        )
        assert "half-way through save 2 of last.ckpt" in said
        checkpoints = run / "checkpoints"
        # The old last.ckpt (epoch 0) is whole; the half-written new one is a temporary beside it, not in
        # TMPDIR.
        assert read_checkpoint(checkpoints / "last.ckpt")["epoch"] == 0
        partial = [p for p in checkpoints.iterdir() if p.name.startswith(".last.ckpt.partial-")]
        assert len(partial) == 1 and partial[0].stat().st_size > 1_000_000
        assert not [p for p in tmpdir.rglob("*") if p.is_file() and p.stat().st_size > 1_000_000]
        _run(
            _train_command(run, "data.augment=default", f"ckpt_path={checkpoints / 'last.ckpt'}"),
            tmp_path,
            _env(tmpdir),
        )
    finally:
        import shutil

        shutil.rmtree(tmpdir, ignore_errors=True)
    _assert_same_weights(run, reference)
    assert _metrics_rows(run) == _metrics_rows(reference)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best.ckpt",
        "last.ckpt",
    ]  # orphan gone


@pytest.mark.slow
def test_last_checkpoint_is_every_epoch_and_best_is_the_best_score(
    tiny_train_cfg: Callable[..., DictConfig],
) -> None:
    cfg = tiny_train_cfg("logger=csv", "test=true", n_train=16, epochs=3)
    metrics = train(cfg)
    run = Path(cfg.output_dir)
    checkpoints = run / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]
    assert read_checkpoint(checkpoints / "last.ckpt")["epoch"] == 2  # the final epoch, whatever its score
    scores = [(float(r["val/score"]), int(r["epoch"])) for r in _metrics_rows(run) if r.get("val/score")]
    assert len(scores) == 3
    best_epoch = max(scores, key=lambda item: (item[0], -item[1]))[1]  # the first of equal scores is kept
    assert read_checkpoint(checkpoints / "best.ckpt")["epoch"] == best_epoch
    assert metrics and all(key.startswith(("test/", "run/")) for key in metrics)


def test_the_best_checkpoint_is_the_monitoring_callbacks_whatever_the_order(tmp_path: Path) -> None:
    from types import SimpleNamespace

    from cxrnet.train import best_checkpoint

    last = SimpleNamespace(monitor=None, best_model_path=str(tmp_path / "last.ckpt"))
    best = SimpleNamespace(monitor="val/score", best_model_path=str(tmp_path / "best.ckpt"))
    for order in ([last, best], [best, last]):
        assert best_checkpoint(SimpleNamespace(checkpoint_callbacks=order)) == str(tmp_path / "best.ckpt")
    assert best_checkpoint(SimpleNamespace(checkpoint_callbacks=[last])) == str(tmp_path / "last.ckpt")
    assert best_checkpoint(SimpleNamespace(checkpoint_callbacks=[])) == ""
