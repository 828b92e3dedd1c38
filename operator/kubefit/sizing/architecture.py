"""Transformer shapes: parameter counts from an architecture, and an assumed architecture from a count.

Pure arithmetic; the estimator uses it for activations, logits, the largest all-gathered unit and LoRA
adapter counts. Conventions and their sources are in docs/sizing.md ("Model shape").
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from kubefit.api.models import LORA_TARGETS, Architecture

# Vocabulary assumed when the architecture gives none (the API default; Llama 1/2 use 32000).
DEFAULT_VOCAB = 32000
# Head width of the assumed shape: 128 in Llama 1/2/3, Mistral and GPT-3 175B (their config.json /
# GPT-3 paper Table 2.1).
ASSUMED_HEAD_DIM = 128
# The most a stated parameter count's precision may blur between the MLP forms it could count
# (_within_rounding): the gated and plain forms of one architecture differ by a third of its blocks, and
# come within 1% of each other only where a tied head makes up for the MLP (Llama 3.2 1B).
AMBIGUITY_SHARE = 0.01
# How far a gated form may lie from a rounded count sized as a plain form and be named in a warning. Gated
# models' name-sizes lie 7-24% under their gated form (Llama 3.2 3B's "3B", Llama 3.2 1B's "1B", Gemma-7B's
# "7B", Gemma-2B's and Gemma-2-2B's "2B"), but plain models' counts a few percent off their form lie as near
# theirs (Pythia-1B's "1B": 15%), so the form is not chosen by it: sizing such a plain model as gated
# over-estimated it by up to 39%.
NAME_SIZE_WARNING_SHARE = 0.25
# A count this near the plain form sized is that model's own, with what the shape does not count (position
# embeddings, biases: BERT-base's 109.5M against 108.4M, OPT-125m's 125.2M against 123.6M): no warning. The
# gated models' name-sizes above lie 3% or more from every form.
NAME_SIZE_GAP = 0.025
# Assumed aspect ratio h / L = 128: Llama 2 7B (4096/32), 13B (5120/40) and GPT-3 175B (12288/96).
ASSUMED_WIDTH_PER_LAYER = 128


@dataclass(frozen=True)
class ModelShape:
    """A decoder-only transformer: what the activation and parameter formulas need."""

    layers: int
    hidden: int
    heads: int
    kv_heads: int
    ffn: int
    vocab: int
    gated_mlp: bool  # SwiGLU-style MLP with three matrices (gate, up, down) instead of two
    assumed: bool = False  # derived from a parameter count, not given by the user
    # The output head shares the input embedding's matrix (Gemma, many small models): one V x h copy.
    tied_embeddings: bool = False
    # A head width other than hidden / heads (Gemma 7B, Gemma 2: 256); 0 means hidden / heads.
    explicit_head_dim: int = 0

    @property
    def head_dim(self) -> int:
        return self.explicit_head_dim or self.hidden // self.heads

    @property
    def q_width(self) -> int:
        """Width of the queries and of the attention output (the output projection's input)."""
        return self.heads * self.head_dim

    @property
    def kv_width(self) -> int:
        return self.kv_heads * self.head_dim

    def attention_parameters(self) -> int:
        # Q and O are h x (heads * headDim); K and V are h x (kvHeads * headDim) under grouped-query attention.
        return 2 * self.hidden * self.q_width + 2 * self.hidden * self.kv_width

    def mlp_parameters(self) -> int:
        return (3 if self.gated_mlp else 2) * self.hidden * self.ffn

    def block_parameters(self) -> int:
        # Two norms of width h per block (their weights; biases ignored).
        return self.attention_parameters() + self.mlp_parameters() + 2 * self.hidden

    def embedding_parameters(self) -> int:
        return self.vocab * self.hidden

    @property
    def embedding_copies(self) -> int:
        """V x h matrices the model holds: the input embedding, and the output head unless tied."""
        return 1 if self.tied_embeddings else 2

    def total_parameters(self) -> int:
        """Blocks + input embedding + output head (unless tied) + final norm."""
        return (
            self.layers * self.block_parameters()
            + self.embedding_copies * self.embedding_parameters()
            + self.hidden
        )

    def largest_matrix(self) -> int:
        return max(self.hidden * self.ffn, self.hidden * self.q_width, self.embedding_parameters())

    def largest_block_matrix(self) -> int:
        """The largest weight matrix inside a block: what QLoRA quantises to nf4 and dequantises per call
        (the embedding and output head stay in 16 bits and are never dequantised)."""
        return max(self.hidden * self.ffn, self.hidden * self.q_width)

    def largest_unit(self) -> int:
        """The largest group of parameters gathered at once under ZeRO-3/FSDP: a block or an embedding."""
        return max(self.block_parameters(), self.embedding_parameters())

    def projection_widths(self) -> dict[str, tuple[int, int]]:
        """(input, output) width of each projection of a block that can carry an adapter; a two-matrix
        MLP has no gate."""
        h, q, kv, f = self.hidden, self.q_width, self.kv_width, self.ffn
        widths = {
            "query": (h, q),
            "key": (h, kv),
            "value": (h, kv),
            "output": (q, h),
            "up": (h, f),
            "down": (f, h),
        }
        if self.gated_mlp:
            widths["gate"] = (h, f)
        return widths

    def lora_parameters(self, rank: int, targets: Iterable[str] = LORA_TARGETS) -> int:
        """Adapters A (in x r) and B (r x out) on the targeted projections of every block."""
        widths = self.projection_widths()
        per_block = sum(rank * sum(widths[target]) for target in set(targets) if target in widths)
        return self.layers * per_block


def shape_from_architecture(architecture: Architecture, parameters: int | None) -> ModelShape:
    """The user's architecture. The MLP form (gated or not) and whether the output head is tied to the
    input embedding are the combination whose parameter count is nearest `parameters` (untied first on a
    tie: Gemma-2B's 2.51B is a gated MLP with a tied head, which an untied count mistakes for a plain MLP);
    without a count, an explicit intermediateSize means a gated (SwiGLU) MLP, as in Llama and Mistral, and
    the head is untied. A gated MLP with a tied head can count within a rounding of a plain one with an
    untied head (Llama 3.2 1B: 1.236B against 1.230B, stated as 1.23B): where both lie within the stated
    count's precision, the gated form, which holds more activations, is the one sized (mlp_form_ambiguous)."""
    candidates = _forms(architecture)
    if parameters is None:
        return candidates[0] if architecture.intermediate_size is not None else candidates[1]
    close = _within_rounding(candidates, parameters)
    return next((shape for shape in close if shape.gated_mlp), close[0])


def mlp_form_ambiguous(architecture: Architecture, parameters: int) -> bool:
    """Whether `parameters`, to its precision, may count both a gated and a plain MLP of `architecture`."""
    return len({shape.gated_mlp for shape in _within_rounding(_forms(architecture), parameters)}) == 2


def gated_form_near(architecture: Architecture, parameters: int, sized: ModelShape) -> ModelShape | None:
    """The nearest gated form of `architecture` within NAME_SIZE_WARNING_SHARE of its count, where
    `parameters` is a rounded count (more than NAME_SIZE_GAP from every form) `sized` as a plain form;
    None otherwise."""
    if sized.gated_mlp:
        return None
    forms = _forms(architecture)
    if min(abs(shape.total_parameters() - parameters) for shape in forms) <= NAME_SIZE_GAP * parameters:
        return None
    near = [
        shape
        for shape in forms
        if shape.gated_mlp
        and abs(shape.total_parameters() - parameters) <= NAME_SIZE_WARNING_SHARE * shape.total_parameters()
    ]
    return min(near, key=lambda shape: abs(shape.total_parameters() - parameters), default=None)


def _forms(architecture: Architecture) -> tuple[ModelShape, ModelShape, ModelShape, ModelShape]:
    """The architecture with a gated and a plain MLP, each with an untied and a tied head."""
    gated = ModelShape(
        layers=architecture.layers,
        hidden=architecture.hidden_size,
        heads=architecture.attention_heads,
        kv_heads=architecture.kv_heads or architecture.attention_heads,
        ffn=architecture.intermediate_size or 4 * architecture.hidden_size,
        vocab=architecture.vocab_size or DEFAULT_VOCAB,
        gated_mlp=True,
        explicit_head_dim=architecture.head_dim or 0,
    )
    plain = replace(gated, gated_mlp=False)
    return gated, plain, replace(gated, tied_embeddings=True), replace(plain, tied_embeddings=True)


def _within_rounding(candidates: Iterable[ModelShape], parameters: int) -> list[ModelShape]:
    """The candidates about as near `parameters` as the nearest one: farther by at most the count's own
    precision, the unit of its last non-zero digit (1.23B, cut from 1.236B, may lie 0.01B under the real
    count), and at most AMBIGUITY_SHARE of it (a "1B" names no form); or, for a count that is none of
    them (farther from the nearest than its precision), at most twice as far as the nearest: a count 7%
    off both tells apart no two forms 0.5% apart, and one more digit written flipped the form sized
    (1.15B and 1.151B for Llama 3.2 1B's shape, 19% apart in the estimate). Nearest first (the first on
    a tie)."""
    ranked = sorted(candidates, key=lambda shape: abs(shape.total_parameters() - parameters))
    digits = str(parameters)
    precision = min(10 ** (len(digits) - len(digits.rstrip("0"))), AMBIGUITY_SHARE * parameters)
    nearest = abs(ranked[0].total_parameters() - parameters)
    band = nearest + max(precision, nearest)
    return [shape for shape in ranked if abs(shape.total_parameters() - parameters) <= band]


def assumed_shape(parameters: int, vocab: int = DEFAULT_VOCAB) -> ModelShape:
    """A plausible GPT/Llama-like shape with `parameters` parameters.

    Blocks hold about 12 L h^2 parameters (4h^2 attention + 8h^2 MLP at ffn = 4h); with h = 128 L this is
    (12/128) h^3, so h = cbrt((P - 2Vh) * 128 / 12), found by fixed-point iteration. L is rounded from
    h / 128 first, then the width from the block parameters over L, to a multiple of the head width:
    L x h, which activations follow, then falls as P grows only once, by 4% at about 65.4M parameters
    (5 x 640 to 6 x 512; rounding the width first made it drop by up to 27% wherever the rounded width
    stepped up, and a larger model was sized smaller).
    """
    hidden = 1024.0
    for _ in range(20):
        blocks = max(parameters - 2 * vocab * hidden, parameters * 0.5)
        hidden = (blocks * ASSUMED_WIDTH_PER_LAYER / 12) ** (1 / 3)
    layers = max(1, round(hidden / ASSUMED_WIDTH_PER_LAYER))
    blocks = max(parameters - 2 * vocab * hidden, 0)
    width = max(
        ASSUMED_HEAD_DIM, round(math.sqrt(blocks / (12 * layers)) / ASSUMED_HEAD_DIM) * ASSUMED_HEAD_DIM
    )
    heads = width // ASSUMED_HEAD_DIM
    return ModelShape(
        layers=layers,
        hidden=width,
        heads=heads,
        kv_heads=heads,
        ffn=4 * width,
        vocab=vocab,
        gated_mlp=False,
        assumed=True,
    )


def describe(shape: ModelShape) -> str:
    return (
        f"layers={shape.layers} hiddenSize={shape.hidden} attentionHeads={shape.heads} "
        f"intermediateSize={shape.ffn} vocabSize={shape.vocab}"
    )
