"""``cxrnet.command``: one config location, the run-directory resolvers, and one way to open a checkpoint's split."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hydra import compose, initialize
from omegaconf import DictConfig

from cxrnet.command import CONFIG_PATH, open_split, register_resolvers

from inference_helpers import tiny_checkpoint

__all__ = ["tiny_checkpoint"]  # a fixture, used by name

PACKAGE = Path(__file__).resolve().parents[1] / "cxrnet"
TINY_SPLIT = ["data.options.n_train=4", "data.options.n_val=4", "data.options.n_test=4"]


def compose_config(name: str, *overrides: str, hydra: bool = False) -> DictConfig:
    register_resolvers()
    with initialize(config_path=CONFIG_PATH, version_base="1.3"):
        return compose(config_name=name, overrides=list(overrides), return_hydra_config=hydra)


def test_every_hydra_main_reads_the_one_config_path() -> None:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "hydra.main":
                found[path.relative_to(PACKAGE).as_posix()] = next(
                    ast.unparse(k.value) for k in node.keywords if k.arg == "config_path"
                )
    assert len(found) == 7, sorted(found)  # train, predict, evaluate, calibrate, export, explain/evaluate, serve
    assert set(found.values()) == {"CONFIG_PATH"}, found


@pytest.mark.parametrize(
    ("overrides", "run_dir"),
    [((), "."), (("output_dir=out/explain",), "out/explain")],
)
def test_explain_evaluate_runs_in_its_output_dir_or_in_place(
    overrides: tuple[str, ...], run_dir: str
) -> None:
    cfg = compose_config("explain_evaluate", *overrides, hydra=True)
    assert cfg.hydra.run.dir == run_dir


def test_export_runs_in_the_folder_of_its_output_file() -> None:
    cfg = compose_config("export", "checkpoint=x.ckpt", "output=models/cxrnet.onnx", hydra=True)
    assert cfg.hydra.run.dir == "models"


def test_a_missing_checkpoint_says_how_to_fix() -> None:
    cfg = compose_config("evaluate", "output_dir=out", *TINY_SPLIT)
    with pytest.raises(ValueError, match=r"add checkpoint=<file\.ckpt>"):
        open_split(cfg)


def test_an_unknown_split_lists_the_valid_ones(tiny_checkpoint: Path) -> None:
    cfg = compose_config(
        "calibrate", f"checkpoint={tiny_checkpoint}", "output=x.ckpt", "split=tset", *TINY_SPLIT
    )
    with pytest.raises(ValueError, match=r"split='tset' is not one of \['test', 'train', 'val'\]"):
        open_split(cfg)


def test_the_split_is_prepared_for_the_checkpoint(tiny_checkpoint: Path) -> None:
    cfg = compose_config(
        "evaluate", f"checkpoint={tiny_checkpoint}", "output_dir=o", "data.image_size=128", *TINY_SPLIT
    )
    opened = open_split(cfg)
    assert opened.data.image_size == 64  # the checkpoint's size, not the command line's
    assert opened.name == "the test split of data=synthetic" and len(opened.dataset) == 4
    assert opened.dataset[0]["image"].shape == (1, 64, 64)
    assert opened.precision in ("32-true", "bf16-mixed")
