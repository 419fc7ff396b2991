"""Real model code: torchvision's classification zoo and the transformers
families people use, built with random weights (nothing is downloaded), and
a check of each through both PyTorch entries (``mc.from_torch`` and
``torch.compile(backend="minicomp")``) against torch eager.

    python -m benchmarks.zoo                      # every model, every family
    python -m benchmarks.zoo resnet18 bert llama  # some of them
    python -m benchmarks.zoo --list

The slow tests (tests/torch/test_zoo.py) hold one model of each torchvision
family and every transformers family; this runs the whole matrix (80
torchvision models; each transformers family with eager and SDPA attention
at sequence lengths 1, 7 and 128). It needs the [zoo] extra.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from dataclasses import dataclass

import numpy as np

TOLERANCE = 1e-5  # largest error allowed, relative to the largest output


def import_torchvision():
    """torchvision, importable on a CPU-only torch.

    The only torchvision release for torch 2.13 (0.28.0) is a CUDA build:
    its C++ extension needs CUDA libraries the CPU wheel lacks, so the
    import fails where it registers fake kernels for ``torchvision::nms``
    and ``qnms``. The classification models use none of torchvision's C++
    ops, so the two schemas are declared first and the import then works.
    (transformers imports torchvision where it is installed, so this comes
    before ``import transformers`` too.)"""
    import torch

    try:
        import torchvision
        return torchvision
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    library = torch.library.Library("torchvision", "DEF")
    library.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    library.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    import_torchvision.library = library  # declarations live as long as their Library
    import torchvision
    return torchvision


def import_transformers():
    """transformers (after torchvision is made importable, since it imports it)."""
    import_torchvision()
    import transformers
    return transformers


# -- torchvision ---------------------------------------------------------------

# One model of each torchvision family (each source file of torchvision.models; the one that
# covers most of the file's blocks, and the smallest of those): the slow tests hold these.
TORCHVISION_FAMILIES = {
    "alexnet": "alexnet", "convnext": "convnext_tiny", "densenet": "densenet121",
    "efficientnet": "efficientnet_v2_s",  # MBConv with squeeze-and-excitation, and fused MBConv
    "googlenet": "googlenet", "inception": "inception_v3", "maxvit": "maxvit_t", "mnasnet": "mnasnet0_5",
    "mobilenet_v2": "mobilenet_v2", "mobilenet_v3": "mobilenet_v3_small",
    "regnet": "regnet_y_400mf",  # grouped convolutions with squeeze-and-excitation
    "resnet": "resnet18", "shufflenet": "shufflenet_v2_x0_5", "squeezenet": "squeezenet1_1",
    "swin": "swin_v2_t",  # v2's cosine attention and log-spaced position bias, beside v1's blocks
    "vgg": "vgg11_bn", "vit": "vit_b_32",
}


def torchvision_names() -> list[str]:
    """Every classification model torchvision lists."""
    models = import_torchvision().models
    return list(models.list_models(module=models))


def _randomize(model, generator) -> None:
    """Random batch-norm statistics, and random values for weights that start
    at zero (ViT's head): with torchvision's init they are 0 and 1, and a
    zero classifier makes every output 0, so a comparison would mean nothing."""
    import torch

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=generator) * 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=generator) + 0.5)
        for p in model.parameters():
            if p.numel() > 1 and not p.any():
                p.copy_(torch.randn(p.shape, generator=generator) * 0.02)


def torchvision_case(name: str, seed: int = 0):
    """(model in eval mode, (image,)) for a torchvision classifier at batch 1."""
    import torch

    torchvision = import_torchvision()
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    model = torchvision.models.get_model(name, weights=None).eval()
    _randomize(model, generator)
    size = 299 if name == "inception_v3" else 224  # Inception v3 is built for 299
    return model, (torch.randn(1, 3, size, size, generator=generator),)


# -- transformers --------------------------------------------------------------

VOCAB = 100
SEQUENCE_LENGTHS = (1, 7, 128)


@dataclass(frozen=True)
class Family:
    """A transformers architecture: ``kind`` says what it takes (``encoder``:
    token ids and an attention mask; ``decoder``: the same, as a causal LM
    without a cache; ``encoder-decoder``: also decoder ids; ``vision``: an
    image; ``audio``: log-mel features); ``build(attn, size)`` makes it."""
    kind: str
    build: object
    sdpa: bool = True  # transformers itself refuses SDPA for DeBERTa-v2 and Gemma-2


def _sizes(size: str) -> dict:
    """Config sizes: "test" is a tiny model (2 layers of 64), "bench" a small real one (4 layers of 256)."""
    if size == "test":
        return dict(hidden=64, layers=2, heads=4, ffn=128)
    return dict(hidden=256, layers=4, heads=4, ffn=1024)


def _text(model, config, **fixed):
    def build(attn, size="test"):
        tf = import_transformers()
        s = _sizes(size)
        kw = dict(hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
                  intermediate_size=s["ffn"], vocab_size=VOCAB, attn_implementation=attn)
        return getattr(tf, model)(getattr(tf, config)(**{**kw, **fixed}))
    return build


def _seq2seq(model, config, **given):
    def build(attn, size="test"):
        tf = import_transformers()
        fixed = dict(given)
        s = _sizes(size)
        if config == "T5Config":
            kw = dict(d_model=s["hidden"], d_kv=s["hidden"] // s["heads"], d_ff=s["ffn"], num_layers=s["layers"],
                      num_heads=s["heads"])
        else:
            kw = dict(d_model=s["hidden"], encoder_layers=s["layers"], decoder_layers=s["layers"],
                      encoder_attention_heads=s["heads"], decoder_attention_heads=s["heads"],
                      encoder_ffn_dim=s["ffn"], decoder_ffn_dim=s["ffn"])
        if model == "WhisperModel" and size != "test":  # 30 s of audio: 80 mel bins, 3,000 frames
            fixed.update(num_mel_bins=80, max_source_positions=1500)
        m = getattr(tf, model)(getattr(tf, config)(vocab_size=VOCAB, attn_implementation=attn, **kw, **fixed))
        return m.encoder if model == "WhisperModel" else m
    return build


def _vision(model, config):
    def build(attn, size="test"):
        tf = import_transformers()
        s = _sizes(size)
        return getattr(tf, model)(getattr(tf, config)(
            hidden_size=s["hidden"], num_hidden_layers=s["layers"], num_attention_heads=s["heads"],
            intermediate_size=s["ffn"], image_size=32 if size == "test" else 224,
            patch_size=8 if size == "test" else 16, attn_implementation=attn))
    return build


TOKENS = dict(pad_token_id=0, bos_token_id=0, eos_token_id=1)  # inside the small vocabulary
GQA = dict(num_key_value_heads=2)

FAMILIES = {
    "bert": Family("encoder", _text("BertModel", "BertConfig")),
    "roberta": Family("encoder", _text("RobertaModel", "RobertaConfig", pad_token_id=1)),
    "distilbert": Family("encoder", lambda attn, size="test": _distilbert(attn, size)),
    "albert": Family("encoder", _text("AlbertModel", "AlbertConfig", embedding_size=32)),
    "deberta_v2": Family("encoder", _text("DebertaV2Model", "DebertaV2Config"), sdpa=False),
    "electra": Family("encoder", _text("ElectraModel", "ElectraConfig", embedding_size=32)),
    "gpt2": Family("decoder", lambda attn, size="test": _gpt2(attn, size)),
    "gpt_neox": Family("decoder", _text("GPTNeoXForCausalLM", "GPTNeoXConfig", **TOKENS)),
    "llama": Family("decoder", _text("LlamaForCausalLM", "LlamaConfig", **GQA, **TOKENS)),
    "mistral": Family("decoder", _text("MistralForCausalLM", "MistralConfig", **GQA, **TOKENS)),
    "qwen2": Family("decoder", _text("Qwen2ForCausalLM", "Qwen2Config", **GQA, **TOKENS)),
    "qwen3": Family("decoder", _text("Qwen3ForCausalLM", "Qwen3Config", **GQA, **TOKENS)),
    "phi3": Family("decoder", _text("Phi3ForCausalLM", "Phi3Config", **GQA, **TOKENS)),
    "gemma2": Family("decoder", _text("Gemma2ForCausalLM", "Gemma2Config", **GQA, **TOKENS), sdpa=False),
    "t5": Family("encoder-decoder", _seq2seq("T5Model", "T5Config", pad_token_id=0, decoder_start_token_id=0)),
    "bart": Family("encoder-decoder", _seq2seq("BartModel", "BartConfig", **TOKENS, decoder_start_token_id=0)),
    "vit": Family("vision", _vision("ViTModel", "ViTConfig")),
    "clip_vision": Family("vision", _vision("CLIPVisionModel", "CLIPVisionConfig")),
    "clip_text": Family("encoder", _text("CLIPTextModel", "CLIPTextConfig", max_position_embeddings=128,
                                         **TOKENS)),
    "whisper_encoder": Family("audio", _seq2seq("WhisperModel", "WhisperConfig", num_mel_bins=16,
                                                max_source_positions=32, decoder_start_token_id=0, **TOKENS)),
}


def _distilbert(attn, size):
    tf = import_transformers()
    s = _sizes(size)
    return tf.DistilBertModel(tf.DistilBertConfig(vocab_size=VOCAB, dim=s["hidden"], n_layers=s["layers"],
                                                  n_heads=s["heads"], hidden_dim=s["ffn"], attn_implementation=attn))


def _gpt2(attn, size):
    tf = import_transformers()
    s = _sizes(size)
    return tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=s["hidden"], n_layer=s["layers"],
                                            n_head=s["heads"], bos_token_id=0, eos_token_id=0,
                                            attn_implementation=attn))


def family_case(name: str, attn: str = "eager", seq: int = 7, size: str = "test", seed: int = 0):
    """(model in eval mode, positional inputs, keyword inputs) for a
    transformers family at batch 1. Token inputs carry an attention mask
    with padding at the end (a real input, not all ones)."""
    import torch

    family = FAMILIES[name]
    torch.manual_seed(seed)
    model = family.build(attn, size).eval()
    generator = torch.Generator().manual_seed(seed)
    if family.kind == "vision":
        side = 32 if size == "test" else 224
        return model, (torch.randn(1, 3, side, side, generator=generator),), {}
    if family.kind == "audio":
        shape = (1, 16, 64) if size == "test" else (1, 80, 3000)
        return model, (torch.randn(*shape, generator=generator),), {}
    ids = torch.randint(2, VOCAB, (1, seq), generator=generator)
    mask = torch.ones(1, seq, dtype=torch.int64)
    mask[0, seq // 2 + 1:] = 0  # padding at the end (none at length 1)
    kwargs = {"attention_mask": mask}
    if family.kind == "decoder":
        kwargs["use_cache"] = False
    if family.kind == "encoder-decoder":
        kwargs["decoder_input_ids"] = torch.randint(2, VOCAB, (1, max(1, seq // 2)), generator=generator)
        kwargs["use_cache"] = False
    return model, (ids,), kwargs


def family_lengths(name: str) -> tuple:
    """The sequence lengths a family is checked at (images and audio have one shape)."""
    return (0,) if FAMILIES[name].kind in ("vision", "audio") else SEQUENCE_LENGTHS


# -- checking ------------------------------------------------------------------

def first_output(out):
    """The tensor a model's output leads with: logits, a last hidden state, or the tensor itself."""
    import torch

    if isinstance(out, torch.Tensor):
        return out
    if getattr(out, "logits", None) is not None:
        return out.logits
    return out[0]


def relative_error(got, want) -> float:
    """Largest absolute difference, relative to the largest expected value."""
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def input_arrays(args, kwargs=None) -> list:
    """The numpy arrays a graph from ``mc.from_torch(model, args, example_kwargs=kwargs)`` takes, in order:
    the positional tensors, then the keyword tensors (keyword flags such as ``use_cache`` are not inputs)."""
    return [a.numpy() for a in args] + [v.numpy() for v in (kwargs or {}).values() if hasattr(v, "numpy")]


def through_from_torch(model, args, kwargs=None, **compile_options) -> np.ndarray:
    """The model's first output through mc.from_torch and mc.compile."""
    import minicomp as mc

    graph = mc.from_torch(model, args, example_kwargs=kwargs or None)
    return mc.compile(graph, **compile_options)(*input_arrays(args, kwargs))[0]


def through_torch_compile(model, args, kwargs=None) -> np.ndarray:
    """The model's first output through torch.compile(backend="minicomp").
    An eager fallback warns, and the warning is raised here as an error."""
    import torch

    torch._dynamo.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        with torch.no_grad():
            return first_output(torch.compile(model, backend="minicomp")(*args, **(kwargs or {}))).numpy()


def eager(model, args, kwargs=None) -> np.ndarray:
    """The model's first output in torch eager."""
    import torch

    with torch.no_grad():
        return first_output(model(*args, **(kwargs or {}))).numpy()


def check(model, args, kwargs=None) -> tuple[float, float]:
    """(error through from_torch, error through torch.compile), each relative to eager's largest output."""
    want = eager(model, args, kwargs)
    return (relative_error(through_from_torch(model, args, kwargs), want),
            relative_error(through_torch_compile(model, args, kwargs), want))


def _report(label: str, run) -> bool:
    start = time.perf_counter()
    try:
        errors = run()
    except Exception as e:  # the sweep reports every failure and goes on
        print(f"{label:40s} FAIL  {type(e).__name__}: {str(e).splitlines()[0][:200]}", flush=True)
        return False
    ok = max(errors) <= TOLERANCE
    print(f"{label:40s} {'ok   ' if ok else 'WRONG'} from_torch {errors[0]:.1e}  torch.compile {errors[1]:.1e}"
          f"  ({time.perf_counter() - start:.0f} s)", flush=True)
    return ok


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.zoo", description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="torchvision models and transformers families (default: all)")
    parser.add_argument("--list", action="store_true", help="print the names and exit")
    args = parser.parse_args(argv)
    vision = torchvision_names()
    if args.list:
        print("torchvision:", " ".join(vision))
        print("transformers:", " ".join(FAMILIES))
        return 0
    unknown = [n for n in args.names if n not in vision and n not in FAMILIES]
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; see --list")
    names = args.names or vision + list(FAMILIES)
    results = []
    for name in names:
        if name in FAMILIES:
            for attn in ("eager", "sdpa") if FAMILIES[name].sdpa else ("eager",):
                for seq in family_lengths(name):
                    label = f"{name} {attn}" + (f" seq {seq}" if seq else "")
                    results.append(_report(label, lambda: check(*family_case(name, attn, seq))))
        else:
            results.append(_report(name, lambda: check(*torchvision_case(name))))
    print(f"{sum(results)} of {len(results)} match eager within {TOLERANCE:g}")
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
