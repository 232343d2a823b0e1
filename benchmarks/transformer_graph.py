"""Issue 21's decision, measured: torch-pruning 1.6.1's dependency graph on tiny Hugging Face transformers built
from configs (no weights), against epiprune's own in-block unit finder (surgery/transformer.py).

Each torch-pruning case runs in a subprocess with a time limit (the graph may never return): `build_dependency`,
then `get_all_groups` over nn.Linear roots (the classifier / LM head ignored), timed separately.

    python benchmarks/transformer_graph.py [--limit 120] [--out benchmarks/results/transformer_graph.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

CASES = {  # name -> (model, key/value heads, layers)
    "vit-1layer": ("vit", 4, 1),
    "llama-mha-1layer": ("llama", 4, 1),
    "llama-gqa-1layer": ("llama", 2, 1),
}


def build(kind: str, kv: int, layers: int):  # noqa: ANN201 (a transformers model and its example input)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                             num_key_value_heads=kv, num_hidden_layers=layers, vocab_size=256))
        return model.eval(), torch.randint(0, 256, (1, 8)), model.lm_head
    model = ViTForImageClassification(ViTConfig(hidden_size=64, intermediate_size=128, num_attention_heads=4,
                                                num_hidden_layers=layers, image_size=28, patch_size=7, num_channels=1,
                                                num_labels=10))
    return model.eval(), torch.randn(1, 1, 28, 28), model.classifier


def child(name: str) -> None:
    """One torch-pruning case; prints one JSON line per finished phase."""
    import torch
    import torch_pruning as tp

    model, x, head = build(*CASES[name])
    start = time.perf_counter()
    dg = tp.DependencyGraph().build_dependency(model, x, forward_fn=lambda m, i: m(i).logits, verbose=False)
    print(json.dumps({"phase": "build_dependency", "s": time.perf_counter() - start}), flush=True)
    start = time.perf_counter()
    groups = list(dg.get_all_groups(ignored_layers=[head], root_module_types=(torch.nn.Linear,)))
    print(json.dumps({"phase": "get_all_groups", "s": time.perf_counter() - start, "groups": len(groups)}),
          flush=True)


def ours(name: str) -> dict:
    from epiprune.surgery import TransformerGraph

    model, x, _ = build(*CASES[name])
    start = time.perf_counter()
    graph = TransformerGraph(model, x)
    return {"s": time.perf_counter() - start, "groups": len(graph.groups), "widths": graph.widths()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=float, default=120.0, help="seconds per torch-pruning case")
    parser.add_argument("--out", default="benchmarks/results/transformer_graph.json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child)
        return
    import torch
    import transformers

    rows = {}
    for name in CASES:
        proc = subprocess.Popen([sys.executable, __file__, "--child", name], stdout=subprocess.PIPE, text=True)
        try:
            out, _ = proc.communicate(timeout=args.limit)
            finished = True
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            finished = False
        phases = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        rows[name] = {"torch_pruning": phases, "finished": finished, "limit_s": args.limit, "epiprune": ours(name)}
        print(f"{name:18s} torch-pruning: " + ", ".join(f"{p['phase']} {p['s']:.2f} s" for p in phases)
              + ("" if finished else f", then no result within {args.limit:g} s (killed)")
              + f"; epiprune's TransformerGraph {rows[name]['epiprune']['s']:.3f} s")
    record = {"torch": torch.__version__, "torch_pruning": metadata.version("torch-pruning"),  # its __version__ lags
              "transformers": transformers.__version__, "cases": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
