"""Layers: the local self-attention primitives (halo and SASA attention) and their helpers.

halo_attention.py (the equation), sasa_attention.py, spatially_aware_attention.py (SASA's attention
stem), channel_attention.py (ECA), block_attention.py (the softmax over each block's window),
blocking.py (block / halo-window layout), padding.py (PyTorch-style padding), relative_position.py
(the position tables and their row arithmetic), table_resize.py (a trained table resized for
another window, for restore), recompute.py (gradient checkpointing), fused_attention.py (the
attention core through the Pallas kernel: its layout, padding and call, via XlaCallModule).
"""
from official_halonet.layers.channel_attention import EfficientChannelAttention
from official_halonet.layers.halo_attention import HaloAttention
from official_halonet.layers.padding import Pad2D
from official_halonet.layers.sasa_attention import SASAAttention
from official_halonet.layers.spatially_aware_attention import SpatiallyAwareAttention

__all__ = ["EfficientChannelAttention", "HaloAttention", "Pad2D", "SASAAttention",
           "SpatiallyAwareAttention"]
