"""The training sections of ``benchmarks/run.py`` (P1, P2, P5, ref) and what every section shares.

Each section function takes a :class:`Context` and returns a JSON-ready dict with at least ``"model"`` and
``"ratios"`` (name → :func:`_rounds.ratio` entry).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from hydra.utils import instantiate

from _rounds import Arm, Target, interleave, ratio, series
from _training import (
    BareLoop,
    LightningLoop,
    Matmul,
    TrainingSetup,
    cxrnet_loss,
    plain_unet,
    training_setup,
    unet_loss,
)

FLOAT32 = "32-true"
QUICKSTART = ["+experiment=quickstart"]
MATMUL_DTYPES = {"32-true": torch.float32, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


@dataclass(frozen=True)
class Sizes:
    """How much each section measures.

    Attributes:
        train_overrides: Hydra overrides of the quickstart setup (on top of ``+experiment=quickstart``).
        n_batches: preloaded training batches, cycled.
        reference_overrides: Hydra overrides of the issue's reference setup.
        rounds: rounds of P2 and P5.
        framework_rounds: rounds of P1 (one Lightning fit per arm and round).
        framework_warmup: untimed steps at the start of each P1 measurement (>= 1).
        framework_steps: timed steps of each P1 measurement.
        warmup_steps: untimed steps per bare-loop measurement in P2, P3 and P5.
        steps: timed steps per bare-loop measurement in P2, P3 and P5.
        loader_items: items of P3's full-size folders.
        full_size: side of P3's images, in pixels.
        loader_rounds: rounds of P3.
        cached_epochs: epochs per measurement of the cached loader (an epoch of it is too short to time).
        predict_files: files of P4's folder.
        predict_chunk: files per P4 round (P4 has ``predict_files // predict_chunk`` rounds).
        distinct_phantoms: different images among P4's files.
        reference_rounds: rounds of the reference.
        reference_steps: timed steps per reference measurement.
        matmul_n: side of P2's square matrices.
    """

    train_overrides: tuple[str, ...]
    n_batches: int
    reference_overrides: tuple[str, ...]
    rounds: int
    framework_rounds: int
    framework_warmup: int
    framework_steps: int
    warmup_steps: int
    steps: int
    loader_items: int
    full_size: int
    loader_rounds: int
    cached_epochs: int
    predict_files: int
    predict_chunk: int
    distinct_phantoms: int
    reference_rounds: int
    reference_steps: int
    matmul_n: int


@dataclass
class Context:
    """What the sections share: sizes, the two precisions, a scratch folder and the quickstart setup."""

    sizes: Sizes
    tmp: Path
    precisions: list[str]
    _quickstart: TrainingSetup | None = field(default=None, repr=False)

    @property
    def default(self) -> str:
        """The default precision (``precisions`` is ``[32-true]`` or ``[32-true, default]``)."""
        return self.precisions[-1]

    def quickstart(self) -> TrainingSetup:
        if self._quickstart is None:
            overrides = [*QUICKSTART, *self.sizes.train_overrides]
            self._quickstart = training_setup(overrides, self.tmp / "quickstart", self.sizes.n_batches)
        return self._quickstart

    def bare(self, setup: TrainingSetup, precision: str, **kwargs: Any) -> BareLoop:
        """A bare loop of CXRNet on a fresh copy of the setup's network, with the config's loss."""
        loss = cxrnet_loss(instantiate(setup.cfg.loss, _convert_="all"))
        return BareLoop(copy.deepcopy(setup.net), loss, setup, precision, **kwargs)


def protocol(rounds: int, warmup: int, steps: int) -> dict[str, int]:
    return {"rounds": rounds, "warmup_steps_per_round": warmup, "timed_steps_per_round": steps}


def speedups(values: dict[str, list[float]], units: dict[str, str], arm: str, ctx: Context) -> dict[str, Any]:
    """``arm/<float32>`` time over ``arm/<default>`` time: how much faster the default precision is."""
    if ctx.default == FLOAT32:
        return {}
    return {
        f"speedup_default_over_float32/{arm}": ratio(
            values,
            units,
            f"{arm}/{FLOAT32}",
            f"{arm}/{ctx.default}",
            meaning=f"{arm} time per step at float32 / at {ctx.default}: > 1 when the default is faster",
        )
    }


# ----------------------------------------------------------------------------------- sections


def p1_framework(ctx: Context) -> dict[str, Any]:
    """P1: the module through a Lightning Trainer / a bare loop, step time at each precision."""
    setup, sizes = ctx.quickstart(), ctx.sizes
    arms: dict[str, Arm] = {}
    for precision in ctx.precisions:
        lightning = LightningLoop(setup, precision, ctx.tmp / f"p1-{precision}")
        bare = ctx.bare(setup, precision)
        arms[f"lightning/{precision}"] = Arm(
            "s/step",
            lambda loop=lightning: loop.seconds_per_step(sizes.framework_warmup, sizes.framework_steps),
        )
        arms[f"bare/{precision}"] = Arm(
            "s/step", lambda loop=bare: loop.seconds_per_step(sizes.framework_warmup, sizes.framework_steps)
        )
    values = interleave(arms, sizes.framework_rounds, warmup=False)  # each fit has its own warm-up steps
    units = {name: arm.unit for name, arm in arms.items()}
    ratios = {
        f"lightning_over_bare/{p}": ratio(
            values,
            units,
            f"lightning/{p}",
            f"bare/{p}",
            Target("<=", 1.05),
            "Trainer step time / bare loop step time (same net, batches, loss, optimiser, clipping)",
        )
        for p in ctx.precisions
    }
    ratios |= speedups(values, units, "lightning", ctx) | speedups(values, units, "bare", ctx)
    return {
        "model": setup.describe(),
        "trainer": {
            "log_every_n_steps": int(setup.cfg.trainer.log_every_n_steps),
            "loggers": [str(node._target_) for node in (setup.cfg.get("logger") or {}).values() if node],
            "callbacks": [type(c).__name__ for c in LightningLoop(setup, FLOAT32, ctx.tmp).callbacks()],
            "left_out": "validation, checkpoint callbacks, progress bar, model summary (epoch end, terminal)",
        },
        "protocol": {
            **protocol(sizes.framework_rounds, sizes.framework_warmup, sizes.framework_steps),
            "one_fit_per_round": True,
        },
        "ratios": ratios,
    }


def p2_flops(ctx: Context) -> dict[str, Any]:
    """P2: training FLOP/s (counted) / dense matmul FLOP/s, at each precision."""
    setup, sizes = ctx.quickstart(), ctx.sizes
    loops = {p: ctx.bare(setup, p) for p in ctx.precisions}
    flops = loops[FLOAT32].flops()
    torch_flops = loops[FLOAT32].flops(corrected=False)
    arms: dict[str, Arm] = {}
    for precision, loop in loops.items():
        arms[f"step/{precision}"] = Arm(
            "s/step", lambda loop=loop: loop.seconds_per_step(sizes.warmup_steps, sizes.steps)
        )
        matmul = Matmul(MATMUL_DTYPES[precision], sizes.matmul_n)
        arms[f"matmul/{precision}"] = Arm("GFLOP/s", lambda m=matmul: m.flops_per_second() / 1e9)
    values = interleave(arms, sizes.rounds)
    units = {name: arm.unit for name, arm in arms.items()}
    for precision in ctx.precisions:
        values[f"training/{precision}"] = [flops / t / 1e9 for t in values[f"step/{precision}"]]
        units[f"training/{precision}"] = "GFLOP/s"
    ratios = {
        f"utilisation/{p}": ratio(
            values,
            units,
            f"training/{p}",
            f"matmul/{p}",
            meaning=f"training step FLOP/s / {sizes.matmul_n}² matmul FLOP/s, both at {p}",
        )
        for p in ctx.precisions
    }
    return {
        "model": setup.describe(),
        "flops_per_step": flops,
        "flops_counted": "torch.utils.flop_counter.FlopCounterMode, forward + loss + backward of one batch, "
        "convolution backward counted as the forward's FLOPs per gradient (_training.conv_backward_flops)",
        "flops_per_step_torch_formula": torch_flops,
        "matmul": {"n": sizes.matmul_n, "dtypes": {p: str(MATMUL_DTYPES[p]) for p in ctx.precisions}},
        "step_times": {p: series(values[f"step/{p}"], "s/step") for p in ctx.precisions},
        "protocol": protocol(sizes.rounds, sizes.warmup_steps, sizes.steps),
        "ratios": ratios,
    }


def p5_plain_unet(ctx: Context) -> dict[str, Any]:
    """P5: CXRNet training step / a plain smp U-Net with an aux classification head."""
    setup, sizes = ctx.quickstart(), ctx.sizes
    arms: dict[str, Arm] = {}
    for precision in ctx.precisions:
        cxrnet = ctx.bare(setup, precision)
        unet = BareLoop(plain_unet(setup), unet_loss, setup, precision)
        arms[f"cxrnet/{precision}"] = Arm(
            "s/step", lambda loop=cxrnet: loop.seconds_per_step(sizes.warmup_steps, sizes.steps)
        )
        arms[f"unet/{precision}"] = Arm(
            "s/step", lambda loop=unet: loop.seconds_per_step(sizes.warmup_steps, sizes.steps)
        )
    values = interleave(arms, sizes.rounds)
    units = {name: arm.unit for name, arm in arms.items()}
    ratios = {
        f"cxrnet_over_unet/{p}": ratio(
            values,
            units,
            f"cxrnet/{p}",
            f"unet/{p}",
            Target("<=", 1.6),
            "CXRNet training step time / plain smp U-Net with aux classification head, same precision",
        )
        for p in ctx.precisions
    }
    ratios |= speedups(values, units, "cxrnet", ctx) | speedups(values, units, "unet", ctx)
    return {
        "model": setup.describe(),
        "baseline": "smp.Unet(same encoder and decoder_channels, classes=2, aux_params={classes, dropout}); "
        "loss: Dice+BCE on lung and infection maps + cross-entropy",
        "protocol": protocol(sizes.rounds, sizes.warmup_steps, sizes.steps),
        "ratios": ratios,
    }


def reference(ctx: Context) -> dict[str, Any]:
    """ref: the issue's reference step (resnet18 + U-Net, 256 px, batch 8), float32 / default."""
    sizes = ctx.sizes
    setup = training_setup(sizes.reference_overrides, ctx.tmp / "reference", 2)
    variants = {
        "float32_contiguous": (FLOAT32, False),
        "float32_channels_last": (FLOAT32, True),
        "default_channels_last": (ctx.default, True),
    }
    arms = {}
    for name, (precision, channels_last) in variants.items():
        loop = ctx.bare(setup, precision, channels_last=channels_last)
        arms[name] = Arm(
            "s/step",
            lambda loop=loop: loop.seconds_per_step(0, sizes.reference_steps),
            lambda loop=loop: loop.seconds_per_step(0, 1),
        )
    values = interleave(arms, sizes.reference_rounds)
    units = {name: arm.unit for name, arm in arms.items()}
    ratios = {
        "speedup_default_over_float32": ratio(
            values,
            units,
            "float32_contiguous",
            "default_channels_last",
            Target(">=", 2.5),
            f"step time at float32 without channels-last (the issue's baseline) / at {ctx.default} with it",
        ),
        "speedup_default_over_float32_channels_last": ratio(
            values,
            units,
            "float32_channels_last",
            "default_channels_last",
            meaning=f"step time at float32 / at {ctx.default}, both channels-last: the precision alone",
        ),
        "speedup_channels_last_float32": ratio(
            values,
            units,
            "float32_contiguous",
            "float32_channels_last",
            meaning="float32 step time contiguous / channels-last: the memory format alone",
        ),
    }
    return {
        "model": setup.describe(),
        "variants": {name: {"precision": p, "channels_last": c} for name, (p, c) in variants.items()},
        "protocol": {
            **protocol(sizes.reference_rounds, 0, sizes.reference_steps),
            "warmup": "one untimed step per variant before the first round",
        },
        "ratios": ratios,
    }
