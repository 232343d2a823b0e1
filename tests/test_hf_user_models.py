"""Any Hugging Face model as the user's own network (issue 21, item 3): `--model package.module:factory` returning a
LlamaForCausalLM trains on --data text and a ViTForImageClassification on images, as lm_tiny and vit_tiny do (task
recognised from the model, `.logits` handled, the transformer graph cuts heads and neurons); Mistral and Qwen2
through the API; a layout the transformer graph cannot cut (BERT) and a factory without logits are one line each.
Tiny models built from configs, a few thousand parameters, nothing downloaded."""

import json
import textwrap

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from epiprune.costs.budget import Budget  # noqa: E402
from epiprune.errors import EpipruneError  # noqa: E402
from epiprune.io.serialization import load_pruned  # noqa: E402
from epiprune.models import make_model  # noqa: E402
from epiprune.models.user import resolve_layers  # noqa: E402
from epiprune.policy.early_pruning import EarlyPruningPolicy  # noqa: E402
from epiprune.surgery import SurgeryError, TransformerGraph, find_blocks, make_graph  # noqa: E402
from epiprune.surgery.transformer import refuse_uncut_attention  # noqa: E402

from .helpers import assert_one_line_error, call_main  # noqa: E402
from .test_transformer_surgery import logits, uneven_keep, zero_dropped  # noqa: E402

MODULE = "hf_user_factories"  # the user's module, written into tmp_path (the folder the command runs in)
FACTORIES = textwrap.dedent('''
    import transformers as t

    def llama(num_classes=256, tie_word_embeddings=False):
        """Llama causal LM over bytes: hidden 16, 2 layers, 4 query heads over 2 key/value heads, MLP 32."""
        return t.LlamaForCausalLM(t.LlamaConfig(
            vocab_size=num_classes, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=tie_word_embeddings))

    def llama_bytes():
        """Takes no num_classes: its vocabulary is 256 whatever the data has."""
        return llama(256)

    def vit(num_classes, in_channels):
        return t.ViTForImageClassification(t.ViTConfig(
            image_size=28, patch_size=7, num_channels=in_channels, hidden_size=16, num_hidden_layers=1,
            num_attention_heads=2, intermediate_size=32, num_labels=num_classes))

    BERT = dict(vocab_size=256, hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)

    def bert_lm():
        return t.BertForMaskedLM(t.BertConfig(**BERT))

    bert_lm.task = "text"  # declared: a masked LM is no causal LM, so its task cannot be read off its class

    def bert_classifier():
        return t.BertForSequenceClassification(t.BertConfig(**BERT))

    def llama_body():
        """The decoder without its head: hidden states, no logits."""
        return t.LlamaModel(t.LlamaConfig(vocab_size=256, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                          num_attention_heads=2))

    llama_body.task = "text"

    def llama_audio():
        return llama()

    llama_audio.task = "audio"
''')
TEXT = ["--data", "text", "--seq-len", "16", "--train-subset", "32", "--val-subset", "8", "--batch-size", "8",
        "--optimizer", "adamw", "--lr", "3e-3", "--no-progress"]
IMAGES = ["--train-subset", "32", "--val-subset", "16", "--batch-size", "16", "--optimizer", "adamw", "--lr", "1e-3",
          "--no-progress"]


@pytest.fixture
def factories(tmp_path, monkeypatch):
    """The user's module in tmp_path, the current folder (as `epiprune train` finds a module beside the user);
    imported afresh by each test."""
    (tmp_path / f"{MODULE}.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(__import__("sys").modules, MODULE, raising=False)
    import importlib

    return importlib.import_module(MODULE)


def test_a_llama_factory_trains_on_text_and_its_heads_and_neurons_are_cut(factories, tmp_path, capsys):
    out = tmp_path / "lm"
    result = call_main(["train", "--model", f"{MODULE}:llama", *TEXT, "--epochs", "2", "--prune-at", "1",
                        "--budget", "flops:0.8", "--out", out], capsys)
    assert result.returncode == 0, result.stderr
    assert "bits/byte" in result.stdout  # the text task's metrics: the task was read off the model
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prune_epoch"] == 1 and summary["flops_ratio"] < 1 and summary["final_val_bits_per_byte"] < 8.5
    spec = json.loads((out / "architecture.json").read_text())
    assert spec["task"] == "text" and spec["model"] == f"{MODULE}:llama"
    # the transformer graph's units (key/value groups of heads, MLP neurons), not torch-pruning's channel groups
    assert sorted(spec["kept"]) == ["model.layers.0.mlp", "model.layers.0.self_attn", "model.layers.1.mlp",
                                    "model.layers.1.self_attn"]
    model = load_pruned(out, model=factories.llama())
    widths = model.config.epiprune_widths
    assert sum(w.get("neurons", 0) for w in widths.values()) < 2 * 32 or \
        sum(w.get("kv_heads", 0) for w in widths.values()) < 2 * 2
    assert model.config.intermediate_size <= 32 and model.config.num_key_value_heads <= 2
    assert sum(p.numel() for p in model.parameters()) == summary["final_params"]
    assert model(torch.zeros(1, 16, dtype=torch.long)).logits.shape == (1, 16, 256)
    # export names the factory again (a language model's spec has no image size: checked on byte ids)
    exported = tmp_path / "lm.safetensors"
    result = call_main(["export", out, "--model", f"{MODULE}:llama", "--format", "safetensors", "--out", exported],
                       capsys)
    assert result.returncode == 0, result.stderr
    x = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits(load_pruned(exported, model=factories.llama()), x), logits(model, x))


def test_a_vit_factory_trains_on_images_pruned_at_initialisation(factories, tmp_path, capsys):
    out = tmp_path / "vit"
    result = call_main(["train", "--model", f"{MODULE}:vit", *IMAGES, "--epochs", "1", "--prune-at", "0",
                        "--init-batches", "1", "--budget", "flops:0.7", "--out", out], capsys)
    assert result.returncode == 0, result.stderr
    assert "val top-1" in result.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["prune_epoch"] == 0 and summary["flops_ratio"] < 1
    assert sorted(json.loads((out / "architecture.json").read_text())["kept"]) == [
        "vit.layers.0.attention", "vit.layers.0.mlp"]
    model = load_pruned(out, model=factories.vit(10, 1))  # raw images in, the ViT's logits out
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("factory,argv,fragments", [
    ("bert_lm", TEXT, ["cannot prune bert.encoder.layer.0.attention (BertAttention) of BertForMaskedLM",
                       "q_proj/k_proj/v_proj/o_proj", "accepted: such a model, e.g. LlamaForCausalLM"]),
    ("bert_classifier", TEXT, [f"cannot tell whether {MODULE}:bert_classifier (BertForSequenceClassification) "
                               "takes text or images", "bert_classifier.task = 'text'"]),
    ("llama_body", TEXT, [f"model {MODULE}:llama_body returns a BaseModelOutputWithPast for a batch of shape (2, 8)",
                          "no .logits tensor", "vocab_size=256"]),
    ("llama", IMAGES, [f"model {MODULE}:llama (LlamaForCausalLM) takes text, but the run's data is images",
                       "--data text"]),
    ("bert_lm", IMAGES, [f"model {MODULE}:bert_lm takes text (its factory's task), but --data builtin is images"]),
    ("llama_audio", TEXT, [f"factory {MODULE}:llama_audio declares task 'audio'", "accepted: task = 'text'"]),
])
def test_a_model_that_cannot_be_trained_or_cut_is_one_line_exit_2(factories, tmp_path, capsys, factory, argv,
                                                                  fragments):
    result = call_main(["train", "--model", f"{MODULE}:{factory}", *argv, "--epochs", "2", "--prune-at", "1",
                        "--out", tmp_path / "run"], capsys)
    assert_one_line_error(result, *fragments)
    assert not (tmp_path / "run").exists()


def test_the_api_refuses_a_bert_model_in_one_line_and_names_the_module(factories):
    model = factories.bert_classifier()
    with pytest.raises(EpipruneError, match=r"^cannot prune bert\.encoder\.layer\.0\.attention \(BertAttention\) "
                                            r"of BertForSequenceClassification: epiprune prunes") as err:
        EarlyPruningPolicy(model, torch.zeros(1, 8, dtype=torch.long), Budget("flops", 0.5))
    assert "\n" not in str(err.value)


def test_make_model_reads_the_task_off_the_model_and_checks_its_logits(factories):
    llama = make_model(f"{MODULE}:llama", 1, 256, task="text")
    assert isinstance(llama, transformers.LlamaForCausalLM)
    vit = make_model(f"{MODULE}:vit", 1, 10, input_size=(28, 28), task="image")
    assert isinstance(vit, transformers.ViTForImageClassification)
    with pytest.raises(EpipruneError, match=r"maps byte ids of shape \(2, 8\) to logits of shape \(2, 8, 256\), "
                                            r"not \(2, 8, 100\)"):
        make_model(f"{MODULE}:llama_bytes", 1, 100, task="text")


def test_ignored_layers_leave_a_whole_block_of_a_transformer_unpruned(factories):
    model = factories.llama()
    ignored = resolve_layers(model, ["model.layers.0.self_attn", "model.layers.1.mlp.down_proj"], "llama")
    graph = make_graph(model, torch.zeros(1, 8, dtype=torch.long), ignored)
    assert isinstance(graph, TransformerGraph)
    assert graph.names == ["model.layers.0.mlp", "model.layers.1.self_attn"]  # a cut layer ignored: its block too


def test_a_partly_cut_hugging_face_model_names_the_attention_it_cannot_cut(factories, monkeypatch):
    model = factories.llama()
    attention = model.model.layers[1].self_attn
    monkeypatch.setattr(attention, "head_dim", None)  # no longer a q/k/v/o block with heads of head_dim
    example = torch.zeros(1, 8, dtype=torch.long)
    with pytest.raises(SurgeryError, match=r"^cannot prune model\.layers\.1\.self_attn \(LlamaAttention\) of "
                                           r"LlamaForCausalLM: .*--ignore-layers model\.layers\.1\.self_attn\)$"):
        make_graph(model, example)
    ignored = resolve_layers(model, ["model.layers.1.self_attn"], "llama")
    refuse_uncut_attention(model, find_blocks(model, ignored), ignored)  # ignored: nothing left dense unsaid
    monkeypatch.undo()  # a graph runs the model, which needs its head_dim
    assert "model.layers.1.self_attn" not in make_graph(model, example, ignored).names


def _mistral():
    torch.manual_seed(0)
    return transformers.MistralForCausalLM(transformers.MistralConfig(
        vocab_size=256, hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2)).eval()


def _qwen2():
    torch.manual_seed(0)
    return transformers.Qwen2ForCausalLM(transformers.Qwen2Config(
        vocab_size=256, hidden_size=32, intermediate_size=24, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2)).eval()


@pytest.mark.parametrize("build", [_mistral, _qwen2], ids=["mistral", "qwen2"])
def test_mistral_and_qwen2_pruned_equal_the_dense_model_with_pruned_units_zeroed(build):
    model, masked = build(), build()
    x = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(1))
    graph = make_graph(model, x[:1])
    assert isinstance(graph, TransformerGraph) and len(graph.groups) == 4
    keep = uneven_keep(graph)
    zero_dropped(TransformerGraph(masked, x[:1]), keep)
    graph.prune(keep)
    torch.testing.assert_close(logits(model, x), logits(masked, x), rtol=0, atol=1e-5)
    assert graph.widths() == [len(k) for k in keep] and model.config.epiprune_widths
    assert np.all(np.asarray(graph.widths()) >= 1)


def test_a_model_with_tied_embeddings_is_saved_and_loads_tied(factories, tmp_path):
    """safetensors stores no shared tensors: the tied output embedding is written as a copy, loaded back tied."""
    from epiprune.io.serialization import architecture_spec, save_pruned

    model = factories.llama(tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    graph = make_graph(model, torch.zeros(1, 8, dtype=torch.long))
    graph.prune([np.arange(g.size - 1) for g in graph.groups])
    spec = {**architecture_spec(f"{MODULE}:llama", 1, 256, (1, 8), dict(zip(graph.names, [
        list(range(g.size)) for g in graph.groups], strict=True))), "seq_len": 8, "task": "text"}
    save_pruned(model, spec, tmp_path / "run")
    loaded = load_pruned(tmp_path / "run", model=factories.llama(tie_word_embeddings=True))
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    x = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(logits(loaded, x), logits(model.eval(), x), rtol=0, atol=0)
