"""Hugging Face transformers in the registry, built from configs (no weights downloaded): `lm_tiny`, a Llama-style
causal language model over bytes, and `vit_tiny`, a ViT for the built-in 28x28 Fashion-MNIST. Created only when
`transformers` is importable (the extra `epiprune[transformers]`); otherwise one EpipruneError line.

A factory's `task` attribute says what data it takes: "text" (token ids (N, T) -> logits (N, T, vocab)) or "image"
(the default of every other registry model: pixels (N, C, H, W) -> logits (N, classes))."""

from __future__ import annotations

from torch import nn

from epiprune.errors import EpipruneError


def _transformers(name: str):  # noqa: ANN202 (the module)
    try:
        import transformers
    except ImportError:
        raise EpipruneError(f"model {name} needs Hugging Face transformers, which is not installed (accepted: pip "
                            "install 'epiprune[transformers]')") from None
    return transformers


def lm_tiny(in_channels: int = 1, num_classes: int = 256) -> nn.Module:
    """Llama-style causal LM: vocabulary num_classes (256 bytes), hidden 128, 4 layers, 4 query heads over 2
    key/value heads (grouped-query, head_dim 32), SwiGLU MLP of 344 neurons, rotary positions up to 2048 tokens,
    untied embeddings (safetensors stores no shared tensors). in_channels is ignored (token ids)."""
    t = _transformers("lm_tiny")
    config = t.LlamaConfig(vocab_size=num_classes, hidden_size=128, intermediate_size=344, num_hidden_layers=4,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                           tie_word_embeddings=False, attn_implementation="sdpa")
    return t.LlamaForCausalLM(config)


def vit_tiny(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Module:
    """ViT for small images: patches of 4x4 pixels (image_size must be a multiple of 4), hidden 96, 4 layers,
    3 heads (head_dim 32), MLP 192 neurons (GELU), CLS token and learned position embeddings."""
    t = _transformers("vit_tiny")
    if image_size % 4:
        raise EpipruneError(f"vit_tiny: image size {image_size} is not a multiple of its patch size 4 (accepted: "
                            "e.g. 28 or 32)")
    config = t.ViTConfig(image_size=image_size, patch_size=4, num_channels=in_channels, hidden_size=96,
                         num_hidden_layers=4, num_attention_heads=3, intermediate_size=192, num_labels=num_classes,
                         attn_implementation="sdpa")
    return t.ViTForImageClassification(config)


lm_tiny.task = "text"  # type: ignore[attr-defined]
vit_tiny.task = "image"  # type: ignore[attr-defined]
lm_tiny.transformer = vit_tiny.transformer = True  # type: ignore[attr-defined]  # pruned by heads and neurons
