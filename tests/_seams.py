"""Test-only callbacks injected into ``segtune.train`` (the product carries no test hooks).

In-process tests pass them as ``segtune.train(cfg, callbacks=[...])``. Subprocess tests run
this file as a script, which installs the callbacks around ``segtune.cli.main``::

    python tests/_seams.py [--signal-at STEP:SIG] [--dump-ranks DIR] train DATA ...

(a script, not ``python -c``, because Lightning starts the other DDP ranks by re-running the
command line).
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import lightning as L


class SignalAtStep(L.Callback):
    """Send ``sig`` to this process at the start of optimiser step ``step`` (1-based), as a user's
    Ctrl-C (SIGINT), a scheduler's SIGTERM or a kill -9 (SIGKILL) would arrive mid-epoch."""

    def __init__(self, step: int, sig: int = signal.SIGINT) -> None:
        self.step, self.sig = int(step), int(sig)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        if trainer.global_step + 1 == self.step:
            os.kill(os.getpid(), self.sig)

    @classmethod
    def parse(cls, text: str) -> SignalAtStep:
        """``"3:INT"`` -> SIGINT at step 3 (signal name without ``SIG``; default KILL)."""
        step, _, name = text.partition(":")
        return cls(int(step), int(getattr(signal, "SIG" + (name.strip().upper() or "KILL"))))


class DumpRankState(L.Callback):
    """At the end of training every DDP rank writes ``rank{r}.safetensors`` (its final weights)
    and ``rank{r}.json`` (its last validation metrics) into ``folder``."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from safetensors.torch import save_file

        self.folder.mkdir(parents=True, exist_ok=True)
        r = int(trainer.global_rank)
        state = {k: v.detach().cpu().contiguous().clone() for k, v in pl_module.model.state_dict().items()}
        save_file(state, str(self.folder / f"rank{r}.safetensors"))
        payload = {"rank": r, "world_size": int(trainer.world_size), "metrics": pl_module.last_val_metrics or {}}
        (self.folder / f"rank{r}.json").write_text(json.dumps(payload, default=float))


def main(argv: list[str]) -> int:
    """Run ``segtune.cli.main`` with the callbacks named by the leading options."""
    import torch

    torch.set_num_threads(1)
    callbacks: list[L.Callback] = []
    while argv and argv[0].startswith("--"):
        opt, value, argv = argv[0], argv[1], argv[2:]
        if opt == "--signal-at":
            if value:
                callbacks.append(SignalAtStep.parse(value))
        elif opt == "--dump-ranks":
            callbacks.append(DumpRankState(value))
        else:
            raise SystemExit(f"_seams.py: unknown option {opt}")
    import importlib

    from segtune.cli import main as cli_main

    engine_train = importlib.import_module("segtune.engine.train")  # the module, not the function

    original = engine_train.train

    def train_with_callbacks(*args: Any, **kwargs: Any) -> Any:
        kwargs["callbacks"] = [*kwargs.get("callbacks", ()), *callbacks]
        return original(*args, **kwargs)

    engine_train.train = train_with_callbacks  # the CLI imports it at call time
    return cli_main(argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
