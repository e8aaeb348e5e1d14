"""Which parameter goes to Muon and which to the fallback update, and why.

Muon orthogonalises the update of a weight *matrix*; it only makes sense for hidden linear maps
(``nn.Linear`` weights, attention projections, MLP layers) and conv kernels (which the optimizer
flattens from ``(C_out, C_in, *k)`` to ``(C_out, C_in * prod(k))``). Every other tensor takes the
element-wise fallback update (Adam without first moment, or SGD). The rules decide by module type
and parameter name, never by ``ndim >= 2`` alone, and record a reason per tensor
(:mod:`.rules`; the stem and head finders are in :mod:`.finders`):

1. name patterns given by the user (``muon=`` / ``fallback=``) win;
2. tensors with fewer than 2 dims (biases, norm scales, layer-scale gammas, scalars) -> fallback;
3. position / class / register / distillation tokens (by name) -> fallback;
4. ``nn.Embedding`` / ``nn.EmbeddingBag`` weights (also when tied to an output layer) -> fallback;
5. the stem (``patch_embed.proj`` or else the first conv in module order) -> fallback;
6. the classifier head -> fallback;
7. ``nn.Linear`` / conv / ``nn.MultiheadAttention`` weight matrices -> Muon;
8. any other tensor with 2+ dims (relative position tables, custom parameters) -> fallback, with a
   reason telling how to force it onto Muon.

Depthwise conv kernels ``(C, 1, k, k)`` (ConvNeXt ``conv_dw``) stay on Muon by rule 7: the
optimizer flattens them to ``(C, k*k)`` and orthogonalises that. timm's own Muon sends them to
AdamW instead; to do the same here pass ``fallback=["*conv_dw.weight"]``.

Once the tensors sit in param groups, :func:`uses_muon` answers "Muon or fallback?" for a group
dict and a tensor the same way the optimizer does. :func:`layer_decay_scales` gives timm-style
layer-wise lr multipliers. Nothing here imports Lightning.
"""

from .groups import uses_muon
from .layer_decay import layer_decay_scales
from .result import REPORT_STYLES, ParamAssignment, Partition
from .rules import TOKEN_NAME_PARTS, partition_parameters

__all__ = [
    "REPORT_STYLES",
    "TOKEN_NAME_PARTS",
    "ParamAssignment",
    "Partition",
    "layer_decay_scales",
    "partition_parameters",
    "uses_muon",
]
