"""`epiprune train` on every rank of a torchrun launch (gloo, CPU), once per TrainConfig given as JSON; launched by
tests/test_transformer_training.py. Rank 0 writes the run folder as usual; here every rank also saves its final
parameters and what it decided (widths, prune step, final metric), so that the test can check that the ranks agree
exactly, which the run folder alone cannot show."""

import json
import sys
from pathlib import Path

from safetensors.torch import save_file

from epiprune import distributed
from epiprune.run.config import TrainConfig
from epiprune.run.trainer import train


def main(out: Path, configs: list[dict]) -> None:
    for i, values in enumerate(configs):
        result = train(TrainConfig(**{**values, "out": str(out / f"run{i}"), "progress": False}))
        rank = distributed.rank()
        state = {k: v.detach().contiguous() for k, v in result.model.named_parameters()}
        save_file(state, str(out / f"run{i}-rank{rank}.safetensors"))
        s = result.summary
        decided = {k: s.get(k) for k in ("world_size", "final_widths", "prune_step", "final_flops", "final_val_top1",
                                         "final_val_bits_per_byte")}
        decided["optimizer"] = s["config"]["optimizer"]
        (out / f"run{i}-rank{rank}.json").write_text(json.dumps(decided))
    distributed.shutdown()


if __name__ == "__main__":
    main(Path(sys.argv[1]), json.loads(sys.argv[2]))
