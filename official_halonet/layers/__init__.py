"""Layers: the local self-attention primitives (halo and SASA attention) and their helpers."""
from official_halonet.layers.channel_attention import EfficientChannelAttention
from official_halonet.layers.halo_attention import HaloAttention
from official_halonet.layers.padding import Pad2D
from official_halonet.layers.sasa_attention import SASAAttention
from official_halonet.layers.spatially_aware_attention import SpatiallyAwareAttention

__all__ = ["EfficientChannelAttention", "HaloAttention", "Pad2D", "SASAAttention",
           "SpatiallyAwareAttention"]
