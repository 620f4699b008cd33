"""Attention kernels for NVIDIA GPUs: jax's Pallas Triton flash attention (also the
interpret-mode path on CPU) and cuDNN's fused attention through `jax.nn`.

Legend: B batch, L length, H query heads, V kv heads, G = H / V, K head dim, Lp padded length.

`flash_attention` wraps `jax.experimental.pallas.ops.gpu.attention.mha` (the same file in jax
0.11.2 and 0.12), the one GPU attention kernel jax ships that takes segment ids: each program
compares the ids of its query tile with those of each key tile, so no [L, L] mask exists
anywhere, and the causal loop stops at the diagonal tile. Forward, the backward's
preprocessing and the fused dQ/dK/dV backward are three Triton kernels. What the op lacks and
what this wrapper does about it:
- No GQA: K and V are repeated to the H query heads (`jnp.repeat`; its transpose sums the
  copies' gradients back). That costs G times the K/V reads of a GQA kernel.
- Lengths must be multiples of its tiles (128 forward, 32 backward; powers of two of at least
  16): the row is padded at its end. Padded positions come after every real one, so the causal
  mask already hides them from real queries; their own outputs are cut off, so their
  cotangents are zero and they add nothing to dK and dV. Padded segment ids are -1.
- The module is deprecated since jax 0.11 (it points to tokamax) and warns when imported: it
  is imported on first use, with that warning silenced.
- fp32 inputs: its dots run at the precision jax_default_matmul_precision gives, as XLA's own
  fp32 dots do (TF32 on Hopper by default, IEEE fp32 at "highest").

`cudnn_attention` is `jax.nn.dot_product_attention(implementation="cudnn")`. That public api
takes no segment ids, so the document mask is materialised as [B, 1, L, L] booleans (cuDNN
reads it as an additive bias); bf16 only here (cuDNN's flash attention has no fp32). jax
reaches cuDNN only through the CUDA plugin: where it is missing, tracing raises
`RuntimeError: cuDNN is not detected.`, so this path cannot even be lowered on a CPU machine.
"""

from __future__ import annotations

import warnings

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl
from jaxtyping import Array, Float, Int

BLOCK = 128  # forward tiles (the op's defaults; the benchmark is where to tune them)
BLOCK_BWD = 32  # backward tiles
MIN_DOT = 16  # Triton's smallest dot dimension
MIN_HEAD_DIM = MIN_DOT  # K is padded to a power of two >= K inside the op, not to 16


def _triton_attention_module():
    """jax's Pallas Triton attention module, imported without its deprecation warning."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            from jax.experimental.pallas.ops.gpu import attention
    except ImportError as e:  # a later jax may drop it
        raise NotImplementedError(
            f"jax {jax.__version__} has no Pallas Triton attention "
            "(jax.experimental.pallas.ops.gpu.attention); use attention impl 'xla' or 'cudnn'"
        ) from e
    return attention


def tiles(length: int) -> tuple[int, int, int]:
    """(forward tile, backward tile, padded length) for a row of `length` tokens."""
    block = min(BLOCK, max(MIN_DOT, pl.next_power_of_2(length)))
    return block, min(BLOCK_BWD, block), -(-length // block) * block


def pad_length(x: Array, length: int, value=0) -> Array:
    """`x` padded along axis 1 to `length`."""
    extra = length - x.shape[1]
    if extra == 0:
        return x
    widths = [(0, 0)] * x.ndim
    widths[1] = (0, extra)
    return jnp.pad(x, widths, constant_values=value)


def flash_attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L V K"],
    v: Float[Array, "B L V K"],
    segment_ids: Int[Array, "B L"] | None,
    *,
    interpret: bool = False,
) -> Float[Array, "B L H K"]:
    """Causal attention within segments with the Pallas Triton kernel (module docstring);
    differentiable (the op's own custom_vjp). `interpret=True` runs it on any backend."""
    mha = _triton_attention_module()
    _, L, H, K = q.shape
    G = H // k.shape[2]
    block, block_bwd, Lp = tiles(L)
    if G > 1:
        k, v = jnp.repeat(k, G, axis=2), jnp.repeat(v, G, axis=2)
    q, k, v = (pad_length(x, Lp) for x in (q, k, v))
    seg = None if segment_ids is None else pad_length(segment_ids.astype(jnp.int32), Lp, -1)
    sizes = mha.BlockSizes(
        block_q=block,
        block_k=block,
        block_q_dkv=block_bwd,
        block_kv_dkv=block_bwd,
        block_q_dq=block_bwd,
        block_kv_dq=block_bwd,
    )
    out = mha.mha(
        q, k, v, seg, sm_scale=float(K) ** -0.5, causal=True, block_sizes=sizes, interpret=interpret
    )
    return out[:, :L]


def cudnn_attention(
    q: Float[Array, "B L H K"],
    k: Float[Array, "B L V K"],
    v: Float[Array, "B L V K"],
    segment_ids: Int[Array, "B L"] | None,
) -> Float[Array, "B L H K"]:
    """Causal attention within segments with cuDNN's fused kernel (module docstring)."""
    mask = None
    if segment_ids is not None:
        mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=True, implementation="cudnn")
